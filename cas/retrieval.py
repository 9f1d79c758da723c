"""Retrieval from the network: a block this node lacks is fetched from the holders of its placement key.

A reader ranks the membership for the block's placement key (as the uploader did) and asks the holders in
turn: the first ``replicas`` in rank order, rotated by ``spread`` so that consecutive blocks go to different
holders (the load spreads and several holders send at once) and then ordered by ``expected_wait`` (recent time
per block times requests waiting: the fastest, least busy holder first), then the rest of the rank up to ``extra`` more
(an uploader replaced holders that failed by the next in rank). Every block is checked against its id
(``PeerManager.get_block``); a holder that answers not found, sends a corrupt block, times out or cannot be
reached is skipped. When none of those has it (membership views differ, or the block moved), the other
members are asked HAS and those that have it are tried. See docs/replication.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger

from .cid import CID
from .errors import BlockNotFound, CorruptBlock
from .nodeid import short_node_id
from .placement import IPlacement

log = Logger()

FETCH_DEADLINE = 30.0  # seconds one holder has to send one block
EXTRA = 4  # nodes past the first ``replicas`` of the rank asked before falling back to HAS
HAS_FANOUT = 64  # members asked HAS at most, in the fallback


class Peers(TypingProtocol):
    node_id: bytes

    def members(self) -> list[bytes]: ...

    def get_block(self, node_id: bytes, cid: CID, timeout: float = ..., verify: bool = ...) -> Deferred[bytes | memoryview]: ...

    def has(self, node_id: bytes, cids: Sequence[CID]) -> Deferred[list[bool]]: ...

    # optional: def expected_wait(self, node_id: bytes) -> float (seconds; lower is asked first)


class Retriever:
    def __init__(
        self, peers: Peers, placement: IPlacement, replicas: int, deadline: float = FETCH_DEADLINE,
        extra: int = EXTRA, members: Callable[[], Sequence[bytes]] | None = None,
        check: Callable[[CID, bytes | memoryview], Deferred[bool]] | None = None,
    ) -> None:
        self.peers, self.placement, self.replicas = peers, placement, max(1, replicas)
        self.deadline, self.extra = deadline, extra
        self._members = members or peers.members
        self._check = check  # checks a block against its id elsewhere (a worker thread); None: get_block does

    def candidates(self, key: bytes, spread: int = 0) -> list[bytes]:
        """The nodes to ask first, in order: the expected holders rotated by ``spread``, then the next ones."""
        me = self.peers.node_id
        rank = [m for m in self.placement.rank(key, list(self._members())) if m != me]
        top = rank[: self.replicas]
        if top:
            r = spread % len(top)
            top = top[r:] + top[:r]
            wait = getattr(self.peers, "expected_wait", None)
            if wait is not None:  # the fastest, least busy holder first; ties keep the rotation
                top.sort(key=wait)
        return top + rank[self.replicas: self.replicas + self.extra]

    def fetch(self, cid: CID, key: bytes, spread: int = 0) -> Deferred[bytes | memoryview]:
        """The block, verified, from a holder; fails with BlockNotFound saying whom it asked."""
        return ensureDeferred(self._fetch(cid, key, spread))

    async def _fetch(self, cid: CID, key: bytes, spread: int) -> bytes | memoryview:
        asked: list[str] = []
        tried: set[bytes] = set()
        first = self.candidates(key, spread)
        for node in first:
            data = await self._try(node, cid, asked)
            tried.add(node)
            if data is not None:
                return data
        others = [m for m in self._members() if m not in tried and m != self.peers.node_id][:HAS_FANOUT]
        if others:
            for node in await self._who_has(others, cid):
                data = await self._try(node, cid, asked)
                if data is not None:
                    return data
        where = "; ".join(asked) if asked else "no other node is known"
        raise BlockNotFound(f"block {cid} is not on this node, and no peer could send it ({where})")

    async def _try(self, node: bytes, cid: CID, asked: list[str]) -> bytes | memoryview | None:
        try:
            if self._check is None:
                return await self.peers.get_block(node, cid, timeout=self.deadline)
            data = await self.peers.get_block(node, cid, timeout=self.deadline, verify=False)
            if not await self._check(cid, data):
                raise CorruptBlock(f"node {short_node_id(node)} sent bytes that do not match block {cid}")
            return data
        except CancelledError:
            raise  # the reader went away: no next holder
        except Exception as e:  # not found, corrupt, timeout, unreachable: the next one
            asked.append(f"{short_node_id(node)}: {e}")
            return None

    async def _who_has(self, nodes: list[bytes], cid: CID) -> list[bytes]:
        answers: list[Deferred] = []
        for n in nodes:
            d = self.peers.has(n, [cid])
            d.addErrback(lambda _f: [False])
            answers.append(d)
        out = []
        for n, d in zip(nodes, answers):
            bits = await d
            if bits and bits[0]:
                out.append(n)
        return out
