"""Pins over in-process networks of real nodes (cas/node/pinning.py): a pin by another node keeps a file alive
after the uploader forgot it and after the uploader's node is gone, with or without a local copy; unpin lets the
copies go; rm of a pinned file says to unpin."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cas.base.errors import FileNotFound, Pinned, PinRefused
from cas.service import NodeService

from .test_network import FAST, wait_for
from .test_release import GC, copies, file_blocks
from .test_repair import fast_repair
from .test_replication import content, get, network, node_options, placed_blocks, put


def renew_fast(s, every: float = 0.3) -> None:  # type: ignore[no-untyped-def]
    """Renewal rounds every ``every`` s instead of 60 s, for leases of a few seconds."""
    s.renewer.stop()
    s.renewer.interval = every
    s.renewer.start()


class PinTests(TestCase):
    timeout = 120

    async def test_a_pin_by_a_holder_keeps_a_file_after_the_uploader_forgot_it_and_is_gone(self) -> None:
        net, nodes = await network(self, 4, gc_period=GC, lease_time=3)
        await self.pinned_file_survives(net, nodes, nodes[3], holder=True)

    async def test_a_pin_by_a_node_with_no_copy_keeps_a_file_after_the_uploader_forgot_it_and_is_gone(self) -> None:
        net, nodes = await network(self, 4, gc_period=GC, lease_time=3)
        await self.pinned_file_survives(net, nodes, None, holder=False)

    async def pinned_file_survives(self, net: Any, nodes: list[NodeService], pinner: NodeService | None,
                                   holder: bool) -> None:
        origin = nodes[0]
        for s in nodes:
            renew_fast(s)
        path, data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        cids = file_blocks(origin, stored.cap.root)
        holding = [s for s in nodes[1:] if any(s.node.store.has(c) for c in cids)]
        if pinner is None:  # a node that joins after the put: it holds nothing of the file
            pinner = net.start(bootstrap=[net.bootstrap_to(origin, pinned=True)], **node_options(
                gc_period=GC, lease_time=3))
            renew_fast(pinner)
            await wait_for(lambda: len(pinner.peers.members()) == len(nodes), "the newcomer's membership")
        # 3 nodes besides the origin hold everything: a pinner among them leases its copy to itself
        self.assertEqual(pinner in holding, holder)
        with self.assertRaises(PinRefused):  # the uploader renews its own file already
            await origin.node.pin(stored.cap.root)
        answer = await pinner.node.pin(stored.cap.root)  # the root id is enough
        self.assertEqual((answer["pinned"], answer["local"], answer["lowest_holders"]), (True, False, 3))
        self.assertEqual(pinner.node.pinned_files()["pins"][0]["root"], str(stored.cap.root))
        await origin.node.forget(stored.cap.root)  # the uploader's leases go ...
        await net.kill(origin)  # ... and so does the uploader
        for _ in range(4 * 3 * 5):  # four lease times (3 s): the pinner's renewals keep every copy
            await deferLater(reactor, 0.2, lambda: None)
            self.assertEqual(copies(holding, cids), 3 * len(cids))
        self.assertEqual(await get(pinner, stored), data)
        with self.assertRaises(Pinned):
            pinner.node.forget(stored.cap.root)
        answer = await pinner.node.unpin(stored.cap.root)
        self.assertEqual(answer["unpinned"], True)
        # every lease released at once, the pinner's own on its copy too (the leases here last 3 s: a release
        # left pending would not show in the copies below)
        self.assertEqual((len(answer["released_on"]), answer["pending"]), (len(holding), []))
        await wait_for(lambda: copies(holding, cids) == 0, "the holders to collect the unpinned copies", 30)
        with self.assertRaises(FileNotFound):
            pinner.node.unpin(stored.cap.root)

    async def test_a_local_pin_keeps_a_copy_and_lost_copies_come_back_under_its_lease(self) -> None:
        # failure detection and --repair-after short, like the 3 s leases (a dead holder is replaced once it has
        # been dead --repair-after; with the defaults that is long before a 31-day lease runs out)
        net, nodes = await network(self, 6, gc_period=GC, lease_time=3, repair_after=1.0, settings=FAST)
        fast_repair(nodes)
        origin, pinner = nodes[0], nodes[5]
        for s in nodes:
            renew_fast(s)
        path, data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        answer = await pinner.node.pin(stored.cap.root, local=True)
        self.assertEqual((answer["local"], answer["blocks"]), (True, len(blocks)))
        self.assertTrue(all(pinner.node.store.has(c) for c, _k in blocks))
        await origin.node.forget(stored.cap.root)
        await net.kill(origin)
        await pinner.node.collect_garbage()
        self.assertTrue(all(pinner.node.store.has(c) for c, _k in blocks), "the local copy was collected")
        self.assertEqual(await get(pinner, stored), data)
        # A holder dies for good: the blocks it held come back on 3 live nodes, under the pinner's lease (the other
        # holders repair and carry it, or the pinner, where no node of the rank holds a block, sends its copy).
        lost = next(s for s in nodes[1:5] if any(s.node.store.has(c) for c, _k in blocks))
        await net.kill(lost)
        live = [s for s in nodes[1:] if s is not lost]  # the pinner too, where it holds blocks under its lease
        me = pinner.node.identity.node_id

        def placed() -> bool:
            now = pinner.node.clock.seconds()
            return all(sum(1 for s in live if s.node.store.has(c) and (s.node.index.leases.expiry(k, me) or 0) > now)
                       >= 3 for c, k in blocks)

        await wait_for(placed, "every block on 3 live holders under the pinner's lease", 60)
        self.assertGreater(sum(s.repairer.blocks_sent for s in live), 0)
        await pinner.node.unpin(stored.cap.root)
        await pinner.node.collect_garbage()
        for c, _k in blocks:  # the local copy goes (a block the pinner holds for another node may stay)
            if not pinner.node.index.is_held(c):
                self.assertFalse(pinner.node.store.has(c))
