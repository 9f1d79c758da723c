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
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.cid import CID
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
        track = getattr(peers, "track", None)
        if track is not None:  # a peer that recently failed an audit is treated as dropped from the start
            for m in self._members():
                if track.failing(m):
                    self._dropped[m] = "failed an audit recently"

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
