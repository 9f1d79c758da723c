"""Tests for cas.store.index.Index and cas.store.collector (Pins, collect), including the upload/collection race."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID
from cas.store.blockstore import DiskBlockStore
from cas.store.collector import CollectResult, Pins, collect, read_referenced
from cas.store.index import FileRecord, Index


def make_block(n: int, size: int = 100) -> tuple[CID, bytes]:
    seed = b"gc-block-%d-" % n
    data = (seed * (size // len(seed) + 1))[:size]
    return CID.of(data), data


def record(root: CID, name: str = "a.txt", created: int = 100, key: bytes = b"K" * 32) -> FileRecord:
    return FileRecord(root, key, name, "text/plain", 1234, 3, created)


class IndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "index.sqlite")
        os.makedirs(os.path.dirname(self.path))
        self.index = self.open()

    def open(self) -> Index:
        index = Index(self.path)
        self.addCleanup(index.close)
        return index

    def refs(self, index: Index) -> set[tuple[str, str]]:
        return set(index.db.execute("SELECT owner, cid FROM refs"))

    def test_file_mode(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.index.add_refs(self.index.new_upload_owner(), [make_block(1)[0]])
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                self.assertEqual(stat.S_IMODE(os.stat(self.path + suffix).st_mode) & 0o077, 0, suffix)

    def test_record_repr_hides_key(self) -> None:
        key = bytes(range(32))
        rec = record(make_block(1)[0], key=key)
        for text in (repr(rec), str(rec)):
            self.assertNotIn(repr(key), text)
            self.assertNotIn(key.hex(), text)
            self.assertNotIn("key", text.lower())
            self.assertIn(str(rec.root), text)

    def test_upload_owner_unique_and_increasing(self) -> None:
        owners = [self.index.new_upload_owner() for _ in range(5)]
        numbers = [int(o.split(":", 1)[1]) for o in owners]
        self.assertTrue(all(o.startswith("upload:") for o in owners))
        self.assertEqual(numbers, sorted(set(numbers)))
        # Also across a restart: an old owner's refs must never be mistaken for a new upload's.
        self.index.close()
        later = [int(self.open().new_upload_owner().split(":", 1)[1])]
        self.assertGreater(later[0], numbers[-1])

    def test_add_refs_and_referenced(self) -> None:
        a, b, c = (make_block(i)[0] for i in range(3))
        self.assertEqual(self.index.referenced(), set())
        up = self.index.new_upload_owner()
        self.index.add_refs(up, [a, b])
        self.index.add_refs(up, [b, a])  # duplicates are ignored
        self.index.add_refs("file:x", [c, a])
        self.assertEqual(self.index.referenced(), {a, b, c})
        self.assertEqual(len(self.refs(self.index)), 4)
        self.index.drop_owner(up)
        self.assertEqual(self.index.referenced(), {a, c})

    def test_commit_file(self) -> None:
        a, b, c = (make_block(i)[0] for i in range(3))
        root = make_block(10)[0]
        up = self.index.new_upload_owner()
        self.index.add_refs(up, [a, b, root])
        other = self.index.new_upload_owner()
        self.index.add_refs(other, [c])
        rec = record(root)
        self.index.commit_file(up, rec)
        owner = f"file:{root}"
        self.assertEqual(
            self.refs(self.index), {(owner, str(a)), (owner, str(b)), (owner, str(root)), (other, str(c))}
        )
        self.assertEqual(self.index.get(root), rec)
        self.assertEqual(self.index.files(), [rec])
        self.assertIsNone(self.index.get(a))

    def test_commit_same_file_twice(self) -> None:
        """Storing the same content twice keeps one file and the union of refs."""
        a, b = make_block(1)[0], make_block(2)[0]
        root = make_block(10)[0]
        up1 = self.index.new_upload_owner()
        self.index.add_refs(up1, [a, root])
        self.index.commit_file(up1, record(root, name="first"))
        up2 = self.index.new_upload_owner()
        self.index.add_refs(up2, [a, b, root])
        self.index.commit_file(up2, record(root, name="second"))
        self.assertEqual([r.name for r in self.index.files()], ["second"])
        owner = f"file:{root}"
        self.assertEqual(self.refs(self.index), {(owner, str(a)), (owner, str(b)), (owner, str(root))})

    def test_commit_file_is_one_transaction(self) -> None:
        """If moving the refs fails, the file is not recorded either (no file without its refs)."""
        a = make_block(1)[0]
        root = make_block(10)[0]
        up = self.index.new_upload_owner()
        self.index.add_refs(up, [a, root])
        self.index.db.execute(
            "CREATE TEMP TRIGGER fail_file_refs BEFORE INSERT ON refs WHEN NEW.owner LIKE 'file:%' "
            "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
        )
        self.assertRaises(sqlite3.DatabaseError, self.index.commit_file, up, record(root))
        self.index.db.execute("DROP TRIGGER fail_file_refs")
        self.assertIsNone(self.index.get(root))
        self.assertEqual(self.index.files(), [])
        self.assertEqual(self.refs(self.index), {(up, str(a)), (up, str(root))})
        # The connection is usable afterwards and the commit can be retried.
        self.index.commit_file(up, record(root))
        self.assertEqual(self.index.referenced(), {a, root})
        self.assertIsNotNone(self.index.get(root))

    def test_read_referenced_off_the_reactor_sees_the_same(self) -> None:
        """``read_referenced`` (a read-only connection of its own, for a worker thread) sees every reference
        the index's connection committed."""
        a, b, root = make_block(1)[0], make_block(2)[0], make_block(3)[0]
        up = self.index.new_upload_owner()
        self.index.add_refs(up, [a, root])
        self.index.commit_file(up, record(root))
        self.index.add_refs(self.index.new_upload_owner(), [b])
        self.assertEqual(read_referenced(self.index.path), self.index.referenced())
        self.assertEqual(read_referenced(self.index.path), {a, b, root})

    def test_forget(self) -> None:
        a, b = make_block(1)[0], make_block(2)[0]
        r1, r2 = make_block(10)[0], make_block(11)[0]
        for root, blocks in ((r1, [a, b, r1]), (r2, [b, r2])):
            up = self.index.new_upload_owner()
            self.index.add_refs(up, blocks)
            self.index.commit_file(up, record(root))
        self.assertEqual(self.index.forget(r1, 0), [])
        self.assertIsNone(self.index.get(r1))
        self.assertEqual([r.root for r in self.index.files()], [r2])
        self.assertEqual(self.index.referenced(), {b, r2})
        self.assertIsNone(self.index.forget(r1, 0))
        self.assertIsNone(self.index.forget(a, 0))
        self.assertEqual(self.index.referenced(), {b, r2})

    def test_files_order(self) -> None:
        roots = [make_block(i)[0] for i in range(4)]
        created = [300, 100, 200, 100]
        for root, t in zip(roots, created):
            up = self.index.new_upload_owner()
            self.index.commit_file(up, record(root, created=t))
        got = [(r.created, str(r.root)) for r in self.index.files()]
        # oldest first; files stored in the same second keep the order they were stored in
        order = sorted(range(4), key=lambda i: (created[i], i))
        self.assertEqual(got, [(created[i], str(roots[i])) for i in order])

    def test_get_roundtrip_types(self) -> None:
        root = make_block(1)[0]
        rec = FileRecord(root, bytes(range(32)), "naïve €.bin", "application/octet-stream", 2**40, 7, 1700000000)
        up = self.index.new_upload_owner()
        self.index.commit_file(up, rec)
        self.index.close()
        got = self.open().get(root)
        self.assertEqual(got, rec)
        self.assertIsInstance(got.key, bytes)
        self.assertIsInstance(got.root, CID)

    def test_reopen_drops_upload_refs(self) -> None:
        a, b, c = (make_block(i)[0] for i in range(3))
        root = make_block(10)[0]
        up = self.index.new_upload_owner()
        self.index.add_refs(up, [a, root])
        self.index.commit_file(up, record(root))
        crashed = self.index.new_upload_owner()
        self.index.add_refs(crashed, [b, c, a])
        # The process dies: the connection is never closed properly.
        reopened = self.open()
        self.assertEqual(reopened.referenced(), {a, root})
        self.assertEqual({o for o, _ in self.refs(reopened)}, {f"file:{root}"})
        self.assertEqual(reopened.files(), [record(root)])

    def test_reopen_keeps_file_refs_named_like_uploads(self) -> None:
        a = make_block(1)[0]
        self.index.add_refs("file:upload:1", [a])
        self.index.close()
        self.assertEqual(self.refs(self.open()), {("file:upload:1", str(a))})


class PinsTests(SynchronousTestCase):
    def test_multiset(self) -> None:
        pins = Pins()
        a, b = make_block(1)[0], make_block(2)[0]
        self.assertNotIn(a, pins)
        pins.pin(a)
        pins.pin(a)
        pins.pin(b)
        self.assertEqual(len(pins), 2)
        pins.release([a])
        self.assertIn(a, pins)
        pins.release([a, b])
        self.assertNotIn(a, pins)
        self.assertNotIn(b, pins)
        self.assertEqual(len(pins), 0)

    def test_release_during_pass(self) -> None:
        pins = Pins()
        a, b = make_block(1)[0], make_block(2)[0]
        pins.pin(a)
        pins.pin(b)
        pins.release([b])  # before the pass: not held
        pins.begin_pass()
        self.assertNotIn(b, pins)
        pins.release([a])
        self.assertIn(a, pins)  # held until the pass ends
        self.assertEqual(len(pins), 0)
        pins.end_pass()
        self.assertNotIn(a, pins)
        # A new pass starts with nothing held.
        pins.begin_pass()
        self.assertNotIn(a, pins)
        pins.end_pass()


class CollectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = DiskBlockStore(self.mktemp())
        self.pins = Pins()
        self.blocks = [make_block(i, 100 + i) for i in range(10)]
        for cid, data in self.blocks:
            self.store.put(cid, data)

    def cids(self, *ns: int) -> set[CID]:
        return {self.blocks[n][0] for n in ns}

    def size(self, *ns: int) -> int:
        return sum(len(self.blocks[n][1]) for n in ns)

    def stored(self) -> set[CID]:
        return set(self.store.cids())

    def run_pass(self, referenced: set[CID]) -> CollectResult:
        self.pins.begin_pass()
        try:
            return collect(self.store, self.pins, referenced)
        finally:
            self.pins.end_pass()

    def test_collect(self) -> None:
        self.pins.pin(self.blocks[3][0])
        result = self.run_pass(self.cids(0, 1, 2))
        self.assertEqual(result, CollectResult(6, self.size(4, 5, 6, 7, 8, 9)))
        self.assertEqual(self.stored(), self.cids(0, 1, 2, 3))
        self.assertEqual(self.store.used(), self.size(0, 1, 2, 3))
        # Nothing more to do.
        self.assertEqual(self.run_pass(self.cids(0, 1, 2)), CollectResult(0, 0))
        self.assertEqual(self.stored(), self.cids(0, 1, 2, 3))
        # Unpinned and unreferenced now: collected.
        self.pins.release([self.blocks[3][0]])
        self.assertEqual(self.run_pass(self.cids(0, 1, 2)), CollectResult(1, self.size(3)))
        self.assertEqual(self.stored(), self.cids(0, 1, 2))

    def test_referenced_but_absent(self) -> None:
        absent = make_block(99)[0]
        result = self.run_pass(self.cids(*range(10)) | {absent})
        self.assertEqual(result, CollectResult(0, 0))
        self.assertEqual(self.stored(), self.cids(*range(10)))

    def test_with_index(self) -> None:
        path = os.path.join(self.mktemp(), "index.sqlite")
        os.makedirs(os.path.dirname(path))
        index = Index(path)
        self.addCleanup(index.close)
        for root_n, ns in ((0, (0, 1, 2)), (5, (2, 3, 5))):
            up = index.new_upload_owner()
            index.add_refs(up, self.cids(*ns))
            index.commit_file(up, record(self.blocks[root_n][0]))
        up = index.new_upload_owner()
        index.add_refs(up, self.cids(6))  # an upload in progress
        self.assertEqual(self.run_pass(index.referenced()), CollectResult(4, self.size(4, 7, 8, 9)))
        self.assertEqual(self.stored(), self.cids(0, 1, 2, 3, 5, 6))
        # Forgetting a file frees the blocks only it needed; a shared block stays.
        index.forget(self.blocks[0][0], 0)
        self.assertEqual(self.run_pass(index.referenced()), CollectResult(2, self.size(0, 1)))
        self.assertEqual(self.stored(), self.cids(2, 3, 5, 6))
        # A crash ends the upload: its blocks are garbage after the restart.
        index.close()
        index = Index(path)
        self.addCleanup(index.close)
        self.assertEqual(self.run_pass(index.referenced()), CollectResult(1, self.size(6)))
        self.assertEqual(self.stored(), self.cids(2, 3, 5))

    def test_release_during_pass_protects(self) -> None:
        """An upload commits its ref after the pass took its snapshot, then releases its pin mid-pass: the
        block is kept for this pass; the next pass sees the ref in its snapshot."""
        cid = self.blocks[4][0]
        self.pins.pin(cid)
        self.pins.begin_pass()
        snapshot: set[CID] = set()  # taken before the upload's ref was committed
        self.pins.release([cid])  # the ref is committed now, the pin released
        result = collect(self.store, self.pins, snapshot)
        self.pins.end_pass()
        self.assertIn(cid, self.stored())
        self.assertEqual(result, CollectResult(9, self.size(*range(10)) - self.size(4)))
        # After the pass the release is no longer in force: without a ref, the block goes.
        self.assertNotIn(cid, self.pins)
        self.assertEqual(self.run_pass(set()), CollectResult(1, self.size(4)))

    def test_release_mid_walk(self) -> None:
        """The pin is released while the pass is walking the store, before the block is reached."""
        target = self.blocks[7][0]
        self.pins.pin(target)
        store, pins = self.store, self.pins
        released = []

        class Store(DiskBlockStore):
            def cids(self):  # type: ignore[override]
                for cid in DiskBlockStore.cids(self):
                    if not released:
                        released.append(cid)
                        pins.release([target])
                    yield cid

        store.__class__ = Store
        self.run_pass(set())
        self.assertTrue(released)
        self.assertEqual(self.stored(), {target})

    def _interleave(self, before: Callable[[CID], None] | None = None, after: Callable[[CID], None] | None = None):
        """Make the store call ``before(cid)`` inside ``delete_unless``, under the block's lock, right before
        the keep/delete decision; and ``after(cid)`` once delete_unless has returned."""
        calls: list[CID] = []
        real = self.store.delete_unless

        def delete_unless(cid: CID, keep: Callable[[CID], bool]) -> int:
            calls.append(cid)

            def deciding(c: CID) -> bool:
                if before is not None:
                    before(c)
                return keep(c)

            n = real(cid, deciding)
            if after is not None:
                after(cid)
            return n

        self.store.delete_unless = delete_unless  # type: ignore[method-assign]
        return calls

    def test_pin_right_before_decision(self) -> None:
        """An upload pins a block the pass already found unreferenced, just before the decision: kept."""
        cid, data = self.blocks[2]
        upload_pinned = []

        def upload_pins(c: CID) -> None:
            if c == cid and not upload_pinned:
                self.pins.pin(c)
                upload_pinned.append(c)

        calls = self._interleave(before=upload_pins)
        result = self.run_pass(set())
        self.assertIn(cid, calls, "the pass must have tried to collect it")
        self.assertEqual(upload_pinned, [cid])
        self.assertEqual(self.stored(), {cid})
        self.assertEqual(result, CollectResult(9, self.size(*range(10)) - self.size(2)))
        # The upload goes on: its put finds the good copy, it commits its ref and releases its pin.
        self.assertIs(self.store.put(cid, data), False)
        self.assertEqual(self.store.get(cid), data)
        self.pins.release([cid])
        self.assertEqual(self.run_pass({cid}), CollectResult(0, 0))
        self.assertEqual(self.stored(), {cid})

    def test_pin_and_put_just_after_deletion(self) -> None:
        """The decision went first (deleted), then the upload pins and puts: the put writes it again."""
        cid, data = self.blocks[2]
        results = []

        def upload(c: CID) -> None:
            if c == cid and not results:
                self.pins.pin(c)
                results.append(self.store.put(c, data))

        self._interleave(after=upload)
        self.pins.begin_pass()
        collect(self.store, self.pins, set())
        self.pins.release([cid])  # ref committed meanwhile, released mid-pass
        self.pins.end_pass()
        self.assertEqual(results, [True])
        self.assertEqual(self.store.get(cid), data)
        self.assertEqual(self.store.used(), len(data))


class ConcurrentCollectionTests(SynchronousTestCase):
    def test_uploads_and_collector(self) -> None:
        """Uploads (pin, put, commit ref, release) race with collection passes (begin_pass, snapshot refs,
        collect, end_pass): no block a committed ref names is ever lost."""
        store = DiskBlockStore(self.mktemp())
        pins = Pins()
        refs_lock = threading.Lock()
        refs: set[CID] = set()
        blocks = [make_block(i, 64 + i) for i in range(40)]
        stop = threading.Event()
        errors: list[BaseException] = []
        passes = []

        def uploader(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(40):
                    cid, data = rng.choice(blocks)
                    pins.pin(cid)
                    try:
                        store.put(cid, data)
                        with refs_lock:
                            refs.add(cid)
                    finally:
                        pins.release([cid])
                    if rng.random() < 0.2:
                        with refs_lock:  # a file is forgotten: its ref goes
                            refs.discard(rng.choice(blocks)[0])
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        def collector() -> None:
            try:
                while not stop.is_set() or not passes:
                    pins.begin_pass()
                    try:
                        with refs_lock:
                            snapshot = set(refs)
                        passes.append(collect(store, pins, snapshot))
                    finally:
                        pins.end_pass()
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        c = threading.Thread(target=collector)
        c.start()
        ups = [threading.Thread(target=uploader, args=(i,)) for i in range(6)]
        for t in ups:
            t.start()
        for t in ups:
            t.join(60)
        stop.set()
        c.join(60)
        self.assertFalse(c.is_alive() or any(t.is_alive() for t in ups))
        self.assertEqual(errors, [])
        self.assertTrue(passes)
        stored = set(store.cids())
        self.assertLessEqual(refs, stored, "a referenced block was collected")
        data = dict(blocks)
        for cid in refs:
            self.assertEqual(store.get(cid), data[cid])
        self.assertEqual(store.used(), sum(len(data[c]) for c in stored))
        # A final quiet pass leaves exactly the referenced blocks.
        pins.begin_pass()
        collect(store, pins, refs)
        pins.end_pass()
        self.assertEqual(set(store.cids()), refs)
