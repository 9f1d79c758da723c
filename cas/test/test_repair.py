"""Repair by the holders over in-process networks of real nodes (cas/network/repair.py): with the origin gone
for good and a holder killed, every block is back at N copies, each checked by fetching it from each counted
holder; a holder down for less than ``--repair-after`` moves nothing."""

from __future__ import annotations

import random
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cas.base.cid import CID
from cas.network.placement import Rendezvous
from cas.network.repair import REPAIR_AFTER, Repairer
from cas.service import NodeService

from .test_network import FAST, wait_for
from .test_replication import content, get, network, placed_blocks, put


async def advance(clock: Clock, seconds: float, nodes: list[NodeService], step: float) -> None:
    """Move the nodes' lease and repair clock ``seconds`` ahead in ``step``s; every renewal, top-up and repair
    pass that started has ended before the clock moves on."""
    end = clock.seconds() + seconds
    while clock.seconds() < end:
        clock.advance(min(step, end - clock.seconds()))
        await deferLater(reactor, 0, lambda: None)
        for s in nodes:
            for job in (s.renewer._running, s.repairer._running):
                if job is not None:
                    await job


def fast_repair(nodes: list[NodeService], period: float = 0.3) -> None:
    for s in nodes:
        s.repairer.stop()
        s.repairer.period = s.repairer.top_up_period = period
        s.repairer.start()


async def put_file(tc: TestCase, nodes: list[NodeService]) -> tuple[Any, bytes, list, NodeService]:
    """A file of 3 segments put on ``nodes[0]``: (stored, its bytes, its blocks with their keys, a holder)."""
    path, data = content(tc, 3 * 64 * 1024)
    stored = await put(nodes[0], path)
    blocks = await placed_blocks(nodes[0], stored)
    return stored, data, blocks, next(s for s in nodes[1:] if any(s.node.store.has(c) for c, _k in blocks))


async def verified_holders(asker: NodeService, nodes: list[NodeService], cid: CID) -> int:
    """How many of ``nodes`` send ``cid`` with the bytes its id names (GET_BLOCK checks the hash; HAS would
    only say they claim it)."""
    n = 0
    for s in nodes:
        if s is asker:
            n += asker.node.store.has(cid) and asker.node.index.is_held(cid)
            continue
        try:
            await asker.peers.get_block(s.node.identity.node_id, cid)
        except Exception:
            continue
        n += 1
    return n


class RepairTests(TestCase):
    timeout = 120

    async def test_blocks_are_back_at_n_copies_without_the_origin(self) -> None:
        net, nodes = await network(self, 6, settings=FAST, repair_after=1.0, gc_period=0.5)
        fast_repair(nodes)
        for s in nodes:
            s.repairer.own_lease = 1  # the repairer's own lease on a copy ends at once: the carried ones keep it
        origin = nodes[0]
        path, data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        await net.kill(origin)  # the origin is gone for good first ...
        victim = next(s for s in nodes[1:] if any(s.node.store.has(c) for c, _k in blocks))
        await net.kill(victim)  # ... then a holder
        live = [s for s in nodes[1:] if s is not victim]

        def back() -> bool:
            return all(sum(1 for s in live if s.node.store.has(c) and s.node.index.is_held(c)) >= 3 for c, _k in blocks)

        took = await wait_for(back, "every block back at 3 copies", 60)
        print(f"\nrepaired in {took:.1f} s")
        for cid, _key in blocks:  # each copy checked by fetching it, not by HAS
            self.assertGreaterEqual(await verified_holders(live[0], live, cid), 3, str(cid))
        self.assertGreater(sum(s.repairer.blocks_sent for s in live), 0)
        # the new copies carry the origin's lease: nobody collects them, after the repairer's own lease too
        await deferLater(reactor, 3, lambda: None)
        self.assertTrue(back())
        me = origin.node.identity.node_id
        for s in live:
            for cid, key in blocks:
                if s.node.store.has(cid) and s.node.index.is_held(cid):
                    self.assertIsNotNone(s.node.index.leases.expiry(key, me), "a repaired copy without the lease")

    async def test_repaired_copies_go_with_cas_rm(self) -> None:
        """The origin never recorded the node a repair copied to, but its release also goes to each key's first
        N + 4 in rank, and the repairer's own lease on the copy is short: the copy goes with the file."""
        net, nodes = await network(self, 6, settings=FAST, repair_after=1.0, gc_period=0.5)
        fast_repair(nodes)
        for s in nodes:
            s.repairer.own_lease = 2  # 60 s in production: the copy's own lease, not what keeps it
        origin = nodes[0]
        stored, _data, blocks, victim = await put_file(self, nodes)
        # a holder of a block with exactly 3 copies (on a loaded machine an upload may leave a 4th: a holder that
        # missed its deadline was replaced and still stored the block), so that its death needs a repair
        victim = next(s for s in nodes[1:] for c, _k in blocks
                      if s.node.store.has(c) and sum(1 for o in nodes[1:] if o.node.store.has(c)) == 3)
        await net.kill(victim)
        live = [s for s in nodes[1:] if s is not victim]

        def held() -> int:
            return sum(1 for s in live for c, _k in blocks if s.node.store.has(c) and s.node.index.is_held(c))

        await wait_for(lambda: held() >= 3 * len(blocks), "the copies repaired", 60)
        self.assertGreater(sum(s.repairer.blocks_sent for s in live), 0)
        await origin.node.forget(stored.cap.root)
        await wait_for(lambda: held() == 0, "every copy, repaired ones too, collected after cas rm", 30)

    async def test_keys_that_arrive_are_kept_ranked_at_once(self) -> None:
        """A key first held after start is ranked when its blocks are recorded, not only when the first ranking
        (30 s after start) or the sweep reaches it: a membership change right after the upload finds it."""
        net, nodes = await network(self, 4, repair_after=1.0)
        _stored, _data, blocks, holder = await put_file(self, nodes)
        mine = {k for c, k in blocks if holder.node.store.has(c)}
        self.assertTrue(mine)
        self.assertEqual(mine - set(holder.repairer._top), set())
        for key in mine:
            top = holder.repairer._top[key]
            ids = {top[i:i + 32] for i in range(1, len(top), 32)}
            self.assertEqual(top[0], 3)
            self.assertIn(holder.node.identity.node_id, ids)  # it ranks among the key's first N + 4
            self.assertNotIn(nodes[0].node.identity.node_id, ids)  # the origin is left out

    async def test_a_silent_holder_not_yet_dead_moves_nothing(self) -> None:
        """A holder that stops answering is suspect first, and dead only after ``dead_after`` (30 s here): until
        then it counts as holding what it holds, even with a short ``--repair-after``."""
        net, nodes = await network(self, 6, repair_after=0.5)  # PATIENT failure detection: dead after 30 s
        fast_repair(nodes)
        _stored, _data, blocks, victim = await put_file(self, nodes)
        await net.kill(victim)
        live = [s for s in nodes if s is not victim]
        checked = sum(s.repairer.keys_checked for s in live)
        await deferLater(reactor, 4, lambda: None)  # passes every 0.3 s
        self.assertGreater(sum(s.repairer.keys_checked for s in live), checked)
        self.assertEqual([s.peers.dead_for() for s in live], [{}] * len(live))  # nobody found it dead yet
        self.assertEqual(sum(s.repairer.bytes_sent for s in live), 0)

    async def test_a_drained_node_leaves_n_copies_on_the_others(self) -> None:
        net, nodes = await network(self, 6, settings=FAST)
        origin = nodes[0]
        stored, data, blocks, leaving = await put_file(self, nodes)
        others = [s for s in nodes[1:] if s is not leaving]
        await leaving.repairer.drain()
        state = leaving.node.status()["repair"]["drain"]
        self.assertEqual((state["done"], state["short_blocks"], state["keys_done"]), (True, 0, state["keys"]))
        self.assertGreater(state["blocks_sent"], 0)
        for cid, _key in blocks:  # N copies without the leaving node, checked by fetching them
            self.assertGreaterEqual(await verified_holders(others[0], others, cid), 3, str(cid))
        await net.kill(leaving)
        await net.kill(origin)
        self.assertEqual(await get(others[0], stored), data)

    async def outage(self, repair_after: float) -> tuple[list[NodeService], list]:
        """A put on 6 nodes, then a holder down for 5 minutes (the peers' wall clock moved 300 s past its death;
        the lease clock, a task.Clock, moved on as well in 30 s passes). The live nodes and the file's blocks."""
        clock = Clock()
        clock.advance(time.time())
        net, nodes = await network(self, 6, settings=FAST, clock=clock, repair_after=repair_after)
        _stored, _data, blocks, victim = await put_file(self, nodes)
        await net.kill(victim)
        live = [s for s in nodes if s is not victim]
        await wait_for(lambda: all(victim.node.identity.node_id in s.peers.dead_for() for s in live), "dead", 30)
        for s in live:
            s.peers.wall = lambda: time.time() + 300  # 5 minutes later for failure detection ...
        await advance(clock, 300 + 60, live, step=30)  # ... and for arrivals, leases and repair passes
        return live, blocks

    async def test_a_holder_down_five_minutes_moves_nothing_under_the_default(self) -> None:
        live, _blocks = await self.outage(REPAIR_AFTER)
        self.assertGreater(sum(s.repairer.keys_checked for s in live), 0)  # they did look ...
        self.assertEqual(sum(s.repairer.bytes_sent for s in live), 0)  # ... and moved nothing

    async def test_the_same_outage_with_repair_after_5_moves_the_copies(self) -> None:
        live, blocks = await self.outage(5)
        self.assertGreater(sum(s.repairer.bytes_sent for s in live), 0)
        for cid, _key in blocks:
            self.assertGreaterEqual(await verified_holders(live[1], live[1:], cid), 3, str(cid))


class KeptRankTests(SynchronousTestCase):
    """A membership change queues exactly the keys whose first N + 4 it changes."""

    def repairer(self, members: list[bytes], keys: list[bytes]) -> Repairer:
        class Index:
            class leases:
                @staticmethod
                def key_info(key: bytes) -> tuple[bytes, int]:
                    return b"o" * 32, 3

                @staticmethod
                def held_keys(after: bytes, limit: int) -> list[bytes]:
                    return [k for k in sorted(keys) if k > after][:limit]

        self.reactor = Clock()

        class Node:
            index, placement, replicas = Index(), Rendezvous(), 3
            identity = type("I", (), {"node_id": members[0]})()
            reactor = self.reactor

        class Peers:
            def members(self) -> list[bytes]:
                return members[1:]

            def recently_dead(self, within: float) -> set[bytes]:
                return set()

            def subscribe(self, cb: object) -> object:
                return lambda: None

        r = Repairer(Node(), Peers(), Clock())
        r.kick = lambda: None  # type: ignore[method-assign]
        self.settle(r.rank_all())
        return r

    def settle(self, d: object) -> None:
        for _ in range(10_000):  # the batches run one per reactor turn
            self.reactor.advance(0)
        self.successResultOf(d)

    def test_join_and_leave(self) -> None:
        rnd = random.Random(7)
        members = [rnd.randbytes(32) for _ in range(40)]
        keys = [rnd.randbytes(20) for _ in range(3000)]
        r = self.repairer(members, keys)
        self.assertEqual(len(r._top), len(keys))
        rank = Rendezvous()
        joiner = rnd.randbytes(32)
        self.settle(r._affected(joiner, True))
        expected = {k for k in keys if joiner in rank.rank(k, [*members, joiner])[:7]}
        self.assertEqual(set(r._queue), expected)
        self.assertEqual((r.last_change["keys"], r.last_change["hashes"], r.last_change["affected"]),
                         (len(keys), 2 * len(keys), len(expected)))
        r._queue.clear()
        r._queued.clear()
        gone = members[5]
        self.settle(r._affected(gone, False))
        self.assertEqual(set(r._queue), {k for k in keys if gone in rank.rank(k, members)[:7]})


class PacingTests(SynchronousTestCase):
    """``--repair-rate`` bounds what repair sends, and a few blocks are in flight at once so that round trips do
    not bound it further (cas/network/repair.py ``_put`` and ``IN_FLIGHT``)."""

    def repairer(self, rate: int, answer: Any) -> tuple[Repairer, list[tuple[float, bytes]], list[CID]]:
        from twisted.internet.defer import succeed

        from cas.network.repair import Repairer as R

        reactor_ = Clock()
        reactor_.advance(1000)  # the blocks arrived long ago
        me, others = b"m" * 32, [b"a" * 32, b"b" * 32, b"c" * 32]
        blocks = [bytes([i]) * (1 << 20) for i in range(12)]
        cids = [CID.of(b) for b in blocks]
        data = dict(zip(cids, blocks))
        sent: list[tuple[float, bytes]] = []

        class Leases:
            def blocks_of(self, key: bytes) -> tuple[list[CID], int]:
                return cids, 0

            def key_info(self, key: bytes) -> tuple[bytes, int]:
                return b"o" * 32, 2

            def leases_on(self, key: bytes, now: int) -> list[tuple[bytes, int]]:
                return [(b"o" * 32, 10_000)]

        class Node:
            identity = type("I", (), {"node_id": me})()
            index = type("X", (), {"leases": Leases()})()
            store = type("S", (), {"has": staticmethod(lambda c: True)})()
            placement, replicas, reactor, block_deadline = Rendezvous(), 2, reactor_, 10.0

            def fetch(self, cid: CID) -> Any:
                return succeed(data[cid])

        class Peers:
            def members(self) -> list[bytes]:
                return others

            def recently_dead(self, within: float) -> set[bytes]:
                return set()

            def has_leased(self, m: bytes, cs: list) -> Any:
                return succeed(([False] * len(cs), [False] * len(cs)))

            def put_block(self, target: bytes, cid: CID, block: Any, **_kw: Any) -> Any:
                sent.append((reactor_.seconds(), target))
                return answer()

        r = R(Node(), Peers(), reactor_, rate=rate)
        self.reactor = reactor_
        return r, sent, cids

    def test_sends_keep_to_the_rate(self) -> None:
        from twisted.internet.defer import succeed

        r, sent, cids = self.repairer(4 << 20, lambda: succeed(True))  # 4 MiB/s: a 1 MiB block every 0.25 s
        d = ensure(r._repair_key(b"k" * 40))
        while not d.called:
            self.reactor.advance(0.01)
        self.assertEqual(self.successResultOf(d), 0)  # nothing left short
        self.assertEqual(len(sent), len(cids))  # N = 2: one copy besides this node's, each block
        for i, (t, _target) in enumerate(sent):
            self.assertLess(abs(t - 1000 - i * 0.25), 0.011)
        self.assertEqual(r.bytes_sent, len(cids) << 20)

    def test_a_few_blocks_are_in_flight_at_once(self) -> None:
        from twisted.internet.defer import Deferred

        from cas.network.repair import IN_FLIGHT

        pending: list[Deferred[bool]] = []

        def answer() -> Deferred[bool]:
            pending.append(Deferred())
            return pending[-1]

        r, sent, cids = self.repairer(1 << 40, answer)  # no pacing to speak of
        d = ensure(r._repair_key(b"k" * 40))
        self.reactor.advance(0.01)  # past the slots of 1 MiB at 1 TiB/s
        self.assertEqual(len(sent), IN_FLIGHT)  # not one round trip per block ...
        pending[0].callback(True)
        self.reactor.advance(0.01)  # past the slots of 1 MiB at 1 TiB/s
        self.assertEqual(len(sent), IN_FLIGHT + 1)  # ... nor more than the window
        while not d.called:
            for p in pending:
                if not p.called:
                    p.callback(True)
            self.reactor.advance(0.01)  # past the slots of 1 MiB at 1 TiB/s
        self.assertEqual((len(sent), self.successResultOf(d)), (len(cids), 0))


def ensure(coro: Any) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coro)


class ExtraCopyTests(TestCase):
    timeout = 60

    async def test_an_extra_copy_is_released_after_an_audit_of_a_node_ranked_above(self) -> None:
        _net, nodes = await network(self, 6, repair_after=1.0)
        origin = nodes[0]
        stored, data, blocks, _holder = await put_file(self, nodes)
        key = blocks[-1][1]  # a stripe key
        cids = [c for c, k in blocks if k == key]
        me = origin.node.identity.node_id
        others = [s.node.identity.node_id for s in nodes[1:]]
        rank = origin.node.placement.rank(key, others)
        by_id = {s.node.identity.node_id: s for s in nodes}
        extra = by_id[rank[3]]  # the fourth in rank: no upload put anything there
        self.assertFalse(any(extra.node.store.has(c) for c in cids))
        for c in cids:  # a copy there, as a repair or a join would have left it (with the origin's lease)
            await origin.peers.put_block(extra.node.identity.node_id, c, origin.node.store.get(c), key=key,
                                         lease=3600, origin=me, n=3)
        self.assertTrue(all(extra.node.store.has(c) for c in cids))
        extra.repairer.own_lease = 1
        extra.repairer.clock = _Later(extra.repairer.clock, 600)  # the blocks arrived long enough ago
        await extra.repairer._repair_key(key)
        self.assertEqual(extra.repairer.extra_released, 1)
        self.assertEqual(extra.auditor.passed, 1)  # it audited a node ranked above before letting go
        self.assertFalse(any(extra.node.store.has(c) for c in cids))
        self.assertFalse(extra.node.index.leases.holds_key(key))
        for c in cids:  # the three ranked first keep theirs
            self.assertEqual(sum(1 for m in rank[:3] if by_id[m].node.store.has(c)), 3)
        self.assertEqual(await get(nodes[5] if nodes[5] is not extra else nodes[4], stored), data)

    async def test_a_copy_of_the_first_n_is_not_extra(self) -> None:
        _net, nodes = await network(self, 5, repair_after=1.0)
        _stored, _data, blocks, _holder = await put_file(self, nodes)
        key = blocks[-1][1]
        others = [s.node.identity.node_id for s in nodes[1:]]
        rank = nodes[0].node.placement.rank(key, others)
        third = next(s for s in nodes if s.node.identity.node_id == rank[2])
        third.repairer.clock = _Later(third.repairer.clock, 600)
        await third.repairer._repair_key(key)
        self.assertEqual(third.repairer.extra_released, 0)
        self.assertTrue(third.node.index.leases.holds_key(key))


class _Later:
    """A clock ``ahead`` seconds ahead of ``clock`` (for the arrival wait only)."""

    def __init__(self, clock: Any, ahead: float) -> None:
        self.clock, self.ahead = clock, ahead

    def seconds(self) -> float:
        return self.clock.seconds() + self.ahead

    def callLater(self, *a: Any, **kw: Any) -> Any:
        return self.clock.callLater(*a, **kw)
