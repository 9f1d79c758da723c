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
from typing import Any, Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .cid import CID
from .nodeid import short_node_id
from .placement import IPlacement

log = Logger()

BLOCK_DEADLINE = 30.0  # seconds a holder has to acknowledge one block


class Peers(TypingProtocol):
    """What replication needs of the peer layer (``PeerManager``)."""

    node_id: bytes

    def members(self) -> list[bytes]: ...

    def put_block(self, node_id: bytes, cid: CID, block: bytes | memoryview, timeout: float = ...) -> Deferred[None]: ...


@attrs.define
class _Key:
    """One placement key of this upload: its rank order and the holders taken from it so far."""

    rank: list[bytes]
    holders: list[bytes]
    next: int  # index in ``rank`` of the first node not yet considered


class Replicator:
    def __init__(
        self, peers: Peers, placement: IPlacement, replicas: int, deadline: float = BLOCK_DEADLINE,
        members: Callable[[], Sequence[bytes]] | None = None,
    ) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.peers, self.placement, self.replicas, self.deadline = peers, placement, replicas, deadline
        self._members = members or peers.members
        self._keys: dict[bytes, _Key] = {}
        self._dropped: dict[bytes, str] = {}  # holders that failed during this upload -> why
        self.reached: int | None = None  # the fewest acknowledgements any block got (None: no block yet)
        self.acks = 0  # acknowledgements received (blocks x holders)

    @property
    def dropped(self) -> dict[bytes, str]:
        return dict(self._dropped)

    def _key(self, key: bytes) -> _Key:
        k = self._keys.get(key)
        if k is None:
            me = self.peers.node_id
            rank = [m for m in self.placement.rank(key, list(self._members())) if m != me]
            k = self._keys[key] = _Key(rank, [], 0)
            self._fill(k)
        return k

    def _fill(self, k: _Key) -> None:
        """Top the key's holders up to ``replicas`` from the rank, skipping holders dropped meanwhile."""
        k.holders = [h for h in k.holders if h not in self._dropped]
        while len(k.holders) < self.replicas and k.next < len(k.rank):
            candidate = k.rank[k.next]
            k.next += 1
            if candidate not in self._dropped:
                k.holders.append(candidate)

    def place(self, cid: CID, block: bytes | memoryview, key: bytes) -> Deferred[int]:
        """Send ``block`` to the holders of ``key``; fires with how many acknowledged it (at most
        ``replicas``, fewer when the membership runs out of candidates). Never fails."""
        k = self._key(key)
        self._fill(k)
        done: Deferred[int] = Deferred()
        state = {"acked": 0, "open": 0}
        tried: set[bytes] = set()

        def settle() -> None:
            if state["open"] == 0 and not done.called:
                acked = state["acked"]
                self.reached = acked if self.reached is None else min(self.reached, acked)
                done.callback(acked)

        def send(holder: bytes) -> None:
            tried.add(holder)
            state["open"] += 1
            try:
                d = self.peers.put_block(holder, cid, block, timeout=self.deadline)
            except Exception:
                d = Deferred()
                d.errback(Failure())
            d.addCallbacks(acked, failed, errbackArgs=(holder,))

        def acked(_: Any) -> None:
            state["open"] -= 1
            state["acked"] += 1
            self.acks += 1
            settle()

        def failed(f: Failure, holder: bytes) -> None:
            state["open"] -= 1
            why = f.getErrorMessage()
            if holder not in self._dropped:
                self._dropped[holder] = why
                log.info("holder {h} dropped from this upload: {why}", h=short_node_id(holder), why=why)
            self._fill(k)
            for h in k.holders:  # the replacement(s) of this holder, for this block too
                if h not in tried:
                    send(h)
            settle()

        for h in list(k.holders):
            send(h)
        settle()
        return done
