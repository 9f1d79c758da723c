"""Lease renewal over in-process networks of real nodes (cas/network/renewal.py): an upload's provisional leases
become full ones once the file is recorded, renewal keeps the copies past many lease times, and without it they
go."""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cas.store.placements import PROVISIONAL

from .test_network import wait_for
from .test_release import GC, _held_anywhere, copies, file_blocks
from .test_replication import content, network, put


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
