"""Release over in-process networks of real nodes (cas/network/release.py, ``Node.forget``) and the version-2
lease rules on the wire: ``cas rm`` frees every holder's copies, a holder that was down gets its release when it
is back, a failed upload releases what it placed, and peers cannot lease or release for others."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from cas.base.cid import CID
from cas.base.nodeid import format_node_id
from cas.peer import frames
from cas.peer.connection import RemoteError
from cas.service import NodeService

from .test_network import wait_for
from .test_replication import content, network, put

GC = 0.5  # seconds between collection passes on these nodes


def copies(nodes: list[NodeService], cids: set[CID]) -> int:
    """Blocks of ``cids`` held for others on ``nodes``."""
    return sum(1 for s in nodes for c in cids if s.node.store.has(c) and s.node.index.is_held(c))


def file_blocks(origin: NodeService, root: CID) -> set[CID]:
    rows = origin.node.index.db.execute("SELECT cid FROM refs WHERE owner = ?", (f"file:{root}",))
    return {CID.parse(c) for (c,) in rows}


class ReleaseTests(TestCase):
    timeout = 120

    async def test_rm_frees_every_holders_copies(self) -> None:
        _net, nodes = await network(self, 4, gc_period=GC)
        origin = nodes[0]
        path, _data = content(self, 5 * 64 * 1024)
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 3)
        cids = file_blocks(origin, stored.cap.root)
        self.assertEqual(copies(nodes[1:], cids), 3 * len(cids))
        held = [s.node.store.used() for s in nodes[1:]]  # the holders keep nothing else
        for s, n in zip(nodes[1:], held):  # GET /v1/status breaks a holder's space down
            storage = s.node.status()["storage"]
            self.assertEqual((storage["own"], storage["held"], storage["awaiting_collection"]), (0, n, 0))
            self.assertGreater(s.node.status()["leases"]["granted"], 0)
        storage = origin.node.status()["storage"]
        self.assertEqual((storage["own"], storage["held"]), (storage["used"], 0))
        me = origin.node.identity.node_id
        for s in nodes[1:]:  # every copy is under a lease of the origin's --lease-time
            for key in {k for (k,) in s.node.index.db.execute("SELECT DISTINCT key FROM holds")}:
                self.assertIsNotNone(s.node.index.leases.expiry(bytes(key), me))
        answer = await origin.node.forget(stored.cap.root)
        self.assertEqual(sorted(answer["released_on"]), sorted(format_node_id(s.node.identity.node_id)
                                                               for s in nodes[1:]))
        self.assertEqual(answer["pending"], [])
        self.assertGreater(answer["local_bytes_freed"], 0)
        for s, n in zip(nodes[1:], held):  # released, not yet collected (unless a pass already ran)
            storage = s.node.status()["storage"]
            self.assertEqual(storage["held"], 0)
            self.assertIn(storage["awaiting_collection"], (0, n) if n else (0,))
        await wait_for(lambda: copies(nodes[1:], cids) == 0, "every holder to collect the file's blocks", 30)
        for s in nodes[1:]:
            self.assertEqual(s.node.held_bytes(), 0)
            self.assertEqual(s.node.status()["storage"]["awaiting_collection"], 0)
        self.assertEqual(origin.node.index.count_releases(), 0)

    async def test_a_holder_down_at_rm_gets_its_release_when_back(self) -> None:
        net, nodes = await network(self, 4, gc_period=GC)
        origin, away = nodes[0], nodes[1]
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        cids = file_blocks(origin, stored.cap.root)
        away_path = away.node.datadir.path
        await net.kill(away)
        answer = await origin.node.forget(stored.cap.root)
        self.assertEqual(answer["pending"], [format_node_id(away.node.identity.node_id)])
        self.assertEqual(len(answer["released_on"]), 2)
        self.assertGreater(origin.node.index.count_releases(), 0)  # queued, durably
        back = net.start(away_path, bootstrap=[net.bootstrap_to(origin, pinned=True)], settings=away.peers.settings,
                         segment_size=64 * 1024, fanout=40, gc_period=GC)
        await wait_for(lambda: origin.node.index.count_releases() == 0, "the queued release to be delivered", 60)
        await wait_for(lambda: copies([back], cids) == 0, "the returned holder to collect", 30)

    async def test_a_failed_upload_releases_what_it_placed(self) -> None:
        _net, nodes = await network(self, 4, gc_period=GC)
        origin = nodes[0]
        up = origin.node.upload("cut short")
        up.write(b"x" * (5 * 64 * 1024))
        await wait_for(lambda: len(_held_anywhere(nodes[1:])) > 0, "blocks on holders", 30)
        up.abort("the client went away")
        try:
            await up.done
        except Exception:
            pass
        await wait_for(lambda: _held_anywhere(nodes[1:]) == [], "holders to drop the failed upload's blocks", 30)

    async def test_lease_and_release_rules_on_the_wire(self) -> None:
        _net, nodes = await network(self, 3, gc_period=GC)
        a, b, c = nodes
        path, _data = content(self, 64 * 1024)
        await put(a, path)
        key = bytes(a.node.index.db.execute("SELECT key FROM owner_keys LIMIT 1").fetchone()[0])
        b_id = b.node.identity.node_id
        self.assertIsNotNone(b.node.index.leases.expiry(key, a.node.identity.node_id))
        # c cannot release a's lease: RELEASE names only c's own (it has none)
        r = await c.peers.request(b_id, frames.RELEASE, {"keys": [key]})
        self.assertEqual(r.header["released"], b"\x00")
        self.assertIsNotNone(b.node.index.leases.expiry(key, a.node.identity.node_id))
        # c may lease it (b holds blocks under it), then release its own
        r = await c.peers.request(b_id, frames.LEASE, {"keys": [key, b"cas/stripe/v1nothing"], "time": 60})
        self.assertEqual((r.header["time"], r.header["granted"]), (60, b"\x80"))
        r = await c.peers.request(b_id, frames.RELEASE, {"keys": [key]})
        self.assertEqual(r.header["released"], b"\x80")
        # announced block ids (LEASE cids): one list per key, of block ids
        for cids, why in (([], "one per key"), ([b"x"], "one per key"), ([[b"x"]], "not a cas block id")):
            with self.assertRaises(RemoteError) as e:
                await c.peers.request(b_id, frames.LEASE, {"keys": [key], "time": 60, "cids": cids})
            self.assertIn(why, str(e.exception))
        # a version-2 PUT_BLOCK without a lease is refused; so is a key in this node's own legacy space
        block = b"unleased block"
        for header, why in (({"cid": CID.of(block).to_bytes(), "key": key}, "needs a key and a lease"),
                            ({"cid": CID.of(block).to_bytes(), "key": b"cas/legacy/v1/x", "lease": 60}, "legacy")):
            with self.assertRaises(RemoteError) as e:
                await c.peers.request(b_id, frames.PUT_BLOCK, header, block)
            self.assertIn(why, str(e.exception))
        self.assertFalse(b.node.store.has(CID.of(block)))
        # over the peer's share: refused
        b.node.peer_share = 10
        with self.assertRaises(RemoteError) as e:
            await c.peers.put_block(b_id, CID.of(block), block, key=key, lease=60)
        self.assertIn("over_quota", str(e.exception))


def _held_anywhere(nodes: list[NodeService]) -> list[CID]:
    return [CID.parse(c) for s in nodes for (c,) in s.node.index.db.execute("SELECT cid FROM holds")]



class CrashTests(TestCase):
    timeout = 120

    async def test_orphans_of_an_upload_cut_by_a_crash_are_released_at_the_next_start(self) -> None:
        net, nodes = await network(self, 4, gc_period=GC)
        origin = nodes[0]
        up = origin.node.upload("never finished")
        up.write(b"y" * (4 * 64 * 1024))  # three segments placed (the last waits for more); never finished
        await wait_for(lambda: len(_held_anywhere(nodes[1:])) >= 9, "blocks on holders", 30)
        path, settings = origin.node.datadir.path, origin.peers.settings
        await net.kill(origin)  # no record of the file: its placements are the only trace
        back = net.start(path, bootstrap=[net.bootstrap_to(nodes[1], pinned=True)], settings=settings,
                         segment_size=64 * 1024, fanout=40, gc_period=GC)
        await wait_for(lambda: back.node.index.count_releases() == 0 and _held_anywhere(nodes[1:]) == [],
                       "the holders to drop the orphans", 60)
