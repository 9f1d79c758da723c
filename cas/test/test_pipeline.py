"""The upload and download pipelines over a real block store, with the worker pool faked."""

from __future__ import annotations

import os
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock, QuotaExceeded, RangeNotSatisfiable, StorageLimitExceeded
from cas.content import cipher
from cas.content.capability import ReadCap
from cas.content.manifest import decode_root
from cas.node.core import Node
from cas.node.upload import UploadAborted
from cas.store.leases import legacy_key

from .util import Collector, FakeProducer, ManualRunner, make_node

SEG = 1000


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class RoundTrip(SynchronousTestCase):
    def store(self, node, data: bytes, name: str = "f.bin", ctype: str = "application/x-test", chunk: int = 777):
        up = node.upload(name, ctype)
        for i in range(0, len(data), chunk):
            up.write(data[i : i + chunk])
        return self.successResultOf(up.finish())

    def read(self, node, key: str, offset: int = 0, length: int | None = None) -> bytes:
        f = self.successResultOf(node.open(ReadCap.parse(key)))
        c = Collector()
        self.successResultOf(node.download(f, offset, length).start(c))
        self.assertIsNone(c.producer, "download must unregister from its consumer")
        self.assertTrue(c.streaming)
        return c.data

    def test_sizes(self) -> None:
        """Empty, one byte, segment boundaries and multi-level manifest trees come back byte for byte."""
        node = make_node(self, segment_size=SEG, fanout=3)
        for size in (0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 9 * SEG + 5, 40 * SEG + 1):
            data = pattern(size, size)
            stored = self.store(node, data)
            self.assertEqual(stored.size, size)
            self.assertEqual(stored.blocks, max(1, -(-size // SEG)))
            self.assertEqual(self.read(node, str(stored.cap)), data, size)
            f = self.successResultOf(node.open(stored.cap))
            self.assertEqual((f.metadata.name, f.metadata.content_type, f.metadata.size), ("f.bin", "application/x-test", size))

    @settings(max_examples=40, deadline=None)
    @given(cuts=st.lists(st.integers(0, 3500), max_size=12), mutable=st.booleans())
    def test_any_write_sizes(self, cuts: list[int], mutable: bool) -> None:
        """Writes of any sizes (empty, smaller, larger than a segment, bytearrays reused by the producer)
        store exactly the bytes written."""
        if not hasattr(self, "_node"):
            self._node = make_node(self, segment_size=SEG)
        data = pattern(sum(cuts), len(cuts))
        up = self._node.upload("f")
        pos = 0
        scratch = bytearray(4000)
        for n in cuts:
            if mutable:
                scratch[:n] = data[pos : pos + n]
                up.write(memoryview(scratch)[:n])
                scratch[:n] = b"\xff" * n  # the producer reuses its buffer
            else:
                up.write(data[pos : pos + n])
            pos += n
        stored = self.successResultOf(up.finish())
        self.assertEqual(stored.size, len(data))
        self.assertEqual(self.read(self._node, str(stored.cap)), data)

    def test_tree_depth(self) -> None:
        """With fanout 3, 40 blocks need a root of depth 3 (27 < 40 <= 81)."""
        node = make_node(self, segment_size=SEG, fanout=3)
        stored = self.store(node, pattern(40 * SEG))
        root = decode_root(node.store.get(stored.cap.root))
        self.assertEqual((root.depth, root.blocks), (3, 40))

    def test_every_block_is_ciphertext(self) -> None:
        """No block file on disk contains a run of the plaintext."""
        node = make_node(self, segment_size=SEG)
        data = b"PLAINTEXT-MARKER-" * 500
        self.store(node, data)
        for cid in node.store.cids():
            self.assertNotIn(b"PLAINTEXT-MARKER", node.store.get(cid))

    def test_same_content_new_key(self) -> None:
        """Each put draws a fresh file key: the same bytes stored twice give two different keys."""
        node = make_node(self, segment_size=SEG)
        a = self.store(node, b"x" * 3000)
        b = self.store(node, b"x" * 3000)
        self.assertNotEqual(a.cap.root, b.cap.root)
        self.assertEqual(len(node.files()), 2)

    @settings(max_examples=60, deadline=None)
    @given(offset=st.integers(0, 5200), length=st.one_of(st.none(), st.integers(0, 6000)))
    def test_ranges(self, offset: int, length: int | None) -> None:
        if not hasattr(self, "_node"):
            self._node = make_node(self, segment_size=SEG, fanout=2)
            self._data = pattern(5 * SEG + 17)
            self._key = str(self.store(self._node, self._data).cap)
        size = len(self._data)
        if offset > size or (offset == size and length != 0):
            f = self.successResultOf(self._node.open(ReadCap.parse(self._key)))
            self.assertRaises(RangeNotSatisfiable, self._node.download, f, offset, length)
            return
        end = size if length is None else min(size, offset + length)
        self.assertEqual(self.read(self._node, self._key, offset, length), self._data[offset:end])

    def test_range_reads_only_needed_blocks(self) -> None:
        """A range inside one segment fetches the root and that one data block (plus tree nodes)."""
        node = make_node(self, segment_size=SEG)
        stored = self.store(node, pattern(20 * SEG))
        f = self.successResultOf(node.open(stored.cap))
        fetched = []
        real = node.fetch
        node.fetch = lambda cid: (fetched.append(cid), real(cid))[1]  # type: ignore[method-assign]
        c = Collector()
        self.successResultOf(node.download(f, 7 * SEG + 10, 20).start(c))
        self.assertEqual(fetched, [f.root.links[7].cid])
        self.assertEqual(len(c.data), 20)


class Backpressure(SynchronousTestCase):
    def test_upload_pauses_streaming_producer(self) -> None:
        """At most ``window`` segments are in flight; the producer is paused at the limit and resumed after."""
        runner = ManualRunner()
        node = make_node(self, run=runner, segment_size=SEG, window=3)
        up = node.upload("f")
        producer = FakeProducer()
        up.registerProducer(producer, True)
        data = pattern(10 * SEG)
        for i in range(0, 3 * SEG + 1, 500):
            up.write(data[i : i + 500])
        self.assertEqual(len(runner.queue), 3)
        self.assertTrue(producer.paused)
        runner.run_one()
        self.assertFalse(producer.paused)
        self.assertEqual(producer.resumes, 1)
        pos = 3 * SEG + 1 + 499
        while pos < len(data):
            up.write(data[pos : pos + 500])
            pos += 500
            self.assertLessEqual(len(runner.queue), 3 + 1)  # a write may cut one more segment before pausing
            while producer.paused:
                runner.run_one()
        up.unregisterProducer()
        d = up.finish()
        runner.run_all()
        while runner.queue:
            runner.run_all()
        stored = self.successResultOf(d)
        self.assertEqual(stored.size, len(data))
        self.assertLessEqual(runner.max_queued, 4)

    def test_upload_pull_producer(self) -> None:
        """A pull producer is asked for more only while there is room."""
        runner = ManualRunner()
        node = make_node(self, run=runner, segment_size=SEG, window=2)
        up = node.upload("f")
        asked = []

        class Pull:
            def resumeProducing(self) -> None:
                asked.append(1)
                up.write(b"y" * SEG)

            def stopProducing(self) -> None:
                pass

        up.registerProducer(Pull(), False)
        clock = node.reactor
        for _ in range(10):
            clock.advance(0)
        self.assertEqual(len(runner.queue), 2)  # window full: no more asking
        n = len(asked)
        clock.advance(0)
        self.assertEqual(len(asked), n)
        runner.run_one()
        clock.advance(0)
        self.assertEqual(len(asked), n + 1)

    def test_download_honours_pause(self) -> None:
        """A paused download writes nothing and fetches at most ``window`` blocks ahead."""
        node = make_node(self, segment_size=SEG, window=2)
        up = node.upload("f")
        data = pattern(12 * SEG)
        up.write(data)
        stored = self.successResultOf(up.finish())
        f = self.successResultOf(node.open(stored.cap))
        fetched = []
        real = node.fetch
        node.fetch = lambda cid: (fetched.append(cid), real(cid))[1]  # type: ignore[method-assign]
        c = Collector(pause_every=3)
        dl = node.download(f)
        d = dl.start(c)
        self.assertNoResult(d)
        self.assertEqual(len(c.chunks), 3)
        # 3 delivered, at most ``window`` waiting, plus the one taken before the pause was seen
        self.assertLessEqual(len(fetched), 3 + 2 + 1)
        resumes = 0
        while not d.called:
            dl.resumeProducing()
            resumes += 1
        self.assertEqual(resumes, 3)  # 12 blocks, paused after writes 3, 6, 9 (and 12, the end)
        self.successResultOf(d)
        self.assertEqual(c.data, data)

    def test_download_stop(self) -> None:
        """stopProducing (the consumer went away) ends the stream with CancelledError and stops fetching."""
        runner = ManualRunner()
        node = make_node(self, segment_size=SEG, window=2)
        up = node.upload("f")
        up.write(pattern(8 * SEG))
        stored = self.successResultOf(up.finish())
        f = self.successResultOf(node.open(stored.cap))
        node.run = runner  # decrypt jobs now wait for the test
        dl = node.download(f)
        c = Collector()
        d = dl.start(c)
        runner.run_one()
        dl.stopProducing()
        self.failureResultOf(d, CancelledError)
        runner.run_all()
        self.assertLessEqual(len(c.chunks), 1)


class DownloadBudget(SynchronousTestCase):
    """Downloads hold the node-wide buffer budget for the blocks they fetch ahead (docs/replication.md)."""

    def setup(self, budget: int, blocks: int = 12, window: int = 8) -> tuple[Node, Any, bytes, ManualRunner, list[int]]:
        runner = ManualRunner()
        node = make_node(self, segment_size=SEG, window=window, buffer_budget=budget)
        up = node.upload("f")
        data = pattern(blocks * SEG)
        up.write(data)
        stored = self.successResultOf(up.finish())
        f = self.successResultOf(node.open(stored.cap))
        node.run = runner  # fetches and decrypts wait for the test: blocks stay in flight
        peak = [0]
        for name in ("take", "force"):
            real = getattr(node.budget, name)

            def wrapped(n: int, *args: Any, real: Any = real, **kw: Any) -> Any:
                out = real(n, *args, **kw)
                peak[0] = max(peak[0], node.budget.used)
                return out

            setattr(node.budget, name, wrapped)
        return node, f, data, runner, peak

    def test_reads_ahead_only_as_far_as_the_budget(self) -> None:
        node, f, data, runner, peak = self.setup(budget=6 * SEG)
        c = Collector()
        d = node.download(f).start(c)
        self.assertEqual(node.budget.used, 3 * SEG)  # downloads' half: 3 blocks in flight, not the window's 8
        self.assertEqual(len(runner.queue), 3)
        runner.run_all()
        self.assertEqual(self.successResultOf(d), None)
        self.assertEqual(c.data, data)
        self.assertEqual(peak[0], 3 * SEG)
        self.assertEqual(node.budget.used, 0)

    def test_progresses_when_others_hold_the_whole_budget(self) -> None:
        node, f, data, runner, peak = self.setup(budget=4 * SEG)
        node.budget.take(4 * SEG)  # uploads hold it all
        c = Collector()
        d = node.download(f).start(c)
        self.assertEqual(len(runner.queue), 1)  # one block at a time, past the budget by one segment
        runner.run_all()
        self.successResultOf(d)
        self.assertEqual(c.data, data)
        self.assertEqual(peak[0], 5 * SEG)
        self.assertEqual(node.budget.used, 4 * SEG)

    def test_gives_back_when_the_reader_goes_away(self) -> None:
        node, f, data, runner, peak = self.setup(budget=32 * SEG)
        c = Collector()
        dl = node.download(f)
        d = dl.start(c)
        self.assertEqual(node.budget.used, 8 * SEG)  # the window
        dl.stopProducing()
        self.failureResultOf(d, CancelledError)
        runner.run_all()
        self.assertEqual((node.budget.used, node.budget.downloads), (0, 0))

    def test_downloads_together_hold_half(self) -> None:
        """Two readers share the downloads' half; the other half stays for uploads."""
        node, f, data, runner, peak = self.setup(budget=8 * SEG)
        c1, c2 = Collector(), Collector()
        d1 = node.download(f).start(c1)
        d2 = node.download(f).start(c2)
        # The first took the downloads' half; the second, with nothing in flight, one segment past the budget.
        self.assertEqual((node.budget.downloads, node.budget.forced), (4 * SEG, SEG))
        self.assertTrue(node.budget.take(4 * SEG))  # uploads still have their half
        runner.run_all()
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual((c1.data, c2.data), (data, data))
        self.assertEqual((node.budget.used, node.budget.downloads, node.budget.forced), (4 * SEG, 0, 0))

    def test_waiting_upload_gets_what_uploads_give_back_while_a_download_streams(self) -> None:
        """Downloads stay within their half while an upload waits; the room another upload gives back goes to
        the waiting upload, not to the download."""
        node, f, data, runner, peak = self.setup(budget=4 * SEG)
        node.budget.take(2 * SEG)  # upload A's segment
        c = Collector()
        d = node.download(f).start(c)
        got: list[bool] = []

        def upload_b() -> None:
            if node.budget.take(2 * SEG):
                got.append(True)
            else:
                node.budget.wait(upload_b)

        upload_b()
        self.assertEqual(got, [])
        for _ in range(6):  # the download streams; it never holds more than its half
            runner.run_one()
            self.assertLessEqual(node.budget.downloads, 2 * SEG)
        self.assertEqual(got, [])
        node.budget.give(2 * SEG)  # A's segment is done: B gets it
        self.assertEqual(got, [True])
        runner.run_all()
        self.successResultOf(d)
        self.assertEqual(c.data, data)
        self.assertEqual((node.budget.used, node.budget.downloads, node.budget.forced), (2 * SEG, 0, 0))


class Failures(SynchronousTestCase):
    def test_storage_limit_mid_upload(self) -> None:
        """The limit fails the upload clearly, the producer is stopped, and nothing of it stays behind."""
        node = make_node(self, segment_size=SEG, storage_limit=5 * (SEG + 16))
        up = node.upload("big")
        producer = FakeProducer()
        up.registerProducer(producer, True)
        up.write(pattern(10 * SEG))
        f = self.failureResultOf(up.finish(), StorageLimitExceeded)
        self.assertIn("storage limit", f.getErrorMessage())
        self.assertTrue(producer.stopped)
        self.assertEqual(node.files(), [])
        self.assertEqual(len(node.pins), 0)
        self.successResultOf(node.collect_garbage())
        self.assertEqual(list(node.store.cids()), [])
        self.assertEqual(node.store.used(), 0)
        # The node keeps working for what fits.
        up = node.upload("small")
        up.write(b"ok")
        self.successResultOf(up.finish())

    def test_abort(self) -> None:
        node = make_node(self, segment_size=SEG)
        up = node.upload("f")
        up.write(pattern(5 * SEG))
        up.abort("client went away")
        self.failureResultOf(up.done, UploadAborted)
        self.successResultOf(node.collect_garbage())
        self.assertEqual(list(node.store.cids()), [])

    def _stored(self):
        node = make_node(self, segment_size=SEG)
        up = node.upload("f")
        up.write(pattern(6 * SEG))
        stored = self.successResultOf(up.finish())
        f = self.successResultOf(node.open(stored.cap))
        return node, stored, f

    def test_corrupt_block_on_read(self) -> None:
        node, stored, f = self._stored()
        path = node.store._path(f.root.links[2].cid)
        with open(path, "r+b") as fh:
            fh.seek(10)
            b = fh.read(1)
            fh.seek(10)
            fh.write(bytes([b[0] ^ 1]))
        c = Collector()
        self.failureResultOf(node.download(f).start(c), CorruptBlock)
        self.assertEqual(len(c.data), 2 * SEG, "bytes before the bad block were delivered, none after")
        self.assertTrue(os.listdir(node.store.quarantine_dir))

    def test_missing_last_block(self) -> None:
        node, stored, f = self._stored()
        node.store.delete(f.root.links[-1].cid)
        c = Collector()
        self.failureResultOf(node.download(f).start(c), BlockNotFound)
        self.assertLess(len(c.data), 6 * SEG)

    def test_forget_collects(self) -> None:
        node, stored, f = self._stored()
        up = node.upload("other")
        up.write(b"keep me")
        other = self.successResultOf(up.finish())
        result = self.successResultOf(node.forget(stored.cap.root))
        self.assertEqual(result["blocks_freed"], 7)  # 6 data blocks + root
        self.assertEqual([r.root for r in node.files()], [other.cap.root])
        c = Collector()
        self.successResultOf(node.download(self.successResultOf(node.open(other.cap))).start(c))
        self.assertEqual(c.data, b"keep me")


class Beyond4GiB(SynchronousTestCase):
    """64-bit sizes and offsets: a 4 GiB + 3 MiB file through both pipelines, with block bytes discarded
    on write and re-created on read (the encryption is deterministic given key and position)."""

    def test_past_4gib(self) -> None:
        seg = cipher.SEGMENT_SIZE
        nseg = 4 * 1024 + 3
        key = bytes(range(32))

        def plain(i: int) -> bytes:
            return i.to_bytes(4, "big") * (seg // 4)

        size = nseg * seg - 5
        digests: dict[CID, int] = {}
        node = make_node(self)

        class DigestStore:
            """Keeps which segment each data block was; manifests are kept whole."""

            def __init__(self) -> None:
                self.manifests: dict[CID, bytes] = {}

            def put(self, cid: CID, data: bytes, verified: bool = False) -> bool:
                if len(data) == seg + cipher.TAG_SIZE or (len(data) == seg - 5 + cipher.TAG_SIZE):
                    digests[cid] = int.from_bytes(cipher.open_segment(key, len(digests), len(digests) == nseg - 1, data)[:4], "big")
                else:
                    self.manifests[cid] = data
                return True

            def get(self, cid: CID) -> bytes:
                if cid in self.manifests:
                    return self.manifests[cid]
                i = digests[cid]
                return cipher.seal_segment(key, i, i == nseg - 1, plain(i)[: size - i * seg])

        store = DigestStore()
        from cas.node.upload import Upload

        up = Upload(store=store, index=node.index, pins=node.pins, run=node.run, clock=node.reactor, name="big", key=key)
        for i in range(nseg):
            up.write(plain(i)[: size - i * seg])
        stored = self.successResultOf(up.finish())
        self.assertEqual(stored.size, size)
        self.assertGreater(stored.size, 1 << 32)
        self.assertEqual(stored.blocks, nseg)
        node.store = store  # type: ignore[assignment]
        f = self.successResultOf(node.open(stored.cap))
        self.assertEqual(f.size, size)
        offset = (1 << 32) + 2 * seg + 123
        c = Collector()
        self.successResultOf(node.download(f, offset, 10).start(c))
        i = offset // seg
        self.assertEqual(c.data, plain(i)[offset - i * seg : offset - i * seg + 10])
        c = Collector()
        self.successResultOf(node.download(f, size - 7).start(c))
        self.assertEqual(c.data, plain(nseg - 1)[seg - 12 : seg - 5])


class VerifyCapability(SynchronousTestCase):
    def test_verify_without_key(self) -> None:
        """The root id alone checks every block; corruption and loss are reported per block."""
        node = make_node(self, segment_size=SEG, fanout=2)
        up = node.upload("f")
        up.write(pattern(5 * SEG))
        stored = self.successResultOf(up.finish())
        report = self.successResultOf(node.verify(stored.cap.verify_cap))
        self.assertTrue(report.ok)
        self.assertEqual(report.blocks, 5)
        self.assertEqual(report.nodes, 1 + 2 + 3)  # fanout 2, 5 blocks: 3 leaf nodes, 2 above them, the root
        f = self.successResultOf(node.open(stored.cap))
        links = []

        async def collect() -> None:
            from cas.content.manifest import data_links, decode_node

            async def load(cid):
                return decode_node(node.store.get(cid))

            async for _i, link in data_links(f.root, load):
                links.append(link)

        from twisted.internet.defer import ensureDeferred

        self.successResultOf(ensureDeferred(collect()))
        with open(node.store._path(links[1].cid), "r+b") as fh:
            fh.write(b"\0\0\0\0")
        node.store.delete(links[3].cid)
        report = self.successResultOf(node.verify(stored.cap.root))
        self.assertFalse(report.ok)
        self.assertEqual(report.blocks, 3)
        self.assertEqual(sorted(c for c, _ in report.bad), sorted([str(links[1].cid), str(links[3].cid)]))


class Names(SynchronousTestCase):
    def test_overlong_name_refused_up_front(self) -> None:
        """A name the metadata decoder would refuse is refused before any byte is stored."""
        from cas.base.errors import InvalidMetadata

        node = make_node(self)
        e = self.assertRaises(InvalidMetadata, node.upload, "n" * 4097)
        self.assertIn("4096", str(e))
        self.assertRaises(InvalidMetadata, node.upload, "ok", "t" * 257)
        self.assertEqual(list(node.store.cids()), [])
        up = node.upload("n" * 4096, "t" * 256)
        up.write(b"x")
        stored = self.successResultOf(up.finish())
        self.assertEqual(self.successResultOf(node.open(stored.cap)).metadata.name, "n" * 4096)


class GarbageAfterFailure(SynchronousTestCase):
    def test_failed_upload_frees_space_at_once(self) -> None:
        node = make_node(self, segment_size=SEG, storage_limit=5 * (SEG + 16))
        up = node.upload("big")
        up.write(pattern(10 * SEG))
        self.failureResultOf(up.finish(), StorageLimitExceeded)
        self.assertEqual(node.store.used(), 0, "no explicit collection needed")

    def test_start_collects_blocks_of_a_crashed_upload(self) -> None:
        node = make_node(self, segment_size=SEG)
        up = node.upload("f")
        up.write(pattern(5 * SEG))  # blocks written, upload never finished: then the process "dies"
        self.assertGreater(node.store.used(), 0)
        node.stop()
        from cas.node.core import Node

        again = Node(node.datadir, node.reactor, run=node.run, segment_size=SEG)
        again.start()
        self.addCleanup(again.stop)
        self.assertEqual(again.store.used(), 0)
        self.assertEqual(list(again.store.cids()), [])


PEER = "ab" * 32  # a peer's node id, hex


class HoldBlockTests(SynchronousTestCase):
    """Blocks stored for peers (PUT_BLOCK): verified, recorded for the peer that asked (batched, before the
    answer), counted against the quota, pins always released."""

    def hold(self, node: Node, peer: str, cid: CID, block: bytes, key: bytes | None = None) -> Deferred[bool]:
        """As a PUT_BLOCK: under a lease of 60 s on ``key``, or as a node of protocol version 1 without one."""
        d = node.hold_block(peer, cid, block, key, 60 if key is not None else None)
        node.reactor.advance(0)  # the batched record commits on the next reactor turn
        return d

    def test_stored_verified_and_recorded(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        cid = CID.of(block)
        node.reactor.advance(1000)
        self.assertTrue(self.successResultOf(self.hold(node, PEER, cid, block)))
        node.reactor.advance(5)
        self.assertFalse(self.successResultOf(self.hold(node, PEER, cid, block)))  # already there
        self.assertIn(cid, node.index.referenced())
        self.assertEqual(node.index.holds_of(cid), [(PEER, 1000, 1005)])  # who asked, first and last time
        self.assertEqual(node.held_bytes(), 1000)
        self.assertEqual(len(node.pins), 0)
        self.failureResultOf(self.hold(node, PEER, CID.of(b"other"), block), CorruptBlock)
        self.assertEqual(len(node.pins), 0)
        self.assertEqual(node.held_bytes(), 1000)

    def test_answer_waits_for_the_record(self) -> None:
        node = make_node(self)
        blocks = [os.urandom(100 + i) for i in range(3)]
        ds = [node.hold_block(PEER, CID.of(b), b) for b in blocks]
        self.assertEqual([d.called for d in ds], [False] * 3)  # stored, not yet recorded: no answer
        node.reactor.advance(0)
        self.assertEqual([self.successResultOf(d) for d in ds], [True] * 3)
        for b in blocks:
            self.assertEqual(len(node.index.holds_of(CID.of(b))), 1)

    def test_record_survives_a_restart(self) -> None:
        node = make_node(self)
        block = os.urandom(500)
        cid = CID.of(block)
        self.successResultOf(self.hold(node, PEER, cid, block))
        again = Node(node.datadir, node.reactor, run=node.run)
        again.start()  # its start-up collection keeps held blocks
        self.addCleanup(again.stop)
        self.assertTrue(again.store.has(cid))
        self.assertEqual(again.held_bytes(), 500)

    def test_a_version_1_push_is_kept_under_the_senders_legacy_key(self) -> None:
        from cas.store.leases import MAX_LEASE_TIME, legacy_key

        node = make_node(self)
        block = os.urandom(100)
        d = node.hold_block(PEER, CID.of(block), block, b"k" * 38, None)  # a key, no lease: version 1
        node.reactor.advance(0)
        self.successResultOf(d)
        legacy = legacy_key(bytes.fromhex(PEER))
        self.assertEqual(node.index.hold_keys(CID.of(block)), {legacy})
        self.assertEqual(node.index.leases.expiry(legacy, bytes.fromhex(PEER)), int(node.reactor.seconds()) + MAX_LEASE_TIME)
        self.assertEqual(node.index.leases.leased_blocks([CID.of(block)], int(node.reactor.seconds())), set())

    def test_quota(self) -> None:
        node = make_node(self, quota=2500)
        a, b, c = os.urandom(1000), os.urandom(1000), os.urandom(1000)
        key = b"k" * 38
        self.successResultOf(self.hold(node, PEER, CID.of(a), a, key))
        self.successResultOf(self.hold(node, PEER, CID.of(b), b, key))
        f = self.failureResultOf(self.hold(node, PEER, CID.of(c), c, key), QuotaExceeded)
        self.assertIn("quota is 2500", f.getErrorMessage())
        self.assertFalse(node.store.has(CID.of(c)))  # refused before any write
        # A block already held under the key costs nothing more, for another peer's lease too.
        self.successResultOf(self.hold(node, "cd" * 32, CID.of(a), a, key))
        self.assertEqual(node.held_bytes(), 2000)
        self.assertEqual(node.index.leases.holders(key), [bytes.fromhex(PEER), bytes.fromhex("cd" * 32)])

    def test_quota_counts_writes_in_progress(self) -> None:
        runner = ManualRunner()
        node = make_node(self, run=runner, quota=1500)
        a, b = os.urandom(1000), os.urandom(1000)
        da = node.hold_block(PEER, CID.of(a), a)  # queued, not written yet
        self.failureResultOf(node.hold_block(PEER, CID.of(b), b), QuotaExceeded)
        runner.run_all()
        node.reactor.advance(0)
        self.assertTrue(self.successResultOf(da))
        self.assertEqual(node.held_bytes(), 1000)

    def test_a_bad_copy_of_a_block_cannot_free_the_good_ones_reservation(self) -> None:
        runner = ManualRunner()
        node = make_node(self, run=runner, quota=10_000)
        good = os.urandom(1000)
        cid = CID.of(good)
        d1 = node.hold_block(PEER, cid, good)
        d2 = node.hold_block(PEER, cid, os.urandom(5000))  # the same id, bytes that do not match it
        runner.run_all()
        node.reactor.advance(0)
        self.assertTrue(self.successResultOf(d1))
        self.failureResultOf(d2, CorruptBlock)
        self.assertEqual((node.held_bytes(), node._reserved_bytes), (1000, 0))

    def test_failed_write_frees_its_reservation(self) -> None:
        node = make_node(self, quota=1500)
        block = os.urandom(1000)
        self.failureResultOf(self.hold(node, PEER, CID.of(b"x"), block), CorruptBlock)
        self.assertEqual(node.held_bytes(), 0)
        self.successResultOf(self.hold(node, PEER, CID.of(block), block))

    def test_placement_key_recorded_and_checked_for_manifests(self) -> None:
        """The key a block was placed under is recorded; a manifest block's key must be its own id (a holder can
        tell a manifest from ciphertext), a data block's cannot be checked and is taken as sent."""
        from cas.base.errors import WrongPlacementKey
        from cas.content.manifest import ManifestBuilder, is_manifest
        from cas.network.placement import manifest_key, stripe_key

        node = make_node(self)
        data = os.urandom(5000)
        cid = CID.of(data)
        key = stripe_key(b"s" * 16, 0)
        self.assertFalse(is_manifest(data))
        self.successResultOf(self.hold(node, PEER, cid, data, key))
        self.assertEqual(node.index.hold_keys(cid), {key})
        self.successResultOf(self.hold(node, PEER, cid, data))  # sent again without a key: the key stays
        self.assertEqual(node.index.hold_keys(cid), {key})
        builder = ManifestBuilder(fanout=2)
        for link in self.links(3):
            builder.add(link)
        _nodes, root, raw = builder.finish(1 << 16, os.urandom(100), b"s" * 16)  # sealed metadata: opaque here
        self.assertTrue(is_manifest(raw))
        self.failureResultOf(self.hold(node, PEER, root, raw, key), WrongPlacementKey)
        self.assertFalse(node.store.has(root))
        self.successResultOf(self.hold(node, PEER, root, raw, manifest_key(root.to_bytes())))
        self.assertEqual(node.index.hold_keys(root), {manifest_key(root.to_bytes())})
        other = os.urandom(100)
        self.successResultOf(self.hold(node, "cd" * 32, CID.of(other), other))
        # a node of protocol version 1 said nothing: the block goes under that sender's own legacy key
        self.assertEqual(node.index.hold_keys(CID.of(other)), {legacy_key(bytes.fromhex("cd" * 32))})

    @staticmethod
    def links(n: int) -> list:
        from cas.content.manifest import Link

        return [Link(CID.of(bytes([i])), 1 << 16) for i in range(n)]

    def test_cancelled_write_still_recorded_and_unpinned(self) -> None:
        runner = ManualRunner()
        node = make_node(self, run=runner)
        block = os.urandom(1000)
        cid = CID.of(block)
        d = node.hold_block(PEER, cid, block)
        d.cancel()  # the peer cancelled while the write waits for a worker
        self.failureResultOf(d, CancelledError)
        runner.run_all()
        node.reactor.advance(0)
        self.assertTrue(node.store.has(cid))
        self.assertIn(cid, node.index.referenced())
        self.assertEqual(len(node.pins), 0)
