"""A file's health over in-process networks of real nodes (cas/network/health.py, ``GET /v1/files/KEY/health``):
who holds each block under a live lease, asked from the origin, from a holder and from a node with no copy;
a killed holder and a released lease lower ``lowest_replicas``."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from cas.base.cid import CID
from cas.base.nodeid import format_node_id
from cas.network.placement import MANIFEST_DOMAIN, manifest_key
from cas.service import NodeService

from .test_release import GC
from .test_replication import content, network, placed_blocks, put


def expected_holders(nodes: list[NodeService], blocks: list, key: bytes) -> set[str]:
    cids = [c for c, k in blocks if k == key]
    return {format_node_id(s.node.identity.node_id) for s in nodes if all(s.node.store.has(c) for c in cids)}


class HealthTests(TestCase):
    timeout = 120

    async def test_every_holder_of_every_key_is_reported_from_any_node(self) -> None:
        _net, nodes = await network(self, 5, gc_period=GC)
        origin = nodes[0]
        path, _data = content(self, 6 * 64 * 1024)
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        keys = {k for _c, k in blocks}
        await origin.renewer.kick()  # full leases, so "our lease" is the 31-day one
        for asker in (origin, nodes[1], nodes[4]):
            h = await asker.node.health(stored.cap.root)
            self.assertEqual((h["root"], h["blocks"], h["replicas_wanted"]), (str(stored.cap.root), len(blocks), 3))
            self.assertEqual(h["lowest_replicas"], 3, asker.node.node_id)
            self.assertEqual(len(h["keys"]), len(keys))
            self.assertEqual(h["unreachable"], [])
            for k in h["keys"]:
                if k["kind"] == "manifest":
                    key = manifest_key(CID.parse(k["cid"]).to_bytes())
                else:
                    key = next(kk for kk in keys if not kk.startswith(MANIFEST_DOMAIN)
                               and int.from_bytes(kk[-8:], "big") == k["stripe"])
                self.assertIn(key, keys)
                # every node with the blocks (the origin's own copy too, unleased), the asker when it holds them
                # for the origin under a lease
                self.assertEqual({x["node_id"] for x in k["holders"]},
                                 expected_holders([s for s in nodes if s is not asker or s is not origin], blocks, key))
                self.assertEqual(k["replicas"], 3)
                for x in k["holders"]:
                    leased = 0 if x["node_id"] == origin.node.node_id else k["blocks"]
                    self.assertEqual((x["blocks"], x["leased"]), (k["blocks"], leased))
                    if asker is origin:
                        self.assertGreater(x["our_lease_expires"], h["checked_at"] + 30 * 86400)
                    else:
                        self.assertIsNone(x["our_lease_expires"])
        self.assertEqual((await origin.node.health(stored.cap.root))["local_blocks"], len(blocks))
        self.assertEqual((await nodes[4].node.health(stored.cap.root))["local_blocks"],
                         sum(1 for c, _k in blocks if nodes[4].node.store.has(c)))

    async def test_a_killed_holder_and_a_released_lease_lower_the_count(self) -> None:
        net, nodes = await network(self, 4, gc_period=GC)
        origin = nodes[0]
        path, _data = content(self, 2 * 64 * 1024)
        stored = await put(origin, path)
        await net.kill(nodes[3])
        h = await origin.node.health(stored.cap.root)
        self.assertEqual(h["lowest_replicas"], 2)
        self.assertEqual(h["unreachable"], [format_node_id(nodes[3].node.identity.node_id)])
        # The holder still has the blocks, but nobody's lease: they do not count.
        holder = nodes[1]
        me = origin.node.identity.node_id
        keys = [bytes(k) for (k,) in holder.node.index.db.execute("SELECT DISTINCT key FROM holds")]
        self.assertEqual(holder.node.release(me, keys), [True] * len(keys))
        h = await origin.node.health(stored.cap.root)
        self.assertEqual(h["lowest_replicas"], 1)
        mine = [x for k in h["keys"] for x in k["holders"]
                if x["node_id"] == format_node_id(holder.node.identity.node_id)]
        self.assertTrue(mine and all(x["blocks"] > 0 and x["leased"] == 0 for x in mine))
