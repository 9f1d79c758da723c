"""Keeping this node's leases on its holders, and its files' blocks on enough of them.

Every ``placed`` row (cas/store/placements.py) says when its lease is due: half-way through it, less a random
eighth (``renew_after``), so that leases taken together do not stay due together.
Each round (every ``INTERVAL`` s, and at once when a file is recorded) the ``Renewer`` sends a ``LEASE`` per
node for the keys due, at most ``MAX_KEYS`` per message and as many messages as needed, asking for the row's
length: ``PROVISIONAL`` (1 h) for the blocks of an upload or upload session not recorded yet, ``--lease-time``
for a recorded file. A key's renewal goes to every node recorded as holding blocks under it and to the key's
current first N + ``RANK_SLACK`` in rank over the members and the peers dead for less than ``--repair-after``
(the rank repair uses; a node that got copies from repair is found there and recorded when it grants the lease
with every block).

The answer says per key whether the lease was granted and whether the holder still has every block it holds
under the key. A holder that does not answer is asked again after ``RETRY`` seconds and still counts until its
lease runs out; one that lost blocks or refuses stops counting at once. After each round, every key of a
recorded file left with fewer than ``--replicas`` holders under a live lease (answers of the round, and leases
that ran out since the last round) has its blocks given to the origin's part of repair (cas/network/repair.py), which places
them again from the local copy on the next nodes in rank. A holder lost for a whole lease length is forgotten.
A holder of protocol version 1 has no LEASE: it keeps blocks for its own ``--max-lease-time`` (logged).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.cid import CID
from cas.base.nodeid import short_node_id
from cas.network.placement import RANK_SLACK
from cas.peer import frames
from cas.peer.connection import NotSupported
from cas.store.index import Underplaced

log = Logger()

MAX_KEYS = 1024  # keys per LEASE
ANNOUNCE_BYTES = 48 << 10  # header bytes of a LEASE that announces block ids, about (a header is 64 KiB at most)
INTERVAL = 60.0  # seconds between rounds
RETRY = 300  # seconds before asking a holder that did not answer (or lacked blocks) again
ROUND = 64 * MAX_KEYS  # (holder, key) rows per round at most
TIMEOUT = 30.0


class Renewer:
    def __init__(self, node: Any, peers: Any, clock: Any, interval: float = INTERVAL) -> None:
        self.node, self.index, self.peers, self.clock, self.interval = node, node.index, peers, clock, interval
        self._timer: Any = None
        self._running: Deferred[None] | None = None
        self._again = False
        self._checked = 0  # leases that ran out after this were checked (all of them at the first round)
        self.renewed = 0  # leases granted (for status and tests)
        self.short = 0  # keys found short of holders and given to repair

    def start(self) -> None:
        self._timer = self.clock.callLater(0, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._tick)
        self.kick()

    def kick(self) -> Deferred[None]:
        """A round now (or right after the one running)."""
        if self._running is not None:
            self._again = True
            return self._running
        d = self._running = ensureDeferred(self._rounds())

        def over(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure):
                log.failure("renewing leases failed", result)

        d.addBoth(over)
        return d

    async def _rounds(self) -> None:
        while True:
            self._again = False
            await self._round()
            if not self._again:
                return

    async def _round(self) -> None:
        now = int(self.clock.seconds())
        recorded: dict[bytes, tuple[int, set[bytes]]] = {}
        for holder, key, wanted in self.index.placements.due(now, ROUND):
            recorded.setdefault(key, (wanted, set()))[1].add(holder)
        members: list[bytes] = []
        if recorded:  # the rank repair uses: members and the peers dead for less than --repair-after
            members = [*self.peers.members(), *self.peers.recently_dead(self.node.repair_after)]
        asks: dict[tuple[bytes, int], list[bytes]] = defaultdict(list)
        extra: set[tuple[bytes, bytes]] = set()  # (node, key): asked because of its rank, not recorded
        for key, (wanted, holders) in recorded.items():
            for h in holders:
                asks[(h, wanted)].append(key)
            for m in self.node.placement.rank(key, members)[: self.node.replicas + RANK_SLACK]:
                if m not in holders:
                    asks[(m, wanted)].append(key)
                    extra.add((m, key))
        lost: set[bytes] = set()  # keys some recorded holder answered for without every block
        ds = [ensureDeferred(self._holder(h, wanted, keys, now, extra, lost)) for (h, wanted), keys in asks.items()]
        await DeferredList(ds, consumeErrors=True)
        since, self._checked = self._checked, now
        if self.node.replicas > 0:
            short = self.index.short_keys(lost, since, now, self.node.replicas)
            if short:
                await self._place_again(short)

    async def take(self, keys: list[bytes], wanted: int, announced: dict[bytes, list[CID]] | None = None) -> None:
        """Take leases of ``wanted`` seconds on ``keys`` wherever they are held among each key's first N +
        ``RANK_SLACK`` in rank (a pin, or a file stored before leases): the nodes that grant with every block
        are recorded as holders. ``announced``: per key, the blocks this node placed under it (sent along so
        that holders move blocks it pushed without a key to it)."""
        now = int(self.clock.seconds())
        members = [*self.peers.members(), self.node.identity.node_id]  # this node may hold blocks of the file
        asks: dict[bytes, list[bytes]] = defaultdict(list)
        extra: set[tuple[bytes, bytes]] = set()
        for key in keys:
            for m in self.node.placement.rank(key, members)[: max(self.node.replicas, 1) + RANK_SLACK]:
                asks[m].append(key)
                extra.add((m, key))
        ds = [ensureDeferred(self._holder(m, wanted, ks, now, extra, set(), announced)) for m, ks in asks.items()]
        await DeferredList(ds, consumeErrors=True)

    async def _holder(self, holder: bytes, wanted: int, keys: list[bytes], now: int,
                      extra: set[tuple[bytes, bytes]], lost: set[bytes],
                      announced: dict[bytes, list[CID]] | None = None) -> None:
        for i, batch in _batches(keys, announced):
            mine = [k for k in batch if (holder, k) not in extra]
            try:
                granted, bits, whole = await self._ask(holder, batch, wanted,
                                                       [announced.get(k, []) for k in batch] if announced else None)
            except NotSupported:
                log.info("node {h} speaks protocol version 1: it keeps our blocks for its own lease time",
                         h=short_node_id(holder))
                self.index.renewed(holder, [(k, False, False) for k in mine], 0, now, RETRY)
                continue
            except Exception as e:
                log.debug("renewing leases on {h} failed: {e}", h=short_node_id(holder), e=e)
                self.index.retry_leases(holder, [k for k in keys[i:] if (holder, k) not in extra], now + RETRY)
                return
            outcome = [(k, ok, ok and full) for k, ok, full in zip(batch, bits, whole) if (holder, k) not in extra]
            adopted = [(k, wanted) for k, ok, full in zip(batch, bits, whole) if (holder, k) in extra and ok and full]
            self.index.renewed(holder, outcome, granted, now, RETRY, adopted)
            self.renewed += sum(1 for _k, ok, full in outcome if ok and full) + len(adopted)
            bad = [k for k, ok, full in outcome if not full]
            lost.update(bad)
            if bad:
                log.info("node {h} no longer holds every block under {n} of {m} key(s) it was asked to keep",
                         h=short_node_id(holder), n=len(bad), m=len(outcome))

    async def _ask(self, holder: bytes, keys: list[bytes], wanted: int, cids: list[list[CID]] | None = None
                   ) -> tuple[int, list[bool], list[bool]]:
        """(granted seconds, granted per key, complete per key) from ``holder``: this node itself (a pin of a
        file whose blocks it holds for the uploader) answers without the network."""
        if holder == self.node.identity.node_id:
            granted, bits, whole = await self.node.lease(holder, keys, wanted, cids)
            return granted, bits, whole
        header: dict[str, Any] = {"keys": keys, "time": wanted}
        if cids is not None:
            header["cids"] = [[c.to_bytes() for c in cs] for cs in cids]
        r = await self.peers.request(holder, frames.LEASE, header, timeout=TIMEOUT)
        granted = r.header.get("time")
        bits = _bits(r.header.get("granted"), len(keys))
        # "complete" is in every version-2 answer of this release; an answer without it counts as complete
        whole = _bits(r.header["complete"], len(keys)) if "complete" in r.header else bits
        if not isinstance(granted, int) or granted < 0:
            granted, bits = 0, [False] * len(keys)
        return granted, bits, whole

    async def _place_again(self, short: dict[str, dict[bytes, list[bytes]]]) -> None:
        """Give the blocks of keys short of holders to repair (the origin's part), read from the local copy."""
        rows: list[Underplaced] = []
        for owner, keys in short.items():
            kind, _, name = owner.partition(":")
            root = CID.parse(name)
            if kind == "pin" and not (self.index.pinned(root) or (False, 0))[0]:
                log.info("{n} placement key(s) of a file pinned here have fewer than {r} holders; without a local copy "
                         "(cas pin --local) this node cannot place them again", n=len(keys), r=self.node.replicas)
                continue
            try:
                blocks = await self.node.file_blocks(root)
            except Exception as e:
                log.warn("cannot place the blocks of a file again: its manifests cannot be read ({e})", e=e)
                continue
            rows += [Underplaced(cid, key, tuple(keys[key])) for cid, key in blocks if key in keys]
            self.short += len(keys)
            log.info("{n} placement key(s) of a file have fewer than {r} holders under a live lease: placing their "
                     "blocks again", n=len(keys), r=self.node.replicas)
        if rows:
            self.index.add_underplaced(rows)
            if self.node.repairer is not None:
                self.node.repairer.top_up_soon()  # the origin's part of repair: cas/network/repair.py


def _batches(keys: list[bytes], announced: dict[bytes, list[CID]] | None) -> list[tuple[int, list[bytes]]]:
    """(start, keys) of the LEASE messages for ``keys``: at most ``MAX_KEYS`` each and, when block ids are
    announced, about ``ANNOUNCE_BYTES`` of header (38 bytes per id, the key and 4 more per key)."""
    out: list[tuple[int, list[bytes]]] = []
    batch: list[bytes] = []
    start, size = 0, 0
    for i, k in enumerate(keys):
        n = len(k) + 4 + 38 * len(announced.get(k, ())) if announced else 0
        if batch and (len(batch) == MAX_KEYS or size + n > ANNOUNCE_BYTES):
            out.append((start, batch))
            start, batch, size = i, [], 0
        batch.append(k)
        size += n
    if batch:
        out.append((start, batch))
    return out


def _bits(value: Any, n: int) -> list[bool]:
    if not isinstance(value, bytes) or len(value) != (n + 7) // 8:
        return [False] * n
    return [bool(value[i // 8] & (0x80 >> (i % 8))) for i in range(n)]
