"""Files over in-process networks of real nodes on 127.0.0.1: placement, replication, retrieval.

Small segments (64 KiB) make a few-MiB file span several stripes of 64 blocks; a small manifest fanout gives
it manifest nodes too, so every kind of block is placed. Conditions are polled on the real reactor.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cas.base.cid import CID
from cas.base.errors import BlockNotFound, TamperedData, TooFewReplicas
from cas.content.manifest import SALT_SIZE, data_links, decode_node, decode_root
from cas.network.placement import STRIPE_BLOCKS, Rendezvous, manifest_key, stripe_key
from cas.network.replication import Replicator
from cas.network.retrieval import RANKS_KEPT, BlockTimes, Retriever, checked_then
from cas.node import core as node_module
from cas.node.upload import StoredFile, Upload
from cas.peer.connection import SEND_WINDOW, Response
from cas.peer.peers import PeerManager, PeerSettings
from cas.service import NodeService

from .test_network import Net, ids, members, wait_for
from .util import Collector, make_node

SEG = 64 * 1024
MARKER = b"PLAINTEXT-MARKER-0123456789"


# Fast gossip, but patient dials and failure detection: these tests are about files, and a loaded machine
# must not make a healthy node look dead (which rightly changes where blocks go).
PATIENT = PeerSettings(
    gossip_interval=0.2, probe_interval=0.5, dead_after=30.0, backoff_base=0.1, backoff_max=1.0,
    connect_timeout=15.0, idle_close=120.0,
)


def node_options(**kw: Any) -> dict[str, Any]:
    return {"segment_size": SEG, "fanout": 40, "settings": PATIENT, **kw}


async def network(tc: TestCase, n: int, **kw: Any) -> tuple[Net, list[NodeService]]:
    net = Net(tc)
    nodes = [net.start(**node_options(**kw))]
    for i in range(1, n):
        nodes.append(net.start(bootstrap=[net.bootstrap_to(nodes[i - 1], pinned=True)], **node_options(**kw)))
    everyone = ids(nodes)
    await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
    return net, nodes


def content(tc: TestCase, size: int) -> tuple[str, bytes]:
    """A file whose every 4 KiB holds the marker, so any plaintext on a holder's disk would show."""
    unit = MARKER + os.urandom(4096 - len(MARKER))
    data = (unit * (size // 4096 + 1))[:size]
    path = tc.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return path, data


async def put(s: NodeService, path: str, **kw: Any) -> StoredFile:
    return await s.node.put_path(path, **kw)


async def get(s: NodeService, stored: StoredFile) -> bytes:
    f = await s.node.open(stored.cap)
    sink = Collector()
    await s.node.download(f).start(sink)
    return sink.data


async def placed_blocks(s: NodeService, stored: StoredFile) -> list[tuple[CID, bytes]]:
    """Every block of the file with its placement key: data blocks, manifest nodes, the root."""
    store = s.node.store
    root = decode_root(store.get(stored.cap.root))
    out = [(stored.cap.root, manifest_key(stored.cap.root.to_bytes()))]

    async def load(cid: CID) -> Any:
        out.append((cid, manifest_key(cid.to_bytes())))
        return decode_node(store.get(cid), root.segment_size)

    async for i, link in data_links(root, load):
        out.append((link.cid, stripe_key(root.salt, i // STRIPE_BLOCKS)))
    return out


def holders(nodes: list[NodeService], cid: CID) -> set[bytes]:
    return {s.node.identity.node_id for s in nodes if s.node.store.has(cid)}


def by_id(nodes: list[NodeService]) -> dict[bytes, NodeService]:
    return {s.node.identity.node_id: s for s in nodes}


class ReplicationTests(TestCase):
    timeout = 120

    async def test_put_places_every_block_on_three_holders_and_any_node_reads_it(self) -> None:
        net, nodes = await network(self, 6)
        origin = nodes[0]
        me = origin.node.identity.node_id
        others = [s.node.identity.node_id for s in nodes[1:]]

        def stripe_sets(salt: bytes) -> set[frozenset[bytes]]:
            return {frozenset(origin.node.placement.holders(stripe_key(salt, s), others, 3)) for s in range(3)}

        # 3 stripes over 10 possible holder sets share one set about 1 time in 100: with random salts this test
        # failed that often. The first salt (counting up) under which they spread makes it deterministic.
        salt = next(salt for i in range(1000) if len(stripe_sets(salt := i.to_bytes(SALT_SIZE, "big"))) > 1)
        self.patch(node_module, "Upload", lambda **kw: Upload(**{**kw, "salt": salt}))
        path, data = content(self, 130 * SEG + 1234)  # 131 data blocks: 3 stripes; 4 manifest nodes
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 3)
        blocks = await placed_blocks(origin, stored)
        self.assertEqual(len(blocks), 1 + 4 + 131)
        for cid, key in blocks:
            expected = set(origin.node.placement.holders(key, others, 3))
            self.assertEqual(holders(nodes, cid), expected | {me}, f"holders of {cid}")
        # The stripes spread over different holder sets (rendezvous per stripe, not per file).
        self.assertEqual(decode_root(origin.node.store.get(stored.cap.root)).salt, salt)
        self.assertGreater(len(stripe_sets(salt)), 1)
        # Holders keep ciphertext only, recorded as held for the origin.
        for s in nodes[1:]:
            for dirpath, _dirs, files in os.walk(os.path.join(s.node.datadir.path, "blocks")):
                for name in files:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        self.assertNotIn(MARKER, f.read())
            for cid, key in blocks:
                if s.node.store.has(cid):
                    self.assertEqual([p for p, _f, _l in s.node.index.holds_of(cid)], [me.hex()])
                    self.assertEqual(s.node.index.hold_keys(cid), {key})  # the placement key came with it
        # Every other node returns identical bytes (from the holders: they have no file record). A block a node
        # does not have goes straight to the network: its local store is read only for the blocks it holds.
        for s in nodes[1:]:
            local_reads: list[CID] = []
            real_get = s.node.store.get
            self.patch(s.node.store, "get", lambda cid, real_get=real_get, seen=local_reads: (seen.append(cid), real_get(cid))[1])
            self.assertEqual(await get(s, stored), data)
            mine = {cid for cid, _key in blocks if s.node.store.has(cid)}
            self.assertTrue(set(local_reads) <= mine, "a block this node lacks was looked up in its store")
            self.assertEqual(len(set(local_reads)), len(mine))

    async def test_file_survives_the_origin_and_two_holders_of_a_stripe(self) -> None:
        net, nodes = await network(self, 6)
        origin = nodes[0]
        path, data = content(self, 20 * SEG)  # one stripe
        stored = await put(origin, path)
        salt = decode_root(origin.node.store.get(stored.cap.root)).salt
        others = [s.node.identity.node_id for s in nodes[1:]]
        stripe_holders = origin.node.placement.holders(stripe_key(salt, 0), others, 3)
        victims = [origin] + [by_id(nodes)[h] for h in stripe_holders[:2]]
        for v in victims:
            await net.kill(v)
        survivors = [s for s in nodes if s not in victims]
        for s in survivors:
            self.assertEqual(await get(s, stored), data)

    async def test_download_survives_losing_holders_mid_stream(self) -> None:
        """Holders die while a reader streams the file from them: it finishes from the one copy left."""
        net, nodes = await network(self, 6)
        origin = nodes[0]
        path, data = content(self, 48 * SEG)  # one stripe: the same 3 holders for every data block
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        data_cid = blocks[-1][0]
        holding = [s for s in nodes[1:] if s.node.store.has(data_cid)]
        [reader, *_] = [s for s in nodes[1:] if s not in holding]
        await net.kill(origin)  # its copies too: only the 3 holders have the data blocks now
        f = await reader.node.open(stored.cap)
        kills: list[Deferred] = []

        class Killing(Collector):
            def write(self, chunk: bytes) -> None:
                super().write(chunk)
                if len(self.chunks) in (6, 20):  # two of the three holders go, one after the other
                    kills.append(ensureDeferred(net.kill(holding[len(kills)])))

        sink = Killing()
        await reader.node.download(f).start(sink)
        self.assertEqual(len(kills), 2)
        for k in kills:
            await k
        self.assertEqual(sink.data, data)

    async def test_corrupt_copy_on_a_holder_is_detected_and_read_elsewhere(self) -> None:
        net, nodes = await network(self, 5)
        origin = nodes[0]
        path, data = content(self, 8 * SEG)
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        cid, key = blocks[1]  # a data block
        # The reader is the one node without a copy: it must fetch the block from the network.
        [reader] = [s for s in nodes[1:] if not s.node.store.has(cid)]
        # Corrupt it on every holder the reader would ask first, except one.
        first = reader.node.placement.holders(key, [i for i in ids(nodes) if i != reader.node.identity.node_id], 3)
        for h in first[:2]:
            with open(by_id(nodes)[h].node.store._path(cid), "r+b") as f:
                f.write(b"\xff" * 16)
        asked: list[bytes] = []
        real = reader.node.peers.get_block

        def get_block(node_id: bytes, c: CID, *args: Any, **kw: Any) -> Any:
            if c == cid:
                asked.append(node_id)
            return real(node_id, c, *args, **kw)

        self.patch(reader.node.peers, "get_block", get_block)
        self.assertEqual(await get(reader, stored), data)
        self.assertIn(first[0], asked)  # a corrupt copy was sent, found out, and the block read elsewhere
        self.assertIn(first[2], asked)

    async def test_reader_prefers_the_faster_holders(self) -> None:
        """A holder that takes 1 s per block is left alone once it has shown it: the reader asks the holders
        that answer sooner. Rotation alone would ask it for a third of the blocks."""
        net, nodes = await network(self, 5)
        origin = nodes[0]
        path, data = content(self, 40 * SEG)  # 40 blocks, one stripe: the same 3 holders for every block
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        data_cids = {cid for cid, key in blocks[1:] if key != manifest_key(cid.to_bytes())}
        self.assertEqual(len(data_cids), 40)
        [reader] = [s for s in nodes[1:] if not s.node.store.has(next(iter(data_cids)))]
        senders = [s for s in nodes if s is not reader]  # every one of them has every block (the origin too)
        served = {id(s): 0 for s in senders}
        key = stripe_key(decode_root(origin.node.store.get(stored.cap.root)).salt, 0)
        first = reader.node.placement.rank(key, [s.node.identity.node_id for s in senders])[0]
        [slow] = [s for s in senders if s.node.identity.node_id == first]  # one the reader asks
        for s in senders:
            real = s.node.serve_block

            def serve(cid: CID, s: NodeService = s, real: Any = real) -> Any:
                if cid in data_cids:
                    served[id(s)] += 1
                    if s is slow:
                        return deferLater(reactor, 1.0, real, cid)
                return real(cid)

            self.patch(s.node, "serve_block", serve)
        self.assertEqual(await get(reader, stored), data)
        self.assertEqual(sum(served.values()), 40)
        # Before it answered once, the slow holder had its share of the first window (rotation); after, little.
        self.assertLessEqual(served[id(slow)], 6, served)

    async def test_over_quota_holders_are_skipped(self) -> None:
        net = Net(self)
        small = net.start(quota=2 * SEG, **node_options())
        nodes = [small] + [net.start(bootstrap=[net.bootstrap_to(small, pinned=True)], **node_options()) for _ in range(4)]
        everyone = ids(nodes)
        await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
        origin = nodes[1]
        path, data = content(self, 40 * SEG)
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 3)  # 4 other nodes, one of them full: the other 3
        self.assertLessEqual(small.node.held_bytes(), 2 * SEG)
        for cid, _key in await placed_blocks(origin, stored):
            self.assertEqual(len(holders(nodes, cid) - {origin.node.identity.node_id}), 3)
        self.assertEqual(await get(small, stored), data)

    async def test_fewer_peers_than_replicas_reports_the_count(self) -> None:
        net, nodes = await network(self, 3)
        path, data = content(self, 3 * SEG)
        stored = await put(nodes[0], path)
        self.assertEqual(stored.replicas, 2)
        for cid, _key in await placed_blocks(nodes[0], stored):
            self.assertEqual(len(holders(nodes, cid)), 3)
        with self.assertRaises(TooFewReplicas) as e:
            nodes[0].node.upload("x", min_replicas=3)
        self.assertIn("knows 2 other node(s)", str(e.exception))

    async def test_min_replicas_fails_the_put_when_holders_refuse(self) -> None:
        net = Net(self)
        nodes = [net.start(**node_options())]
        nodes += [net.start(bootstrap=[net.bootstrap_to(nodes[0], pinned=True)], quota=SEG, **node_options()) for _ in range(3)]
        everyone = ids(nodes)
        await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
        path, _data = content(self, 10 * SEG)
        with self.assertRaises(TooFewReplicas):
            await put(nodes[0], path, min_replicas=2)
        self.assertEqual(nodes[0].node.files(), [])  # nothing recorded: no key points at missing blocks

    async def test_holder_that_stops_reading_is_replaced_within_the_deadline(self) -> None:
        # 6 nodes and a 4 s deadline: on a loaded machine a healthy holder may miss a short deadline too, and
        # is then replaced like the stalled one; spare nodes keep the expected count at 3.
        net, nodes = await network(self, 6, block_deadline=4.0)
        origin = nodes[0]
        me = origin.node.identity.node_id
        path, data = content(self, 200 * SEG)  # 12.5 MiB: more than the send window
        # The first holder of stripe 0 stops reading from the origin once the upload starts.
        up_salt = os.urandom(16)
        others = [s.node.identity.node_id for s in nodes[1:]]
        stalled_id = origin.node.placement.holders(stripe_key(up_salt, 0), others, 1)[0]
        stalled = by_id(nodes)[stalled_id]
        conn = await origin.node.peers.connect(stalled_id)
        # The dialler is accepted first (TLS 1.3): wait until the other side has accepted it too.
        await wait_for(lambda: me in stalled.peers.connections, "the holder to accept the connection")
        theirs = stalled.peers.connections[me]
        theirs.transport.pauseProducing()  # its socket is no longer read
        start = reactor.seconds()
        stored = await put_with_salt(origin, path, up_salt)
        took = reactor.seconds() - start
        self.assertEqual(stored.replicas, 3)
        self.assertGreaterEqual(took, 4.0)  # it did wait for the stalled holder, one deadline
        self.assertLess(took, 40.0)  # and not more: it was replaced, not waited for block after block
        self.assertLessEqual(conn._unacked, SEND_WINDOW)  # what the origin keeps for it stayed bounded
        # Stripe 0's blocks after the stall went to the next node in rank instead.
        salt_key = stripe_key(up_salt, 0)
        blocks = await placed_blocks(origin, stored)
        stripe0 = [cid for cid, key in blocks if key == salt_key]
        # (The stalled node may get a copy later, from the origin's repair over a new connection once keepalive
        # closed the stalled one: on a loaded machine some blocks end the upload short. What counts is that 3
        # other nodes hold each.)
        for c in stripe0[-10:]:
            self.assertGreaterEqual(len(holders(nodes, c) - {me, stalled_id}), 3)
        theirs.transport.resumeProducing()
        self.assertEqual(await get(nodes[2], stored), data)


async def put_with_salt(s: NodeService, path: str, salt: bytes) -> StoredFile:
    """``put_path`` with a placement salt chosen by the test (so it knows the holders beforehand)."""
    from twisted.web.client import FileBodyProducer

    up = s.node.upload(os.path.basename(path))
    up.salt = salt
    with open(path, "rb") as f:
        producer = FileBodyProducer(f, readSize=SEG)
        up.registerProducer(producer, True)
        await producer.startProducing(up)
        up.unregisterProducer()
    return await up.finish()


class OldHolderTests(TestCase):
    timeout = 60

    async def test_a_version_1_holder_is_not_counted_as_a_replica(self) -> None:
        """A node of protocol version 1 keeps what it is sent for its own --max-lease-time and cannot be renewed
        or released: the upload replaces it by the next in rank and counts only leased copies."""
        net = Net(self)
        origin = net.start(**node_options())
        old = net.start(bootstrap=[net.bootstrap_to(origin, pinned=True)], **node_options())
        old.peers.versions = (1,)  # an old release (set before its first connection completes its HELLO)
        others = [net.start(bootstrap=[net.bootstrap_to(origin, pinned=True)], **node_options()) for _ in range(2)]
        nodes = [origin, old, *others]
        everyone = ids(nodes)
        await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
        self.assertEqual(origin.peers.version_of(old.node.identity.node_id), 1)
        path, data = content(self, 3 * SEG)
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 2)  # 3 nodes besides the origin, one of them old
        blocks = await placed_blocks(origin, stored)
        # It was asked (3 candidates), acknowledged without the lease, and was dropped from the upload ...
        self.assertTrue(any(old.node.store.has(c) for c, _k in blocks))
        health = await origin.node.health(stored.cap.root)
        self.assertEqual(health["lowest_replicas"], 2)  # ... but its copies are under no lease of the origin
        self.assertEqual(await get(others[0], stored), data)



class TopUpTests(TestCase):
    """Blocks an upload left short of N are repaired as members join (cas/network/repair.py): by the nodes of
    the rank that hold them, and by the origin only where none does."""

    timeout = 120

    async def test_missed_replicas_are_placed_when_nodes_join(self) -> None:
        from .test_repair import fast_repair

        net, nodes = await network(self, 2, repair_after=1.0)
        fast_repair(nodes)
        origin = nodes[0]
        path, data = content(self, 70 * SEG)  # two stripes
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 1)  # one other node: it holds everything
        blocks = await placed_blocks(origin, stored)
        self.assertEqual(origin.node.index.count_underplaced(), len(blocks))
        # Three more nodes join: each block gets its 3 holders, the ones a reader computes first.
        for _ in range(3):
            nodes.append(net.start(bootstrap=[net.bootstrap_to(origin, pinned=True)], **node_options(repair_after=1.0)))
        fast_repair(nodes[2:])
        everyone = ids(nodes)
        await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
        me = origin.node.identity.node_id
        await wait_for(lambda: origin.node.index.count_underplaced() == 0, "the repair to finish", 60)
        for cid, _key in blocks:
            self.assertGreaterEqual(len(holders(nodes, cid) - {me}), 3, f"holders of {cid}")
        # the node that held every block sent the new copies; the origin sent none (a rank node held each)
        self.assertEqual(origin.repairer.topped_up, 0)
        self.assertGreater(nodes[1].repairer.blocks_sent, 0)
        # With the origin and the first node gone, the newcomers alone return the file.
        first = nodes[1]
        await net.kill(origin)
        await net.kill(first)
        self.assertEqual(await get(nodes[2], stored), data)

    async def test_blocks_no_node_holds_are_sent_by_the_origin(self) -> None:
        from .test_repair import fast_repair

        net, nodes = await network(self, 1, repair_after=1.0)
        origin = nodes[0]
        path, data = content(self, 3 * SEG)
        stored = await put(origin, path)
        self.assertEqual(stored.replicas, 0)  # nobody to send to
        blocks = await placed_blocks(origin, stored)
        self.assertEqual(origin.node.index.count_underplaced(), len(blocks))
        for _ in range(3):
            nodes.append(net.start(bootstrap=[net.bootstrap_to(origin, pinned=True)], **node_options(repair_after=1.0)))
        fast_repair(nodes)
        everyone = ids(nodes)
        await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
        await wait_for(lambda: origin.node.index.count_underplaced() == 0, "the origin's repair", 60)
        me = origin.node.identity.node_id
        for cid, key in blocks:
            self.assertEqual(len(holders(nodes, cid) - {me}), 3, f"holders of {cid}")
            for s in nodes[1:]:  # under the origin's lease, as an upload's copies
                self.assertIsNotNone(s.node.index.leases.expiry(key, me))
        # the origin sent each block at least once (to the first node of its rank that joined); the copies after
        # that may come from it or from that node's repair (a rank node holds the block by then)
        self.assertGreaterEqual(origin.repairer.topped_up, len(blocks))
        health = await origin.node.health(stored.cap.root)  # what cas status KEY shows
        self.assertEqual(health["lowest_replicas"], 3)
        await net.kill(origin)
        self.assertEqual(await get(nodes[1], stored), data)

    async def test_forgotten_file_is_not_topped_up(self) -> None:
        net, nodes = await network(self, 2)
        origin = nodes[0]
        path, _data = content(self, 3 * SEG)
        stored = await put(origin, path)
        self.assertGreater(origin.node.index.count_underplaced(), 0)
        await origin.node.forget(stored.cap.root)
        await origin.repairer.kick()
        self.assertEqual(origin.node.index.count_underplaced(), 0)
        self.assertEqual(origin.repairer.topped_up, 0)


class NoCycleTests(SynchronousTestCase):
    """A block sent to peers is freed as soon as its requests end. A reference cycle would keep it until the
    cyclic collector runs, which 1 MiB buffers do not prompt: one cycle per block grew an uploading node from
    80 to 210 MiB over a 1 GiB put (found by bench/replication.py)."""

    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def test_peer_manager_request_keeps_no_reference(self) -> None:
        node = make_node(self)
        pm = PeerManager(node, node.reactor)

        class Conn:
            def request(self, type: int, header: dict, payload: Any, timeout: float) -> Any:
                return succeed(Response({}, b""))

        pm.connect = lambda node_id: succeed(Conn())  # type: ignore[method-assign]
        block = os.urandom(1 << 20)
        base = sys.getrefcount(block)
        self.successResultOf(pm.put_block(b"p" * 32, CID.of(block), block))
        self.assertEqual(sys.getrefcount(block), base)

    def test_replicator_keeps_no_reference(self) -> None:
        pending: list[Deferred[None]] = []

        class Peers:
            node_id = b"o" * 32

            def members(self) -> list[bytes]:
                return [bytes([i]) * 32 for i in range(5)]

            def put_block(self, node_id: bytes, cid: CID, block: Any, timeout: float = 0, key: Any = None,
                          lease: Any = None, **_kw: Any) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d

        r = Replicator(Peers(), Rendezvous(), 3)
        block = os.urandom(1 << 20)
        base = sys.getrefcount(block)
        d = r.place(CID.of(block), block, b"key")
        pending.pop(0).errback(Failure(RuntimeError("holder down")))  # replaced by the next in rank
        while pending:
            pending.pop(0).callback(None)
        self.assertEqual(len(self.successResultOf(d)), 3)
        del d
        self.assertEqual(sys.getrefcount(block), base)


class RetrieverTests(SynchronousTestCase):
    def test_cancelled_fetch_asks_nobody_else(self) -> None:
        asked: list[bytes] = []

        class Peers:
            node_id = b"o" * 32

            def members(self) -> list[bytes]:
                return [bytes([i]) * 32 for i in range(6)]

            def get_block(self, node_id: bytes, cid: CID, timeout: float = 0) -> Deferred[bytes]:
                asked.append(node_id)
                return Deferred()  # never answers

            def has(self, node_id: bytes, cids: list) -> Deferred[list[bool]]:
                asked.append(node_id)
                return succeed([True])

        d = Retriever(Peers(), Rendezvous(), 3).fetch(CID.of(b"x"), b"key")
        d.cancel()  # the reader went away
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(asked), 1)


class CountingRendezvous(Rendezvous):
    """Rendezvous placement that counts its rankings."""

    def __init__(self) -> None:
        self.ranked: list[bytes] = []

    def rank(self, key: bytes, members: Any) -> list[bytes]:
        self.ranked.append(key)
        return super().rank(key, members)


class RankKeptTests(SynchronousTestCase):
    """A Retriever ranks the membership once per placement key (every block of a stripe shares it), and again
    when the membership changes."""

    def setUp(self) -> None:
        self.nodes = [bytes([i]) * 32 for i in range(1, 9)]
        self.peers = FakeHolders(Clock(), self.nodes)
        self.placement = CountingRendezvous()
        self.r = Retriever(self.peers, self.placement, 3, extra=2)

    def expected(self, key: bytes) -> list[bytes]:
        return Rendezvous().rank(key, self.peers.members())[:5]

    def test_once_per_key(self) -> None:
        for spread in range(5):
            got = self.r.candidates(b"stripe", spread)
            top = self.expected(b"stripe")[:3]
            self.assertEqual(got[:3], top[spread % 3:] + top[: spread % 3])  # the rotation is per call
            self.assertEqual(got[3:], self.expected(b"stripe")[3:])
        self.assertEqual(self.placement.ranked, [b"stripe"])
        self.assertEqual(self.r.candidates(b"other")[:3], self.expected(b"other")[:3])
        self.assertEqual(self.placement.ranked, [b"stripe", b"other"])

    def newcomer(self, members: list[bytes]) -> bytes:
        """A node id not among ``members`` that would rank first for the stripe."""
        return next(n for n in (bytes([i]) * 32 for i in range(9, 256))
                    if n != self.peers.node_id and Rendezvous().rank(b"stripe", [*members, n])[0] == n)

    def test_membership_change_ranks_again(self) -> None:
        self.r.candidates(b"stripe")
        newcomer = self.newcomer(self.nodes)
        self.nodes.append(newcomer)
        self.assertEqual(self.r.candidates(b"stripe")[0], newcomer)
        self.nodes.remove(newcomer)
        self.assertNotIn(newcomer, self.r.candidates(b"stripe"))
        self.assertEqual(self.placement.ranked, [b"stripe"] * 3)

    def test_same_size_other_members_ranks_again(self) -> None:
        self.r.candidates(b"stripe")
        last = self.expected(b"stripe")[-1]
        newcomer = self.newcomer([n for n in self.nodes if n != last])
        self.nodes[self.nodes.index(last)] = newcomer  # one left, one joined: as many members as before
        self.assertEqual(self.r.candidates(b"stripe")[0], newcomer)
        self.assertEqual(self.placement.ranked, [b"stripe"] * 2)

    def test_ordering_by_speed_leaves_the_ranking_alone(self) -> None:
        clock = Clock()
        times = BlockTimes(clock)
        r = Retriever(self.peers, self.placement, 3, extra=2, times=times)
        top = self.expected(b"stripe")[:3]
        times.note(top[0], 9.0)  # the first in rank is slow: asked last
        times.note(top[1], 1.0)
        times.note(top[2], 1.0)
        self.assertEqual(r.candidates(b"stripe"), [top[1], top[2], top[0], *self.expected(b"stripe")[3:]])
        clock.advance(3600)  # 60 half-lives: every peer back at the mean, so ties keep the rank's rotation
        self.assertEqual(r.candidates(b"stripe"), self.expected(b"stripe"))
        self.assertEqual(self.placement.ranked, [b"stripe"])

    def test_this_node_is_never_a_candidate(self) -> None:
        self.nodes.append(self.peers.node_id)
        for _ in range(2):
            self.assertNotIn(self.peers.node_id, self.r.candidates(b"stripe"))

    def test_keeps_the_keys_used_last(self) -> None:
        keys = [b"k%d" % i for i in range(RANKS_KEPT + 1)]
        for k in keys:
            self.r.candidates(k)
        self.r.candidates(keys[-1])  # kept
        self.r.candidates(keys[1])  # kept
        self.r.candidates(keys[0])  # the oldest: dropped when the last came
        self.assertEqual(self.placement.ranked, keys + [keys[0]])
        self.r.candidates(keys[2])  # dropped for keys[0] (keys[1] was used since)
        self.r.candidates(keys[1])  # still kept
        self.assertEqual(self.placement.ranked, keys + [keys[0], keys[2]])


class FakeHolders:
    """Peers for Retriever unit tests: ``answers[node]`` is what GET_BLOCK gets (bytes, or an exception),
    after ``delay[node]`` seconds of ``clock``; ``busy[node]`` requests already waiting."""

    node_id = b"o" * 32

    def __init__(self, clock: Clock, nodes: list[bytes]) -> None:
        self.clock, self.nodes = clock, nodes
        self.answers: dict[bytes, Any] = {}
        self.delay: dict[bytes, float] = {}
        self.busy: dict[bytes, int] = {}
        self.asked: list[bytes] = []

    def members(self) -> list[bytes]:
        return list(self.nodes)

    def get_block(self, node_id: bytes, cid: CID, timeout: float = 0, verify: bool = True) -> Deferred[Any]:
        self.asked.append(node_id)
        answer = self.answers.get(node_id, BlockNotFound("not here"))
        d: Deferred[Any] = Deferred()
        self.clock.callLater(self.delay.get(node_id, 0.0), lambda: d.errback(answer) if isinstance(answer, Exception) else d.callback(answer))
        return d

    def has(self, node_id: bytes, cids: list) -> Deferred[list[bool]]:
        return succeed([False])

    def in_flight(self, node_id: bytes) -> int:
        return self.busy.get(node_id, 0)


class BlockTimesTests(SynchronousTestCase):
    """Which holder a reader asks first: recent time per block x requests waiting (clock-driven)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.times = BlockTimes(self.clock, weight=0.25, half_life=60.0)
        self.a, self.b, self.c = b"a" * 32, b"b" * 32, b"c" * 32

    def test_average_mean_and_fading(self) -> None:
        t = self.times
        self.assertEqual(t.expected(self.a), 0.0)  # nobody known: 0
        t.note(self.a, 1.0)
        t.note(self.b, 3.0)
        self.assertEqual((t.expected(self.a), t.expected(self.b), t.mean()), (1.0, 3.0, 2.0))
        self.assertEqual(t.expected(self.c), 2.0)  # never asked: the mean, not 0 (a busy new peer still waits)
        t.note(self.a, 5.0)
        self.assertEqual(t.expected(self.a), 2.0)  # 1 + 0.25 x (5 - 1)
        self.clock.advance(60)  # one half-life: halfway back to the mean (2.5)
        self.assertAlmostEqual(t.expected(self.b), 2.5 + (3.0 - 2.5) / 2)

    def test_forgets_the_oldest_half_past_its_limit(self) -> None:
        t = BlockTimes(self.clock, limit=4)
        for i in range(4):
            t.note(bytes([i]) * 32, float(i))
            self.clock.advance(1)
        t.note(b"x" * 32, 10.0)  # the 5th: the two heard of longest ago go
        self.assertEqual(t.mean(), (2.0 + 3.0 + 10.0) / 3)

    def test_bad_samples(self) -> None:
        t = self.times
        t.note(self.a, -2.0)  # the wall clock stepped back during a fetch
        t.note(self.b, float("nan"))
        t.note(self.c, float("inf"))
        self.assertEqual((t.expected(self.a), t.mean()), (0.0, 0.0))
        self.assertRaises(ValueError, BlockTimes, self.clock, limit=1)

    def test_a_node_asked_on_the_off_chance_is_not_held_to_it(self) -> None:
        """Past the expected holders, a "not found" costs a node nothing: it was never said to hold the block."""
        block = b"elsewhere"
        peers = FakeHolders(self.clock, [self.a, self.b, self.c, b"d" * 32])
        r = Retriever(peers, Rendezvous(), 1, deadline=30.0, extra=3, times=self.times,
                      check=lambda cid, data, then: succeed(checked_then(cid, data, then)))
        holder, *others = r.candidates(b"k", 0)
        peers.answers = {others[-1]: block}
        d = r.fetch(CID.of(block), b"k")
        self.clock.pump([0.0] * 6)
        self.assertEqual(self.successResultOf(d), block)
        self.assertGreater(self.times.expected(holder), 29.0)  # the expected holder failed: held against it
        self.assertLess(max(self.times.expected(o) for o in others[:-1]), 29.0)

    def retriever(self, peers: FakeHolders) -> Retriever:
        return Retriever(peers, Rendezvous(), 3, deadline=30.0, extra=0, times=self.times,
                         check=lambda cid, data, then: succeed(checked_then(cid, data, then)))

    def test_order_by_time_and_queue(self) -> None:
        peers = FakeHolders(self.clock, [self.a, self.b, self.c])
        r = self.retriever(peers)
        rotation = r.candidates(b"k", 0)
        self.assertEqual(sorted(rotation), sorted([self.a, self.b, self.c]))  # all unknown: the rotation
        for n, t in zip(rotation, (0.5, 0.1, 0.2)):
            self.times.note(n, t)
        self.assertEqual(r.candidates(b"k", 0), [rotation[1], rotation[2], rotation[0]])
        peers.busy[rotation[1]] = 2  # the fastest has 2 waiting: 0.1 x 3 > 0.2 x 1
        self.assertEqual(r.candidates(b"k", 0), [rotation[2], rotation[1], rotation[0]])

    def test_failures_count_as_the_deadline_and_corrupt_blocks_as_failures(self) -> None:
        block = b"the block"
        cid = CID.of(block)
        peers = FakeHolders(self.clock, [self.a, self.b, self.c])
        r = self.retriever(peers)
        first, second, third = r.candidates(b"k", 0)
        peers.answers = {first: b"forged fast", second: BlockNotFound("no"), third: block}
        peers.delay = {first: 0.001, second: 0.001, third: 0.5}
        d = r.fetch(cid, b"k")
        self.clock.pump([0.001, 0.001, 0.5])
        self.assertEqual(self.successResultOf(d), block)
        self.assertEqual(peers.asked, [first, second, third])
        # The quick forger and the holder without the block are as bad as the deadline; the honest one 0.5 s.
        self.assertGreater(min(self.times.expected(first), self.times.expected(second)), 29.0)
        self.assertAlmostEqual(self.times.expected(third), 0.5)
        self.assertEqual(r.candidates(b"k", 0)[0], third)


class FetchThenTests(SynchronousTestCase):
    """``Retriever.fetch(..., then=f)``: ``f`` runs on the block once it passed its check, in the check's job
    (one worker job per block); what ``f`` raises is the fetch's error, not a reason to ask the next holder."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.block = b"the block"
        self.cid = CID.of(self.block)
        self.peers = FakeHolders(self.clock, [b"a" * 32, b"b" * 32, b"c" * 32])
        self.jobs: list[tuple[CID, Any]] = []

    def check(self, cid: CID, data: Any, then: Any) -> Deferred[Any]:
        self.jobs.append((cid, then))  # one job per block asked: the check and ``then`` together
        return succeed(checked_then(cid, data, then))

    def retriever(self, checked_here: bool = True) -> Retriever:
        return Retriever(self.peers, Rendezvous(), 3, deadline=30.0, extra=0, check=self.check if checked_here else None)

    def fetch(self, r: Retriever, answers: list[Any], then: Any) -> Deferred[Any]:
        order = r.candidates(b"k", 0)
        self.peers.answers = dict(zip(order, answers))
        d = r.fetch(self.cid, b"k", then=then)
        self.clock.pump([0.0] * 4)
        return d

    def test_then_applied_to_the_good_block_in_its_check_job(self) -> None:
        seen: list[bytes] = []

        def then(block: bytes) -> bytes:
            seen.append(block)
            return block.upper()

        d = self.fetch(self.retriever(), [b"forged", self.block], then)
        self.assertEqual(self.successResultOf(d), b"THE BLOCK")
        self.assertEqual(seen, [self.block], "never applied to the forged bytes")
        self.assertEqual(self.jobs, [(self.cid, then), (self.cid, then)], "one job per answer, none for then alone")

    def test_what_then_raises_is_the_error_and_no_other_holder_is_asked(self) -> None:
        def then(block: bytes) -> bytes:
            raise TamperedData("does not decrypt")

        d = self.fetch(self.retriever(), [self.block, self.block, self.block], then)
        self.assertEqual(str(self.failureResultOf(d, TamperedData).value), "does not decrypt")
        self.assertEqual(len(self.peers.asked), 1)

    def test_without_a_check_job_then_runs_after_get_block(self) -> None:
        def then(block: bytes) -> bytes:
            raise TamperedData("bad")

        r = self.retriever(checked_here=False)
        self.assertEqual(self.successResultOf(self.fetch(r, [self.block], len)), len(self.block))
        self.peers.asked.clear()
        self.failureResultOf(self.fetch(r, [self.block, self.block], then), TamperedData)
        self.assertEqual(len(self.peers.asked), 1)

    def test_checked_then(self) -> None:
        from cas.network.retrieval import MISMATCH, ThenFailed

        self.assertIs(checked_then(self.cid, b"forged", len), MISMATCH)
        self.assertEqual(checked_then(self.cid, self.block, None), self.block)
        self.assertEqual(checked_then(self.cid, self.block, len), len(self.block))
        e = self.assertRaises(ThenFailed, checked_then, self.cid, self.block, lambda b: 1 // 0)
        self.assertIsInstance(e.error, ZeroDivisionError)


class FetchPlacedThenTests(SynchronousTestCase):
    """``Node.fetch_placed(..., then=f)`` on a block whose local copy is corrupt: the copy is quarantined, a
    holder's copy is fetched and checked, and ``f`` runs on it exactly once (in the check's job), not again as
    if it were the local block; the local copy is then replaced from a holder."""

    def test_corrupt_local_copy_read_elsewhere_then_applied_once(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        cid = CID.of(block)
        node.store.put(cid, block)
        node.index.add_refs("file:x", [cid])  # a block of a file of this node's
        with open(node.store._path(cid), "r+b") as f:
            f.write(b"\xff" if block[0] != 0xFF else b"\x00")  # the local copy rots
        clock = Clock()
        peers = FakeHolders(clock, [b"a" * 32, b"b" * 32, b"c" * 32])
        peers.answers = {n: block for n in peers.nodes}
        node.peers = peers
        seen: list[bytes] = []

        def then(data: Any) -> bytes:
            seen.append(bytes(data))
            return b"made of " + bytes(data)

        d = node.fetch_placed(cid, b"stripe key", 0, then=then)
        clock.pump([0.0] * 4)
        self.assertEqual(self.successResultOf(d), b"made of " + block)
        self.assertEqual(seen, [block], "then ran once, on the holder's good copy")
        # the corrupt copy was quarantined, and replaced at once by a good one from a holder (a second fetch: the
        # reader's went through ``then``)
        self.assertEqual(len(peers.asked), 2)
        self.assertEqual(len(os.listdir(node.store.quarantine_dir)), 1)
        self.assertEqual(node.store.get(cid), block)
        self.assertEqual((node.scrubber.corrupt, node.scrubber.recovered), (1, 1))

    def test_good_local_copy_then_applied_once_and_no_peer_asked(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        cid = CID.of(block)
        node.store.put(cid, block)
        peers = FakeHolders(Clock(), [b"a" * 32])
        node.peers = peers
        seen: list[bytes] = []
        d = node.fetch_placed(cid, b"stripe key", 0, then=lambda data: seen.append(bytes(data)) or len(data))
        self.assertEqual(self.successResultOf(d), len(block))
        self.assertEqual(seen, [block])
        self.assertEqual(peers.asked, [])


class TopUpStopTests(SynchronousTestCase):
    def test_a_pass_in_progress_ends_at_stop_without_writing(self) -> None:
        from cas.network.repair import Repairer
        from cas.store.index import Underplaced

        node = make_node(self)
        block = os.urandom(1000)
        cid = CID.of(block)
        node.store.put(cid, block)
        node.index.add_refs("file:x", [cid])
        with node.index._transaction():  # rows are normally written with the file's record
            node.index.db.execute("INSERT INTO underplaced VALUES (?, ?, ?)", (str(cid), b"key", b""))
        pending: list[Deferred[None]] = []

        class Peers:
            node_id = node.identity.node_id

            def members(self) -> list[bytes]:
                return [b"a" * 32, b"b" * 32, b"c" * 32]

            def recently_dead(self, within: float) -> set[bytes]:
                return set()

            def subscribe(self, cb: Any) -> Any:
                return lambda: None

            def version_of(self, node_id: bytes) -> int:
                return 2

            def has_leased(self, node_id: bytes, cids: list) -> Deferred[Any]:
                return succeed(([False] * len(cids), [False] * len(cids)))

            def put_block(self, node_id: bytes, cid: CID, data: Any, timeout: float = 0, key: Any = None,
                          lease: Any = None, **_kw: Any) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d

        t = Repairer(node, Peers(), node.reactor)
        t.start()
        t.kick()
        node.reactor.advance(0)
        self.assertEqual(len(pending), 1)  # the origin's pass waits for the first holder
        t.stop()
        pending.pop().callback(None)
        self.assertEqual(pending, [])  # asked nobody else
        self.assertEqual(node.index.count_underplaced(), 1)  # and wrote nothing: the next start goes on
        self.assertIsInstance(node.index.underplaced(10)[0], Underplaced)
