"""Repair by the holders themselves: no read key, no origin, no coordinator.

Every node looks after the placement keys it holds blocks under. For a key it ranks the members plus the
peers dead for less than ``--repair-after`` (counted as still holding what they held: a reboot moves nothing),
this node included and the file's origin left out as the uploader did; the file wants N copies (N and the
origin come with the blocks: PUT_BLOCK ``origin`` and ``n``). It asks the live nodes among the rank's first
N + ``RANK_SLACK`` which of the key's blocks they have (HAS). For each block with fewer than N copies (live
holders, plus recently dead nodes among the first N), the first live holder in rank, and only it, pushes the
block to the next live nodes in rank that lack it, carrying the live leases it knows on the key (holder,
seconds left), so the new copy is kept as long as the original. A key with a block that arrived less than
``ARRIVAL`` (or ``--repair-after``, if shorter) ago waits: an upload or another repair may still be sending. Blocks are ciphertext with ids, checked by
their receiver: nothing is decrypted. Two repairers at once (views of the membership differ at times) only
send a block twice; a PUT of a block already held is a no-op.

The origin takes part only for the blocks of its own files that no node of the rank holds (an upload that
found too few nodes, or holders that fell out of the rank or lost them: the index table ``underplaced``): it
sends those itself under its own lease. A block some live node of the rank holds is that node's to repair.

What is checked, and when: a key whose ranking changed (a member joined, or one dead for ``--repair-after``
left the rank), found from the first N + ``RANK_SLACK`` kept per key (``_top``), and a slow sweep of every
held key (``SWEEP`` keys per period) that also fills ``_top``; the origin's short blocks each pass and when a
member joins. Bytes sent are paced by ``--repair-rate``.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.internet.task import Cooperator, SchedulerStopped, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base import crash
from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock
from cas.base.nodeid import short_node_id
from cas.network.placement import RANK_SLACK
from cas.peer.gossip import TokenBucket
from cas.peer.peers import MAX_HAS
from cas.store.index import Underplaced
from cas.store.leases import LEGACY

log = Logger()

REPAIR_AFTER = 600.0  # seconds a peer is dead before its copies are replaced
REPAIR_RATE = 20 << 20  # bytes per second sent by repair at most
PERIOD = 30.0  # seconds between passes
SWEEP = 256  # held keys looked at per pass besides those whose ranking changed
TIMEOUT = 30.0
BATCH = 2000  # kept ranks looked at per reactor turn after a membership change
OWN_LEASE = 60  # seconds of the repairer's own lease on a copy it makes (the carried leases keep the copy)
ARRIVAL = 120.0  # seconds a key's newest block waits before the key is repaired (at most --repair-after)
IN_FLIGHT = 4  # blocks a repair of one key keeps in flight (each waits for its slot of --repair-rate)
TOP_UP_BATCH = 64  # the origin's short blocks read from the index at a time
TOP_UP_PERIOD = 60.0  # seconds between two looks at the origin's short blocks, unless something changed
EXTRA_AUDITS = 6  # audits a minute before releasing extra copies (a burst of 6): under a peer's 10 a minute


class Repairer:
    def __init__(self, node: Any, peers: Any, clock: Any, repair_after: float = REPAIR_AFTER,
                 rate: int = REPAIR_RATE, period: float = PERIOD, sweep: int = SWEEP) -> None:
        self.node, self.index, self.peers, self.clock = node, node.index, peers, clock
        self.repair_after, self.rate, self.period, self.sweep = repair_after, rate, period, sweep
        self.own_lease = OWN_LEASE
        # held key -> N (one byte), then the ids of its first N + RANK_SLACK (32 bytes each) when last ranked
        self._top: dict[bytes, bytes] = {}
        self.last_change: dict[str, Any] = {}  # what the last membership change cost (docs/reliability.md)
        self.draining: dict[str, Any] | None = None  # the last drain's progress (cas drain)
        self._draining: Deferred[None] | None = None
        self._queue: deque[bytes] = deque()  # keys to look at first
        self._queued: set[bytes] = set()
        self._forced: set[bytes] = set()  # keys to repair from here, first holder or not (a failed audit)
        self._forced_cids: set[CID] = set()  # blocks of this node's files a holder failed to prove (the same)
        self._extra_audits = TokenBucket(EXTRA_AUDITS, 60.0, 0.0)  # audits before releasing extra copies
        self.top_up_period = TOP_UP_PERIOD
        self._top_up_at = -TOP_UP_PERIOD  # when the origin's rows were last looked at (real time)
        self._top_up_soon = False  # a join, a shortfall or a lost copy: look at them at the next pass
        self._cursor = b""  # the sweep's position in the held keys
        self._timer: Any = None
        self._running: Deferred[None] | None = None
        self._again = False  # kicked while a pass ran: another follows
        self._unsubscribe: Any = None
        self._later: set[Any] = set()  # delayed looks at the keys of peers that left
        self._building: Any = None
        # batches of kept ranks run a slice of each reactor turn (real time, whatever clock leases use)
        self._cooperator = Cooperator(scheduler=lambda f: node.reactor.callLater(0, f))
        self._stopped = False
        self._sent_at = 0.0  # when the bytes sent so far are paid for (the rate's token bucket, as a deadline)
        # counters (cas status, tests)
        self.blocks_sent = 0
        self.bytes_sent = 0
        self.keys_checked = 0
        self.topped_up = 0  # of blocks_sent: the origin's, of blocks no node of the rank held
        self.extra_released = 0  # keys whose copies here were extra and were let go

    def start(self) -> None:
        self._stopped = False
        self._cooperator = Cooperator(scheduler=lambda f: self.node.reactor.callLater(0, f))
        self._unsubscribe = self.peers.subscribe(self._changed)
        self._timer = self.clock.callLater(self.period, self._tick)
        self._building = self.clock.callLater(self.period, self.rank_all)

    def rank_all(self) -> Deferred[None]:
        """Keep the first N + 4 of every held key, so that a membership change finds the keys it affects without
        looking at the others. Run once after start (by then the membership is known), in steps of 16 keys
        (a step hashes each key with every member); changes keep it current."""
        cursor = b""

        def work() -> Iterator[None]:
            nonlocal cursor
            while True:
                keys = self.index.leases.held_keys(cursor, BATCH)
                for i, key in enumerate(keys, 1):
                    self._rank(key)  # one BLAKE3 per member
                    if i % 16 == 0:
                        yield None  # 16 keys a step: 10 ms among 1,000 members
                if len(keys) < BATCH:
                    return
                cursor = keys[-1]

        return self._cooperator.cooperate(work()).whenDone().addCallbacks(lambda _: None, _stopped)

    def note_keys(self, keys: set[bytes]) -> None:
        """Keys blocks were just recorded under: those not kept yet are ranked now, so that a membership change
        finds them too (the first ranking after start and the sweep cover the keys held before)."""
        if self._stopped:
            return
        for key in keys:
            if key not in self._top and not key.startswith(LEGACY):
                self._rank(key)

    def _rank(self, key: bytes) -> tuple[bytes | None, int, set[bytes], tuple[bytes, ...]]:
        """(origin, N, peers dead for less than --repair-after, the key's first N + RANK_SLACK), kept."""
        info = self.index.leases.key_info(key)
        origin, n = info if info is not None else (None, self.node.replicas)
        dead = self.peers.recently_dead(self.repair_after)
        me = self.node.identity.node_id
        ranked = [m for m in self.node.placement.rank(key, [*self.peers.members(), *dead, me]) if m != origin]
        top = tuple(ranked[: max(n, 0) + RANK_SLACK])
        self._top[key] = bytes([max(n, 0)]) + b"".join(top)
        return origin, n, dead, top

    def stop(self) -> None:
        """No new work; batches stop, and a pass or drain in progress ends at its next key."""
        self._stopped = True
        self._cooperator.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for call in [*self._later, self._building]:
            if call is not None and call.active():
                call.cancel()
        self._later.clear()

    def status(self) -> dict[str, Any]:
        return {"queued": len(self._queue), "keys_checked": self.keys_checked, "blocks_sent": self.blocks_sent,
                "bytes_sent": self.bytes_sent, "topped_up": self.topped_up, "extra_released": self.extra_released,
                "short_here": self.index.count_underplaced(),
                "drain": dict(self.draining) if self.draining else None}

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.period, self._tick)
        self.kick()

    def kick(self) -> Deferred[None]:
        """A pass now (or another right after the one running); fires when they are over."""
        if self._running is not None:
            self._again = True
            return self._running
        d = self._running = ensureDeferred(self._passes())
        d.addBoth(self._over)
        return d

    async def _passes(self) -> None:
        while True:
            self._again = False
            await self._pass()
            if not self._again or self._stopped:
                return

    def _over(self, result: Any) -> None:
        self._running = None
        if isinstance(result, Failure):
            log.failure("a repair pass failed", result)

    def _changed(self, change: Any) -> None:
        """A member joined (it may now rank among a key's first holders) or left (after ``--repair-after`` its
        copies are to be replaced): the keys whose kept rank it enters or leaves are looked at first."""
        if change.member:
            self._affected(change.node_id, joined=True)
            if self.node.replicas > 0 and self.index.count_underplaced():
                self.top_up_soon()  # the origin's short blocks may have a place now
        else:
            call = self.clock.callLater(self.repair_after, self._affected, change.node_id, False)
            self._later.add(call)

    def _affected(self, node_id: bytes, joined: bool) -> Deferred[None]:
        """Queue the keys a membership change affects, ``BATCH`` kept ranks per reactor turn: a node that joined
        is scored against each key (one BLAKE3 per key, compared with the last of its first N + 4), a node
        that left is looked for in them. The cost is kept in ``last_change``."""
        self._later = {c for c in self._later if c.active()}
        score = self.node.placement.score
        start, hashes, affected = time.perf_counter(), 0, 0
        keys = list(self._top)

        def work() -> Iterator[None]:
            nonlocal hashes, affected
            for i in range(0, len(keys), BATCH):
                for key in keys[i:i + BATCH]:
                    top = self._top.get(key)
                    if top is None:
                        continue
                    ids, full = top[1:], (top[0] + RANK_SLACK) * 32
                    if joined:
                        hashes += 2
                        hit = len(ids) < full or score(key, node_id) > score(key, ids[-32:])
                    else:
                        hit = any(ids[j:j + 32] == node_id for j in range(0, len(ids), 32))
                    if hit:
                        affected += 1
                        self._enqueue(key)
                yield None

        def done(_: Any) -> None:
            self.last_change = {"joined": joined, "keys": len(keys), "hashes": hashes, "affected": affected,
                                "seconds": time.perf_counter() - start}
            if self._queue:
                self.kick()

        return self._cooperator.cooperate(work()).whenDone().addCallbacks(done, _stopped)

    def _failing(self, node: bytes) -> bool:
        """A recent failed audit of ``node`` (cas/peer/track.py): it counts as holding nothing, and gets nothing."""
        track = getattr(self.peers, "track", None)
        return track is not None and track.failing(node)

    def check_now(self, key: bytes) -> None:
        """A copy under ``key`` was found lost (an audit failed): repair it now, from here whatever this node's place
        in the rank (the first holder may not know yet); the failing holder counts as holding nothing."""
        self._forced.add(key)
        self._enqueue(key)
        self.kick()

    def copy_lost(self, cid: CID, key: bytes) -> None:
        """A holder of a block of this node's own file failed its audit: the block is recorded short and sent from
        here to the next live node of the rank, whoever else holds it."""
        self.index.add_underplaced([Underplaced(cid, key, ())])
        self._forced_cids.add(cid)
        self.top_up_soon()

    def top_up_soon(self) -> None:
        """Something changed for the origin's short blocks (a member joined, a renewal found keys short, a copy
        was lost): look at them in a pass now, not at the next period."""
        self._top_up_soon = True
        self.kick()

    def _enqueue(self, key: bytes) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)

    async def _pass(self) -> None:
        now = self.node.reactor.seconds()
        if self._top_up_soon or now - self._top_up_at >= self.top_up_period:  # each HAS round costs the rank's nodes
            self._top_up_soon, self._top_up_at = False, now
            await self._top_up()
        keys = self.index.leases.held_keys(self._cursor, self.sweep)
        self._cursor = keys[-1] if len(keys) == self.sweep else b""
        for k in keys:
            self._enqueue(k)
        while self._queue and not self._stopped:
            key = self._queue.popleft()
            self._queued.discard(key)
            try:
                await self._repair_key(key)
            except Exception as e:
                log.debug("repairing a key failed: {e}", e=e)

    async def _repair_key(self, key: bytes, leaving: bool = False) -> int:
        """Bring the key's blocks held here to N copies; ``leaving`` (a drain): as if this node were gone, and
        it sends whatever the others lack. The blocks left short of N (no node to send them to)."""
        me = self.node.identity.node_id
        forced = key in self._forced
        self._forced.discard(key)
        cids, newest = self.index.leases.blocks_of(key)
        cids = [c for c in cids if self.node.store.has(c)]
        if not cids:
            self._top.pop(key, None)
            return 0
        if not leaving and not forced and newest > self.clock.seconds() - min(self.repair_after, ARRIVAL):
            return 0  # blocks still arriving (an upload, or another repair): the sweep comes back
        origin, n, dead, top = self._rank(key)
        if n <= 0:
            return 0
        self.keys_checked += 1
        if leaving:
            top = tuple(m for m in top if m != me)
        live = [m for m in top if m not in dead and not self._failing(m)]  # a failed audit: holds nothing, gets nothing
        assumed = sum(1 for m in top[:n] if m in dead)  # recently dead: still holding what they held
        have: dict[bytes, set[CID] | None] = {me: set(cids)}  # None: did not answer
        for m in live:
            if m != me:
                have[m] = await self._has(m, cids)
        if not leaving and not forced and await self._extra(key, cids, top, live, have, n):
            return 0  # this node's copies were extra, and are gone
        # A member among the first N that did not answer is not dead yet: it counts as holding what it holds, like
        # the recently dead (only a death older than --repair-after moves copies).
        silent = sum(1 for m in top[:n] if m in have and have[m] is None)

        async def one(cid: CID, missing: int) -> bool:
            """Copies of one block, target after target in rank until ``missing`` took it: still short?"""
            for t in [m for m in live if m != me and have.get(m) is not None and cid not in have[m]]:
                if missing <= 0 or self._stopped:
                    break
                if await self._send(t, cid, key, origin, n, paced=not leaving):
                    have[t].add(cid)  # type: ignore[union-attr]
                    missing -= 1
            return missing > 0

        window = DeferredSemaphore(IN_FLIGHT)  # blocks in flight: a round trip per block would cap the rate
        jobs: list[Deferred[bool]] = []
        for cid in cids:
            holders = [m for m in live if cid in (have.get(m) or ())]
            missing = n - len(holders) - assumed - (0 if leaving else silent)
            if missing <= 0 or not (leaving or forced) and (not holders or holders[0] != me):
                continue  # enough copies, or another holder ranks first: it repairs
            jobs.append(window.run(lambda c=cid, k=missing: ensureDeferred(one(c, k))))
        # every job ends before the next key's start (a failed one must not free the window early)
        results = await DeferredList(jobs, consumeErrors=True) if jobs else []
        return sum(1 for ok, short in results if not ok or short)

    async def _extra(self, key: bytes, cids: list[CID], top: tuple[bytes, ...], live: list[bytes],
                     have: dict[bytes, set[CID] | None], n: int) -> bool:
        """Let this node's copies under ``key`` go when they are extra: N live nodes ranked above it (a wave of
        joins, or repair, put them there) hold every one of its blocks under a lease, and one of them passed an
        audit just now. Never the origin's copy (the origin is not in the rank, and its own files' blocks are
        referenced, not held) nor a pinner's local one (referenced too)."""
        me = self.node.identity.node_id
        auditor = getattr(self.node, "auditor", None)
        if auditor is None:
            return False
        above = [m for m in top[: top.index(me) if me in top else len(top)] if m in live and m != me]
        if any(sum(1 for m in above if c in (have.get(m) or ())) < n for c in cids):
            return False
        if not self._extra_audits.take(self.node.reactor.seconds()):
            return False  # the audits before a release share a small allowance: the sweep comes back
        cid = auditor.rng.choice(cids)  # any block, at any of the nodes above that hold it: none can be guessed
        target = auditor.rng.choice([m for m in above if cid in (have.get(m) or ())])
        if await auditor.challenge(target, key, cid) is not True:
            return False
        if set(self.index.leases.blocks_of(key)[0]) != set(cids):
            return False  # blocks arrived under the key meanwhile (or went): the next look decides again
        freed = await self.node.drop_extra(key)
        self.extra_released += 1
        log.info("{n} extra copies under a placement key released: {k} nodes ranked above this one hold them (an "
                 "audit of {t} passed)", n=len(cids), k=len(above), t=short_node_id(target))
        return freed >= 0

    def drain(self) -> Deferred[None]:
        """Hand every held key to the next nodes in rank before this node leaves (``cas drain``): each block
        goes to the nodes of its key's first N + 4 (this one left out) that lack it, until N others have it,
        at the network's pace. Progress and outcome in ``draining``."""
        if self._draining is not None:
            return self._draining
        state = self.draining = {"keys_done": 0, "keys": self.index.leases.count_held_keys(), "blocks_sent": 0,
                                 "short_blocks": 0, "done": False}
        sent_before = self.blocks_sent

        async def run() -> None:
            cursor = b""
            while True:
                keys = self.index.leases.held_keys(cursor, BATCH)
                for key in keys:
                    if self._stopped:
                        return
                    try:
                        state["short_blocks"] += await self._repair_key(key, leaving=True)
                    except Exception as e:
                        log.warn("draining a placement key failed: {e}", e=e)
                        state["short_blocks"] += 1
                    state["keys_done"] += 1
                    state["blocks_sent"] = self.blocks_sent - sent_before
                if len(keys) < BATCH:
                    break
                cursor = keys[-1]
            state["done"] = True
            log.info("drained: {k} placement keys, {b} blocks sent, {s} blocks left short of their copies",
                     k=state["keys_done"], b=state["blocks_sent"], s=state["short_blocks"])

        def over(result: Any) -> Any:
            self._draining = None
            state["done"] = True
            if isinstance(result, Failure):
                log.failure("draining failed", result)
            return None

        d = self._draining = ensureDeferred(run())
        d.addBoth(over)
        return d

    async def _has(self, m: bytes, cids: list[CID]) -> set[CID] | None:
        """The blocks ``m`` holds under a live lease (HAS version 2: a copy awaiting collection, or one a node
        of protocol version 1 keeps, is no copy); None if it did not answer."""
        out: set[CID] = set()
        for i in range(0, len(cids), MAX_HAS):
            chunk = cids[i:i + MAX_HAS]
            try:
                _held, leased = await self.peers.has_leased(m, chunk).addTimeout(TIMEOUT, self.node.reactor)
            except Exception:
                return None  # unreachable: it gets nothing from this pass
            out.update(c for c, b in zip(chunk, leased or ()) if b)
        return out

    async def _send(self, target: bytes, cid: CID, key: bytes, origin: bytes | None, n: int, paced: bool = True
                    ) -> bool:
        """A holder's copy of ``cid`` to ``target``, with the live leases this node knows on ``key``."""
        now = int(self.clock.seconds())
        carried = self.index.leases.leases_on(key, now)
        if not carried:
            return False  # no live lease: the copy here goes soon too, there is nothing to keep
        try:
            data = await self.node.fetch(cid)
        except Exception:
            return False
        return await self._put(target, cid, data, key, min(self.own_lease, carried[0][1]), origin,
                               n if origin is not None else None, carried, paced)

    async def _put(self, target: bytes, cid: CID, data: Any, key: bytes, lease: int, origin: bytes | None,
                   n: int | None, carried: list[Any] | None, paced: bool = True) -> bool:
        """One PUT_BLOCK of repair, after waiting for its share of ``--repair-rate``: whether ``target`` now holds
        the block under a lease (a node of protocol version 1 takes it without one: no copy to count)."""
        pace = self.node.reactor  # bytes per second of real time, whatever clock leases use
        if paced:  # a slot of the rate's schedule taken before waiting for it: sends in flight share one rate
            now = pace.seconds()
            start = max(self._sent_at, now)
            self._sent_at = start + len(data) / self.rate
            if start > now:
                await deferLater(pace, start - now, lambda: None)
        try:
            leased = await self.peers.put_block(target, cid, data, timeout=self.node.block_deadline, key=key,
                                                lease=lease, origin=origin, n=n, leases=carried)
        except Exception as e:
            log.debug("repair of {cid} on {t} failed: {e}", cid=str(cid), t=short_node_id(target), e=e)
            return False
        crash.point("repair.after_send")
        if leased is False:
            return False
        self.blocks_sent += 1
        self.bytes_sent += len(data)
        return True

    async def _top_up(self) -> None:
        """The origin's part: the blocks of its files short of N (``underplaced``). A block some live node of
        its key's rank holds under a lease is left to that node's repair, and the row only learns how many
        hold it (the answer of a resumable upload's last piece counts them). A block none of them holds is
        sent from here, under this node's lease, to the live nodes of the rank that lack it, until N hold it
        (recorded holders dead for less than ``--repair-after`` or silent count as holding, as in repair). A
        row goes when N live nodes of the rank hold its block, or when the block is no longer stored here."""
        n, me = self.node.replicas, self.node.identity.node_id
        after = ""
        while n > 0 and not self._stopped:
            rows = self.index.underplaced(TOP_UP_BATCH, after)
            if not rows:
                return
            after = str(rows[-1].cid)
            by_key: dict[bytes, list[Underplaced]] = defaultdict(list)
            for row in rows:
                by_key[row.key].append(row)
            dead = self.peers.recently_dead(self.repair_after)
            members = [*self.peers.members(), *dead]
            done: list[CID] = []
            progress: list[Underplaced] = []
            placed: list[tuple[bytes, list[bytes]]] = []
            for key, krows in by_key.items():
                if self._stopped:
                    return  # the node is stopping (its index may be closed): the rows wait for the next start
                here = [r for r in krows if self.node.store.has(r.cid)]
                for r in krows:
                    if r not in here:
                        self._forced_cids.discard(r.cid)
                        if not self.index.owners_of(r.cid):
                            done.append(r.cid)  # the file was forgotten and collected
                        # else: the copy here is being replaced (scrub): the row waits for it
                top = [m for m in self.node.placement.rank(key, members) if m != me][: n + RANK_SLACK]
                live = [m for m in top if m not in dead and self.peers.version_of(m) != 1 and not self._failing(m)]
                have = {m: await self._has(m, [r.cid for r in here]) for m in live} if here else {}
                sent: list[bytes] = []
                for row in here:
                    holders = [m for m in live if row.cid in (have[m] or ())]
                    assumed = [m for m in row.holders if m in dead or have.get(m, ()) is None]
                    # a block whose copy failed this node's audit is sent from here even where others hold it:
                    # they count the failing node as a holder and would not repair it
                    forced = row.cid in self._forced_cids
                    self._forced_cids.discard(row.cid)
                    if (forced or not holders) and len(holders) + len(assumed) < n:
                        lacking = [m for m in live if have[m] is not None and row.cid not in have[m]]
                        took = await self._place(row, key, lacking, n - len(holders) - len(assumed))
                        if took is None:
                            done.append(row.cid)  # unreadable here (logged): nothing to place
                            continue
                        holders = holders + took
                        sent += took
                    if len(holders) >= n:
                        done.append(row.cid)
                    elif tuple(holders + assumed) != row.holders:
                        progress.append(attrs.evolve(row, holders=tuple(holders + assumed)))
                if sent:
                    placed.append((key, sorted(set(sent))))
            if self._stopped:
                return
            self.index.update_underplaced(done, progress)
            now = int(self.clock.seconds())
            for key, holders in placed:
                self.index.add_placed(key, holders, self.node.lease_time, now)

    async def _place(self, row: Underplaced, key: bytes, targets: list[bytes], want: int) -> list[bytes] | None:
        """Send the origin's own copy of ``row``'s block to the first ``want`` of ``targets`` that take it (None:
        the copy here cannot be read)."""
        try:
            data = await self.node.fetch(row.cid)
        except (BlockNotFound, CorruptBlock) as e:
            if self.index.owners_of(row.cid):
                return []  # still this node's: the scrub fetches a good copy (found by this read), the row waits
            log.warn("block {cid} of a file stored here, which no other node holds, cannot be read here: {e}",
                     cid=str(row.cid), e=e)
            return None
        took: list[bytes] = []
        me = self.node.identity.node_id
        for t in targets:
            if len(took) >= want or self._stopped:
                break
            if await self._put(t, row.cid, data, key, self.node.lease_time, me, self.node.replicas, None):
                took.append(t)
                self.topped_up += 1
        return took


def _stopped(f: Failure) -> None:
    """Batches cut by ``Repairer.stop`` end quietly."""
    f.trap(SchedulerStopped)
