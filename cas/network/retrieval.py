"""Retrieval from the network: a block this node lacks is fetched from the holders of its placement key.

A reader ranks the membership for the block's placement key (as the uploader did) and asks the holders in
turn: the first ``replicas`` in rank order, rotated by ``spread`` so that consecutive blocks go to different
holders (the load spreads and several holders send at once) and then ordered by ``BlockTimes`` (recent time
per block times requests waiting: the fastest, least busy holder first), then the rest of the rank up to ``extra`` more
(an uploader replaced holders that failed by the next in rank). Every block is checked against its id
(``PeerManager.get_block``); a holder that answers not found, sends a corrupt block, times out or cannot be
reached is skipped. When none of those has it (membership views differ, or the block moved), the other
members are asked HAS and those that have it are tried. See docs/replication.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock
from cas.base.nodeid import short_node_id
from cas.network.placement import IPlacement

log = Logger()

FETCH_DEADLINE = 30.0  # seconds one holder has to send one block
EXTRA = 4  # nodes past the first ``replicas`` of the rank asked before falling back to HAS
HAS_FANOUT = 64  # members asked HAS at most, in the fallback
RANKS_KEPT = 8  # placement keys whose ranking a Retriever keeps (a download reads a few stripes at a time)


MISMATCH = object()  # what a check returns for bytes that are not the block asked for


class ThenFailed(Exception):
    """What a fetch's ``then`` raised on a block that passed its check: not the holder's fault, so it is
    raised to the caller as is (``error``) instead of asking the next holder."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


Then = Callable[[bytes | memoryview], Any]  # runs on the verified block where the check ran (a worker thread)
Check = Callable[[CID, bytes | memoryview, "Then | None"], Deferred[Any]]  # the block, then(block), or MISMATCH


def checked_then(cid: CID, data: bytes | memoryview, then: Then | None) -> Any:
    """A ``Check``'s job, on a worker thread: MISMATCH if ``data`` is not block ``cid``, else the block or what
    ``then`` made of it (ThenFailed if ``then`` raised)."""
    if not cid.verify(data):
        return MISMATCH
    if then is None:
        return data
    try:
        return then(data)
    except Exception as e:
        raise ThenFailed(e) from e


class Peers(TypingProtocol):
    node_id: bytes

    def members(self) -> list[bytes]: ...

    def get_block(self, node_id: bytes, cid: CID, timeout: float = ..., verify: bool = ...) -> Deferred[bytes | memoryview]: ...

    def has(self, node_id: bytes, cids: Sequence[CID]) -> Deferred[list[bool]]: ...

    def in_flight(self, node_id: bytes) -> int: ...


class BlockTimes:
    """How long each peer recently took to send a block that passed its check: a moving average per peer
    (``weight`` for the newest), where a failure (timeout, not found, corrupt, unreachable) counts as the
    whole deadline. What a peer did fades toward the mean of all peers (half-life ``half_life`` s), so a peer
    that failed or was slow once is tried again later, and a peer never asked starts at the mean."""

    def __init__(self, clock: IReactorTime, weight: float = 0.25, half_life: float = 60.0, limit: int = 4096) -> None:
        if limit < 2:
            raise ValueError("limit must be at least 2")
        self._clock, self._weight, self._half_life, self._limit = clock, weight, half_life, limit
        self._avg: dict[bytes, tuple[float, float]] = {}  # node -> (average, when last updated)
        self._sum = 0.0  # of the averages, for the mean

    def now(self) -> float:
        return self._clock.seconds()

    def mean(self) -> float:
        return self._sum / len(self._avg) if self._avg else 0.0

    def expected(self, node: bytes) -> float:
        """Seconds a block from ``node`` is expected to take (the mean for a peer never asked)."""
        mean = self.mean()
        entry = self._avg.get(node)
        if entry is None:
            return mean
        value, when = entry
        fade = 0.5 ** (max(0.0, self._clock.seconds() - when) / self._half_life)
        return mean + (value - mean) * fade

    def note(self, node: bytes, seconds: float) -> None:
        if not math.isfinite(seconds):
            return
        seconds = max(0.0, seconds)  # the reactor's clock is the wall clock: it can step back
        old = self.expected(node) if node in self._avg else None
        new = seconds if old is None else old + self._weight * (seconds - old)
        if node in self._avg:
            self._sum -= self._avg[node][0]
        elif len(self._avg) >= self._limit:  # forget the half not heard of for longest
            for n, (v, _t) in sorted(self._avg.items(), key=lambda kv: kv[1][1])[: self._limit // 2]:
                self._sum -= v
                del self._avg[n]
        self._avg[node] = (new, self._clock.seconds())
        self._sum += new


class Retriever:
    def __init__(
        self, peers: Peers, placement: IPlacement, replicas: int, deadline: float = FETCH_DEADLINE,
        extra: int = EXTRA, members: Callable[[], Sequence[bytes]] | None = None,
        check: Check | None = None,
        times: BlockTimes | None = None,
    ) -> None:
        self.peers, self.placement, self.replicas = peers, placement, max(1, replicas)
        self.deadline, self.extra = deadline, extra
        self._members = members or peers.members
        # Checks a block against its id elsewhere (a worker thread) and applies a fetch's ``then`` there in the
        # same job; None: get_block checks, and ``then`` runs here.
        self._check = check
        self._times = times  # when given: holders are asked fastest and least busy first, and timed
        # key -> (the membership it was ranked over, the rank without this node), newest last: every block of a
        # stripe has the same key, and ranking hashes the key with every member.
        self._ranks: dict[bytes, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}

    def _rank(self, key: bytes) -> tuple[bytes, ...]:
        """The members other than this node in rank order for ``key``; recomputed when the membership changed."""
        members = tuple(self._members())
        kept = self._ranks.pop(key, None)
        if kept is not None and kept[0] == members:
            rank = kept[1]
        else:
            me = self.peers.node_id
            rank = tuple(m for m in self.placement.rank(key, members) if m != me)
            if len(self._ranks) >= RANKS_KEPT:
                del self._ranks[next(iter(self._ranks))]  # the one used longest ago
        self._ranks[key] = (members, rank)
        return rank

    def candidates(self, key: bytes, spread: int = 0) -> list[bytes]:
        """The nodes to ask first, in order: the expected holders rotated by ``spread``, then the next ones."""
        rank = self._rank(key)
        top = list(rank[: self.replicas])
        if top:
            r = spread % len(top)
            top = top[r:] + top[:r]
            if self._times is not None:  # the fastest, least busy holder first; ties keep the rotation
                times, in_flight = self._times, self.peers.in_flight
                top.sort(key=lambda n: times.expected(n) * (in_flight(n) + 1))
            track = getattr(self.peers, "track", None)
            if track is not None:  # a holder that recently failed an audit is asked last (stable: order kept)
                top.sort(key=track.failing)
        return top + list(rank[self.replicas: self.replicas + self.extra])

    def fetch(self, cid: CID, key: bytes, spread: int = 0, then: Then | None = None) -> Deferred[Any]:
        """The block, verified, from a holder, or what ``then`` made of it (in the check's job, so a block costs
        one trip to a worker thread, not two); fails with BlockNotFound saying whom it asked, or with what
        ``then`` raised."""
        return ensureDeferred(self._fetch(cid, key, spread, then))

    async def _fetch(self, cid: CID, key: bytes, spread: int, then: Then | None) -> Any:
        asked: list[str] = []
        tried: set[bytes] = set()
        first = self.candidates(key, spread)
        expected = set(first[: self.replicas])
        for node in first:
            data = await self._try(node, cid, asked, then, node in expected)
            tried.add(node)
            if data is not None:
                return data
        others = [m for m in self._members() if m not in tried and m != self.peers.node_id][:HAS_FANOUT]
        if others:
            for node in await self._who_has(others, cid):
                data = await self._try(node, cid, asked, then)
                if data is not None:
                    return data
        where = "; ".join(asked) if asked else "no other node is known"
        raise BlockNotFound(f"block {cid} is not on this node, and no peer could send it ({where})")

    async def _try(
        self, node: bytes, cid: CID, asked: list[str], then: Then | None = None, holder: bool = False,
    ) -> Any:
        """The block (or ``then`` of it) from ``node`` if it sends a good one. A failure is held against
        ``node`` only if it is one of the block's expected holders (``holder``): others, asked on the off
        chance, may just not have it."""
        times = self._times
        start = times.now() if times is not None else 0.0
        try:
            if self._check is None:
                data = await self.peers.get_block(node, cid, timeout=self.deadline)
                if then is not None:
                    try:
                        data = then(data)
                    except Exception as e:
                        raise ThenFailed(e) from e
            else:
                data = await self._check(cid, await self.peers.get_block(node, cid, timeout=self.deadline, verify=False), then)
                if data is MISMATCH:
                    report = getattr(self.peers, "report", None)
                    if report is not None:
                        report(node, cid)  # the holder checks its copy, quarantines and replaces it
                    raise CorruptBlock(f"node {short_node_id(node)} sent bytes that do not match block {cid}")
        except CancelledError:
            raise  # the reader went away: no next holder
        except ThenFailed as e:
            raise e.error from None  # the block was good: what was made of it failed, as it would from any holder
        except Exception as e:  # not found, corrupt, timeout, unreachable: the next one
            if times is not None and holder:
                times.note(node, self.deadline)  # as bad as the deadline: asked last until it fades
            asked.append(f"{short_node_id(node)}: {e}")
            return None
        if times is not None:
            times.note(node, times.now() - start)  # only a block that passed its check counts
        return data

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
