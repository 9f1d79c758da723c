"""Replication on upload: each block goes to the holders of its placement key, chosen by rendezvous.

A ``Replicator`` serves one upload. The first time it meets a placement key (a stripe of the file, or a
manifest block) it ranks the current membership for that key (this node excluded) and takes the first
``replicas`` as the key's holders; every block of that key goes to those holders, all at once, each on the
holder's one multiplexed connection (its send window paces us, so a slow holder slows the upload and
memory stays bounded by the upload's window). A holder that fails, refuses (over quota, bad request,
shutting down) or misses the per-block deadline is dropped for the rest of the upload and replaced, for
that block and the ones after it, by the next node in rendezvous order; blocks it already acknowledged stay
with it (readers walk the rank further and fall back to HAS, see ``retrieval.py``). See docs/replication.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock
from cas.base.nodeid import short_node_id
from cas.network.placement import IPlacement
from cas.store.leases import LEASE_TIME

log = Logger()

BLOCK_DEADLINE = 30.0  # seconds a holder has to acknowledge one block


class Peers(TypingProtocol):
    """What replication needs of the peer layer (``PeerManager``)."""

    node_id: bytes

    def members(self) -> list[bytes]: ...

    def put_block(
        self, node_id: bytes, cid: CID, block: bytes | memoryview, timeout: float = ..., key: bytes | None = None,
        lease: int | None = None, origin: bytes | None = None, n: int | None = None,
    ) -> Deferred[bool]: ...

    def version_of(self, node_id: bytes) -> int | None: ...


@attrs.define
class _Key:
    """One placement key of this upload: its rank order and the holders taken from it so far."""

    key: bytes
    rank: list[bytes]
    holders: list[bytes]
    next: int  # index in ``rank`` of the first node not yet considered


class Replicator:
    def __init__(
        self, peers: Peers, placement: IPlacement, replicas: int, deadline: float = BLOCK_DEADLINE,
        members: Callable[[], Sequence[bytes]] | None = None, lease: int = LEASE_TIME,
        plan: Callable[[bytes, list[bytes]], None] | None = None,
    ) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.peers, self.placement, self.replicas, self.deadline = peers, placement, replicas, deadline
        self.lease = lease  # seconds of the lease each block is placed under
        self.plan = plan  # told (key, new holders) before any block under the key goes to them
        self._members = members or peers.members
        self._keys: dict[bytes, _Key] = {}
        self._dropped: dict[bytes, str] = {}  # holders that failed during this upload -> why

    def _key(self, key: bytes) -> _Key:
        k = self._keys.get(key)
        if k is None:
            me = self.peers.node_id
            rank = [m for m in self.placement.rank(key, list(self._members())) if m != me]
            k = self._keys[key] = _Key(key, rank, [], 0)
            self._fill(k)
        return k

    def _fill(self, k: _Key) -> None:
        """Top the key's holders up to ``replicas`` from the rank, skipping holders dropped meanwhile."""
        k.holders = [h for h in k.holders if h not in self._dropped]
        new = []
        while len(k.holders) < self.replicas and k.next < len(k.rank):
            candidate = k.rank[k.next]
            k.next += 1
            if candidate not in self._dropped:
                k.holders.append(candidate)
                new.append(candidate)
        if new and self.plan is not None:
            self.plan(k.key, new)

    def place(self, cid: CID, block: bytes | memoryview, key: bytes) -> Deferred[list[bytes]]:
        """Send ``block`` to the holders of ``key``; fires with the holders that acknowledged it (at most
        ``replicas``, fewer when the membership runs out of candidates). Never fails."""
        k = self._key(key)
        self._fill(k)
        return _Placing(self, k, cid, block).start()

    def _dropped_holder(self, holder: bytes, why: str) -> None:
        if holder not in self._dropped:
            self._dropped[holder] = why
            log.info("holder {h} dropped from this upload: {why}", h=short_node_id(holder), why=why)


class NotLeased(Exception):
    """A holder acknowledged a block without taking our lease on it (protocol version 1)."""


class _Placing:
    """One block on its way to its holders. Methods, not nested closures: closures that call each other form
    reference cycles, and a cycle would keep the 1 MiB block alive until the cyclic collector happens to run."""

    def __init__(self, r: Replicator, k: _Key, cid: CID, block: bytes | memoryview) -> None:
        self.r, self.k, self.cid, self.block = r, k, cid, block
        self.open = 0
        self.acked: list[bytes] = []
        self.tried: set[bytes] = set()
        self.done: Deferred[list[bytes]] = Deferred()

    def start(self) -> Deferred[list[bytes]]:
        for h in list(self.k.holders):
            self._send(h)
        self._settle()
        return self.done

    def _send(self, holder: bytes) -> None:
        self.tried.add(holder)
        self.open += 1
        try:
            d = self.r.peers.put_block(holder, self.cid, self.block, timeout=self.r.deadline, key=self.k.key,
                                       lease=self.r.lease, origin=self.r.peers.node_id, n=self.r.replicas)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._acked, self._failed, callbackArgs=(holder,), errbackArgs=(holder,))

    def _acked(self, leased: Any, holder: bytes) -> None:
        if leased is False:  # a node of protocol version 1: its copy cannot be leased, renewed or released
            self._failed(Failure(NotLeased("speaks protocol version 1: its copies cannot be leased")), holder)
            return
        self.open -= 1
        self.acked.append(holder)
        self._settle()

    def _failed(self, f: Failure, holder: bytes) -> None:
        self.open -= 1
        self.r._dropped_holder(holder, f.getErrorMessage())
        self.r._fill(self.k)
        for h in self.k.holders:  # the replacement(s) of this holder, for this block too
            if h not in self.tried:
                self._send(h)
        self._settle()

    def _settle(self) -> None:
        if self.open == 0 and not self.done.called:
            self.block = b""  # nothing else needs it
            self.done.callback(self.acked)


class TopUp:
    """Places the blocks that an upload could not give ``replicas`` holders (peers down, too few nodes), as
    members return or join: a pass when a node joins the membership, at start, and every ``interval`` seconds
    while some remain. Each block is read from the local store (verified) and offered to the members in
    rank order that do not hold it yet; a block no longer stored here (its file was forgotten) is dropped."""

    def __init__(
        self, node: Any, peers: Any, placement: IPlacement, replicas: int, clock: Any,
        interval: float = 60.0, batch: int = 64, deadline: float = BLOCK_DEADLINE,
    ) -> None:
        self.node, self.peers, self.placement, self.replicas = node, peers, placement, replicas
        self.clock, self.interval, self.batch, self.deadline = clock, interval, batch, deadline
        self._running: Deferred[None] | None = None
        self._again = False
        self._timer: Any = None
        self._unsubscribe: Callable[[], None] | None = None
        self.placed = 0  # copies placed by top-up passes (for status and tests)
        self._stopped = False

    def start(self) -> None:
        self._unsubscribe = self.peers.subscribe(lambda change: self.kick() if change.member else None)
        self._timer = self.clock.callLater(0, self._tick)

    def stop(self) -> None:
        self._stopped = True  # a pass in progress ends at its next step, writing nothing more
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        self.kick()

    def kick(self) -> Deferred[None]:
        """Run a pass now (or right after the one running); fires when it is over."""
        if self._running is not None:
            self._again = True
            return self._running
        d = self._running = ensureDeferred(self._passes())

        def over(result: Any) -> Any:
            self._running = None
            if isinstance(result, Failure):
                log.failure("topping up replicas failed", result)
            if self._unsubscribe is not None and self._timer is None and self.node.index.count_underplaced():
                self._timer = self.clock.callLater(self.interval, self._tick)
            return None

        d.addBoth(over)
        return d

    async def _passes(self) -> None:
        while True:
            self._again = False
            await self._pass()
            if not self._again:
                return

    async def _pass(self) -> None:
        after = ""
        while True:
            rows = self.node.index.underplaced(self.batch, after)
            if not rows:
                return
            after = str(rows[-1].cid)
            members = list(self.peers.members())
            if not members:
                return
            done: list[CID] = []
            progress = []
            placed: list[tuple[bytes, list[bytes]]] = []  # holders that took a block under a key in this batch
            for row in rows:
                if self._stopped:
                    return
                if not self.node.store.has(row.cid):
                    done.append(row.cid)  # its file was forgotten and the block collected: nothing to place
                    continue
                candidates = [m for m in self.placement.rank(row.key, members) if m not in row.holders]
                if not candidates:
                    continue
                try:
                    data = await self.node.fetch(row.cid)
                except (BlockNotFound, CorruptBlock):
                    done.append(row.cid)  # gone meanwhile, or quarantined: nothing to place
                    continue
                holders = list(row.holders)
                need = self.replicas - len(holders)
                for m in candidates[: need + 4]:
                    if need <= 0 or self._stopped:
                        break
                    if self.peers.version_of(m) == 1:
                        continue  # its copy could not be leased
                    try:
                        leased = await self.peers.put_block(m, row.cid, data, timeout=self.deadline, key=row.key,
                                                            lease=self.node.lease_time, origin=self.node.identity.node_id,
                                                            n=max(1, self.replicas))
                    except Exception as e:
                        log.debug("top-up of {cid} on {m} failed: {e}", cid=str(row.cid), m=short_node_id(m), e=e)
                        continue
                    if leased is False:
                        continue
                    holders.append(m)
                    need -= 1
                    self.placed += 1
                if len(holders) > len(row.holders):
                    placed.append((row.key, holders[len(row.holders):]))
                if need <= 0:
                    done.append(row.cid)
                elif len(holders) > len(row.holders):
                    progress.append(attrs.evolve(row, holders=tuple(holders)))
            if self._stopped:
                return  # the node is stopping (its index may be closed): the next start goes on from the rows
            self.node.index.update_underplaced(done, progress)
            for key, holders in placed:
                self.node.index.add_placed(key, holders, self.node.lease_time, int(self.clock.seconds()))
