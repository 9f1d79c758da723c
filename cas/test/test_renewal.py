"""Lease renewal over in-process networks of real nodes (cas/network/renewal.py): an upload's provisional leases
become full ones once the file is recorded, renewal keeps the copies past many lease times, and without it they
go."""

from __future__ import annotations

import os
import time

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from cas.base.cid import CID
from cas.network.placement import Rendezvous
from cas.service import NodeService
from cas.store.datadir import prepare
from cas.store.placements import PROVISIONAL

from .test_network import FAST, wait_for
from .test_release import GC, _held_anywhere, copies, file_blocks
from .test_replication import content, network, node_options, placed_blocks, put

HOUR = 3600


async def advance(clock: Clock, seconds: float, nodes: list[NodeService], step: float = 60.0) -> None:
    """Move the nodes' lease clock ``seconds`` ahead in ``step``s, letting the network settle after each: every
    renewal and top-up round that started has ended before the clock moves on."""
    end = clock.seconds() + seconds
    while clock.seconds() < end:
        clock.advance(min(step, end - clock.seconds()))
        await deferLater(reactor, 0, lambda: None)
        for s in nodes:
            for job in (s.renewer._running, s.repairer._running):
                if job is not None:
                    await job


def holders_of(nodes: list[NodeService], origin: NodeService, cid: CID, key: bytes) -> list[NodeService]:
    """The nodes holding ``cid`` under ``key`` with the origin's lease on the key still live."""
    me, now = origin.node.identity.node_id, origin.node.clock.seconds()
    return [s for s in nodes if s.node.store.has(cid) and s.node.index.leases.has_block(key, cid)
            and (s.node.index.leases.expiry(key, me) or 0) > now]


class RenewalTests(TestCase):
    timeout = 120

    async def test_provisional_leases_become_full_ones(self) -> None:
        _net, nodes = await network(self, 4, gc_period=GC)
        origin = nodes[0]
        me = origin.node.identity.node_id
        path, _data = content(self, 2 * 64 * 1024)
        await put(origin, path)

        def full() -> bool:
            return all(b.node.index.leases.expiry(bytes(k), me) >= time.time() + 10 * PROVISIONAL
                       for b in nodes[1:] for (k,) in b.node.index.db.execute("SELECT DISTINCT key FROM holds"))

        await wait_for(full, "full leases of --lease-time on every holder", 30)
        # and the origin knows it: nothing due before half the lease time
        self.assertEqual(origin.node.index.placements.due(int(time.time()) + PROVISIONAL, 10), [])

    async def test_renewal_keeps_copies_past_many_lease_times_and_they_go_without_it(self) -> None:
        _net, nodes = await network(self, 4, gc_period=GC, lease_time=3)
        origin = nodes[0]
        origin.renewer.stop()
        origin.renewer.interval = 0.3  # rounds every 0.3 s instead of 60 s, for leases of 3 s
        origin.renewer.start()
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        cids = file_blocks(origin, stored.cap.root)
        self.assertEqual(copies(nodes[1:], cids), 3 * len(cids))
        me = origin.node.identity.node_id
        for b in nodes[1:]:  # leases of 3 s (provisional ones are never longer than --lease-time)
            for (k,) in b.node.index.db.execute("SELECT DISTINCT key FROM holds"):
                self.assertLessEqual(b.node.index.leases.expiry(bytes(k), me), time.time() + 4)
        start = time.monotonic()
        while time.monotonic() - start < 4 * 3:  # four lease times
            await deferLater(reactor, 0.2, lambda: None)
            self.assertEqual(copies(nodes[1:], cids), 3 * len(cids))
        origin.renewer.stop()  # the uploader stops renewing (gone for good): the copies go with the leases
        await wait_for(lambda: _held_anywhere(nodes[1:]) == [], "the holders to collect unrenewed copies", 30)

    async def test_a_holder_lost_for_good_is_replaced_and_nothing_is_collected_over_two_lease_times(self) -> None:
        clock = Clock()
        clock.advance(time.time())  # the lease clock starts at the wall time (uploads stamp their rows with it)
        # Failure detection and --repair-after run on the wall clock, leases on ``clock``, moved hours ahead: both
        # are short here, so that the lost holder is dead past --repair-after before its lease ends, as it is with
        # the defaults (10 minutes against 31 days).
        opts = {"gc_period": 30.0, "lease_time": HOUR, "clock": clock, "repair_after": 1.0, "settings": FAST}
        net, nodes = await network(self, 4, **opts)
        origin, gone, survivors = nodes[0], nodes[1], nodes[2:]
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 3)
        blocks = await placed_blocks(origin, stored)
        keys = {k for _c, k in blocks}
        await advance(clock, 60, nodes)  # the provisional leases become full ones
        for cid, key in blocks:
            self.assertEqual(len(holders_of(nodes[1:], origin, cid, key)), 3)
        await net.kill(gone)
        gone_id = gone.node.identity.node_id
        await wait_for(lambda: all(gone_id in s.peers.recently_dead(60) for s in nodes if s is not gone), "death")
        # A newcomer that outranks a surviving holder for one of the file's keys (ids are drawn until one does).
        rank = Rendezvous()
        for _ in range(100):
            newcomer_path = self.mktemp()
            datadir = prepare(newcomer_path)
            me = datadir.identity().node_id
            datadir.release()
            if any(rank.rank(k, [me, *(s.node.identity.node_id for s in survivors)])[0] == me for k in keys):
                break
        newcomer = net.start(newcomer_path, bootstrap=[net.bootstrap_to(origin, pinned=True)], **node_options(**opts))
        await wait_for(lambda: newcomer.node.identity.node_id in origin.peers.members(), "the newcomer to be a member")
        live = [origin, *survivors, newcomer]
        await advance(clock, 2 * HOUR + 10 * 60, live)
        for cid, key in blocks:  # N copies under a live lease, the lost holder's replaced by the newcomer
            self.assertEqual(sorted(s.node.node_id for s in holders_of(live[1:], origin, cid, key)),
                             sorted(s.node.node_id for s in live[1:]), f"holders of {cid}")
        for s in survivors:
            self.assertEqual(s.node.expiry.collected_blocks, 0, "a renewed copy was collected")
        # placed again by the origin (renewal found the key short) or by the holders' repair (the lost holder
        # found dead): which one comes first depends on how soon failure detection calls it dead
        self.assertGreater(origin.renewer.short + sum(s.repairer.blocks_sent for s in live), 0)

    async def test_a_holder_that_lost_a_block_gets_it_back_at_its_next_renewal(self) -> None:
        clock = Clock()
        clock.advance(time.time())
        _net, nodes = await network(self, 4, gc_period=30.0, lease_time=HOUR, clock=clock)
        origin = nodes[0]
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        await advance(clock, 60, nodes)
        holder = nodes[1]
        cid, key = next((c, k) for c, k in blocks if holder.node.store.has(c))
        os.remove(holder.node.store._path(cid))  # lost from its disk behind its index's back
        self.assertNotIn(holder, holders_of(nodes[1:], origin, cid, key))
        await advance(clock, HOUR, nodes)  # past the renewal at half the lease
        self.assertTrue(holder.node.store.has(cid), "the lost block was not sent again")
        for c, k in blocks:
            self.assertEqual(len(holders_of(nodes[1:], origin, c, k)), 3)


class BatchTests(TestCase):
    def test_announcing_leases_fit_a_header(self) -> None:
        from cas.base.cid import CID as C
        from cas.network.placement import manifest_key, stripe_key
        from cas.network.renewal import MAX_KEYS, _batches
        from cas.peer import frames
        from cas.peer.frames import Frame, encode

        stripes = [stripe_key(b"s" * 16, i) for i in range(100)]
        manifests = [manifest_key(C.of(b"%d" % i).to_bytes()) for i in range(2000)]
        announced = {k: [C.of(k + b"%d" % j) for j in range(64)] for k in stripes}
        announced.update({k: [C.of(k)] for k in manifests})
        keys = stripes + manifests
        batches = _batches(keys, announced)
        self.assertEqual([k for _i, b in batches for k in b], keys)
        for start, batch in batches:
            self.assertEqual(keys[start:start + len(batch)], batch)
            header = {"keys": batch, "time": 1, "cids": [[c.to_bytes() for c in announced[k]] for k in batch]}
            encode(Frame(frames.LEASE, 0, 1, header))  # raises past the 64 KiB header limit
        self.assertEqual([len(b) for _i, b in _batches(manifests * 2, None)], [MAX_KEYS] * 3 + [4000 - 3 * MAX_KEYS])


class RenewAfterTests(TestCase):
    def test_renewals_are_spread_over_the_last_eighth_before_half_way(self) -> None:
        from cas.store.placements import renew_after

        lease = 31 * 86400
        seen = {renew_after(lease) for _ in range(200)}
        self.assertTrue(all(lease // 2 - lease // 8 <= s <= lease // 2 for s in seen))
        self.assertGreater(len(seen), 100)
