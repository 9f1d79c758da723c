"""Gossip of signed peer records: how nodes learn about each other.

Every round (``interval`` seconds, jittered by +-25%) the node sends a PEERS request to ``fanout`` random
members, carrying its own record and a random sample of the others' (at most ``max_records`` in all); the
answer carries the peer's sample (push-pull). A record is accepted only if its signature verifies under the
key it names, it has not expired and does not live too long, and its sequence number is higher than the one
held (stale records are dropped). One source can introduce at most ``new_per_source`` unknown nodes per
``refill`` seconds (a token bucket), so a flood of fresh identities from one peer fills neither the table nor
the gossip of others; the table itself has a fixed capacity.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cas.peer.peertable import DEAD, NEW, PeerTable
from cas.peer.records import InvalidRecord, PeerRecord, decode_record

log = Logger()

MAX_RECORDS = 64  # records in one PEERS message, either way
REVIVE_SKEW = 60.0  # seconds of clock difference allowed between a record's signer and us (see apply)


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` per ``refill`` seconds."""

    def __init__(self, capacity: int, refill: float, now: float) -> None:
        self.capacity, self.refill = capacity, refill
        self.tokens = float(capacity)
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.capacity / self.refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Gossip:
    def __init__(
        self,
        table: PeerTable,
        clock: IReactorTime,
        wall: Callable[[], float],
        send: Callable[[bytes, list[bytes]], Deferred[Any]],
        changed: Callable[[], None],
        rng: random.Random | None = None,
        interval: float = 5.0,
        fanout: int = 3,
        max_records: int = MAX_RECORDS,
        new_per_source: int = 16,
        refill: float = 60.0,
    ) -> None:
        self.table = table
        self.clock = clock
        self.wall = wall  # unix time: record expiry is absolute
        self.send = send  # (node id, records) -> Deferred[the peer's records]; the manager connects
        self.changed = changed
        self.rng = rng or random.Random()
        self.interval, self.fanout, self.max_records = interval, fanout, max_records
        self.new_per_source, self.refill = new_per_source, refill
        self.own_record: PeerRecord | None = None
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._timer: IDelayedCall | None = None
        self._running = False
        self.rounds = 0
        self.rejected = 0

    # -- rounds --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._schedule()

    def stop(self) -> None:
        self._running = False  # a round still in flight must not schedule another
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        self._timer = self.clock.callLater(self.interval * self.rng.uniform(0.75, 1.25), self._round)

    def _round(self) -> Deferred[Any]:
        self._timer = None
        self.rounds += 1
        now = self.wall()
        candidates = [e.node_id for e in self.table if e.state != DEAD and e.addresses and (e.record is None or e.record.expires > now)]
        targets = self.rng.sample(candidates, min(self.fanout, len(candidates)))
        ds = [self.exchange(t) for t in targets]
        d = DeferredList(ds, consumeErrors=True)
        d.addBoth(lambda _r: self._schedule() if self._running and self._timer is None else None)
        return d

    def exchange(self, node_id: bytes) -> Deferred[int]:
        """One push-pull exchange with ``node_id``: fires with how many of its records we accepted."""
        d = self.send(node_id, self.sample(exclude=node_id))
        d.addCallback(lambda records: self.receive(node_id, records))
        d.addErrback(lambda f: log.debug("gossip with {peer} failed: {e}", peer=node_id.hex()[:12], e=f.getErrorMessage()) or 0)
        return d

    def sample(self, exclude: bytes | None = None) -> list[bytes]:
        """Our own record and a random sample of live members' records, at most ``max_records`` in all."""
        now = self.wall()
        out = [self.own_record.encode()] if self.own_record is not None else []
        others = [e.record for e in self.table if e.member(now) and e.node_id != exclude and e.record is not None]
        k = min(len(others), self.max_records - len(out))
        out.extend(r.encode() for r in self.rng.sample(others, k))
        return out

    # -- receiving -----------------------------------------------------------------------------------------
    def receive(self, source: bytes, records: Any) -> int:
        """Apply the records a peer sent (in a PEERS request or answer); returns how many were news."""
        if not isinstance(records, list):
            raise ValueError("records must be a list")
        if len(records) > self.max_records:
            raise ValueError(f"{len(records)} records in one message (at most {self.max_records})")
        now = self.wall()
        accepted = 0
        for data in records:
            if not isinstance(data, bytes):
                self.rejected += 1
                continue
            try:
                record = decode_record(data, now)
            except InvalidRecord as e:
                self.rejected += 1
                log.debug("dropped a peer record from {peer}: {e}", peer=source.hex()[:12], e=str(e))
                continue
            if self.apply(record, source):
                accepted += 1
        if accepted:
            self.changed()
        return accepted

    def apply(self, record: PeerRecord, source: bytes | None) -> bool:
        """Take ``record`` if it is news: a node we did not know (within the source's allowance), or a higher
        sequence number than the record we hold. ``source`` None means the node itself told us (HELLO)."""
        node_id = record.node_id
        if node_id == self.table.own_id:
            return False
        entry = self.table.get(node_id)
        if entry is None:
            if source is not None and source != node_id and not self._bucket(source).take(self.clock.seconds()):
                self.rejected += 1
                return False
            entry = self.table.add(node_id)
            if entry is None:  # the table is full of live peers
                self.rejected += 1
                return False
        elif entry.record is not None and record.seq <= entry.record.seq:
            return False  # stale or the same
        if entry.state == DEAD and (entry.dead_since is None or record.seq / 1000 > entry.dead_since - REVIVE_SKEW):
            # It signed a record after we found it dead: it may be back, probe it again. A record signed
            # before (still travelling through the network) does not revive it. Also when the record we
            # held has expired and been dropped meanwhile.
            entry.state = NEW
            entry.dead_since = None
            entry.failures = 0
            entry.next_attempt = 0.0
        entry.record = record
        entry.addresses = record.dialable
        self.table.dirty = True
        return True

    def _bucket(self, source: bytes) -> TokenBucket:
        """The allowance of ``source`` (a node id, or a remote address for HELLOs). At most ``4 x capacity``
        are remembered; the least recently used is forgotten first, so rotating sources gains nothing
        over waiting."""
        b = self._buckets.get(source)
        if b is None:
            if len(self._buckets) >= 4 * self.table.capacity:
                self._buckets.popitem(last=False)
            b = self._buckets[source] = TokenBucket(self.new_per_source, self.refill, self.clock.seconds())
        else:
            self._buckets.move_to_end(source)
        return b

    def allow_new(self, source: bytes) -> bool:
        """Take one token of ``source``'s allowance for introducing an unknown node."""
        return self._bucket(source).take(self.clock.seconds())

