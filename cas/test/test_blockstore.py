"""Tests for cas.store.blockstore.DiskBlockStore: verification, write-once, quarantine, atomicity, durability
calls, limits, disk-full handling and thread safety."""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock, DiskFull, StorageFull, StorageLimitExceeded
from cas.store import blockstore
from cas.store.blockstore import MAX_BLOCK_SIZE, DiskBlockStore


def make_block(n: int, size: int = 100) -> tuple[CID, bytes]:
    """A deterministic block of exactly ``size`` bytes, different for each ``n``."""
    seed = b"block-%d-" % n
    data = (seed * (size // len(seed) + 1))[:size]
    return CID.of(data), data


def files_under(path: str) -> list[str]:
    out = []
    for dirpath, _dirnames, filenames in os.walk(path):
        out.extend(os.path.join(dirpath, f) for f in filenames)
    return sorted(out)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def flip_byte(path: str, offset: int = 0) -> None:
    """Corrupt a file in place (same inode, same size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


class StoreTestCase(SynchronousTestCase):
    def make_store(self, limit: int | None = None, root: str | None = None) -> DiskBlockStore:
        return DiskBlockStore(root or self.mktemp(), limit=limit)

    def disk_used(self, store: DiskBlockStore) -> int:
        return sum(os.stat(p).st_size for p in files_under(store.blocks_dir))

    def assertConsistent(self, store: DiskBlockStore) -> None:
        """used() equals the bytes on disk, tmp/ is empty, and every stored block verifies."""
        self.assertEqual(store.used(), self.disk_used(store))
        self.assertEqual(os.listdir(store.tmp_dir), [])
        for path in files_under(store.blocks_dir):
            cid = CID.parse(os.path.basename(path))
            with open(path, "rb") as f:
                self.assertTrue(cid.verify(f.read()), path)


class RoundTripTests(StoreTestCase):
    def test_put_get(self) -> None:
        store = self.make_store()
        cid, data = make_block(1, 5000)
        self.assertFalse(store.has(cid))
        self.assertIs(store.put(cid, data), True)
        self.assertTrue(store.has(cid))
        self.assertEqual(store.get(cid), data)
        self.assertEqual(store.used(), 5000)
        self.assertConsistent(store)

    def test_empty_block(self) -> None:
        store = self.make_store()
        cid = CID.of(b"")
        self.assertIs(store.put(cid, b""), True)
        self.assertEqual(store.get(cid), b"")
        self.assertEqual(store.used(), 0)

    def test_layout_and_modes(self) -> None:
        store = self.make_store()
        cid, data = make_block(2)
        store.put(cid, data)
        h = cid.digest.hex()
        path = os.path.join(store.root, "blocks", h[0:2], h[2:4], str(cid))
        self.assertEqual(files_under(store.blocks_dir), [path])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(mode(path), 0o600)
        for d in (
            os.path.join(store.root, "blocks", h[0:2]),
            os.path.join(store.root, "blocks", h[0:2], h[2:4]),
            store.blocks_dir,
            store.tmp_dir,
            store.quarantine_dir,
        ):
            self.assertTrue(os.path.isdir(d), d)
            self.assertEqual(mode(d), 0o700, d)

    def test_get_absent(self) -> None:
        store = self.make_store()
        cid, _ = make_block(3)
        self.assertRaises(BlockNotFound, store.get, cid)
        # Also when the shard directories exist but the file does not.
        store.put(cid, make_block(3)[1])
        store.delete(cid)
        self.assertRaises(BlockNotFound, store.get, cid)


class VerificationTests(StoreTestCase):
    def test_put_mismatch(self) -> None:
        store = self.make_store()
        good_cid, good = make_block(1)
        store.put(good_cid, good)
        cid, data = make_block(2)
        before = store.used()
        self.assertRaises(CorruptBlock, store.put, cid, data + b"x")
        self.assertRaises(CorruptBlock, store.put, cid, good)
        self.assertFalse(store.has(cid))
        self.assertEqual(store.used(), before)
        self.assertEqual(files_under(store.tmp_dir), [])
        self.assertEqual(files_under(store.quarantine_dir), [])
        self.assertEqual(list(store.cids()), [good_cid])

    def test_max_block_size(self) -> None:
        store = self.make_store()
        big = b"\x00" * (MAX_BLOCK_SIZE + 1)
        cid = CID.of(big)
        self.assertRaises(CorruptBlock, store.put, cid, big)
        self.assertFalse(store.has(cid))
        self.assertEqual(store.used(), 0)
        self.assertEqual(os.listdir(store.tmp_dir), [])
        # The maximum itself is accepted.
        ok = b"\x00" * MAX_BLOCK_SIZE
        self.assertTrue(store.put(CID.of(ok), ok))
        self.assertEqual(store.get(CID.of(ok)), ok)
        self.assertEqual(store.used(), MAX_BLOCK_SIZE)

    def test_oversized_file_on_disk(self) -> None:
        """A stored file that grew past the maximum is not read whole: it is reported corrupt."""
        store = self.make_store()
        cid, data = make_block(1)
        store.put(cid, data)
        with open(store._path(cid), "ab") as f:
            f.write(b"\x00" * (MAX_BLOCK_SIZE + 10))
        self.assertRaises(CorruptBlock, store.get, cid)
        self.assertFalse(store.has(cid))


class WriteOnceTests(StoreTestCase):
    def test_second_put_not_rewritten(self) -> None:
        store = self.make_store()
        cid, data = make_block(1)
        self.assertTrue(store.put(cid, data))
        path = store._path(cid)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        before = os.stat(path)
        self.assertIs(store.put(cid, data), False)
        after = os.stat(path)
        self.assertEqual(after.st_ino, before.st_ino)
        self.assertEqual(after.st_mtime_ns, 1_000_000_000)
        self.assertEqual(store.used(), len(data))
        self.assertEqual(os.listdir(store.tmp_dir), [])

    def test_second_put_at_limit(self) -> None:
        """Re-storing a block already present needs no space, even when the store is full."""
        cid, data = make_block(1, 100)
        store = self.make_store(limit=100)
        store.put(cid, data)
        self.assertIs(store.put(cid, data), False)


class QuarantineTests(StoreTestCase):
    def test_corrupt_on_disk(self) -> None:
        store = self.make_store()
        cid, data = make_block(1, 300)
        other_cid, other = make_block(2, 200)
        store.put(cid, data)
        store.put(other_cid, other)
        path = store._path(cid)
        flip_byte(path, 10)
        self.assertRaises(CorruptBlock, store.get, cid)
        self.assertFalse(os.path.exists(path))
        self.assertFalse(store.has(cid))
        quarantined = os.listdir(store.quarantine_dir)
        self.assertEqual(len(quarantined), 1)
        self.assertTrue(quarantined[0].startswith(str(cid)))
        with open(os.path.join(store.quarantine_dir, quarantined[0]), "rb") as f:
            self.assertNotEqual(f.read(), data)
        self.assertEqual(store.used(), 200)
        self.assertRaises(BlockNotFound, store.get, cid)
        # The good bytes can be stored again.
        self.assertIs(store.put(cid, data), True)
        self.assertEqual(store.get(cid), data)
        self.assertEqual(store.used(), 500)
        self.assertConsistent(store)

    def test_put_over_corrupt_copy(self) -> None:
        store = self.make_store()
        cid, data = make_block(1, 300)
        store.put(cid, data)
        path = store._path(cid)
        flip_byte(path, 0)
        self.assertIs(store.put(cid, data), True)
        self.assertEqual(store.get(cid), data)
        self.assertEqual(len(os.listdir(store.quarantine_dir)), 1)
        self.assertEqual(store.used(), 300)
        self.assertConsistent(store)

    def test_put_over_truncated_copy(self) -> None:
        store = self.make_store()
        cid, data = make_block(1, 300)
        store.put(cid, data)
        os.truncate(store._path(cid), 100)
        store.put(cid, data)
        self.assertEqual(store.get(cid), data)
        self.assertEqual(len(os.listdir(store.quarantine_dir)), 1)

    def test_quarantine_keeps_every_copy(self) -> None:
        """A block corrupted twice leaves two quarantined copies: the first is not overwritten."""
        store = self.make_store()
        cid, data = make_block(1, 300)
        store.put(cid, data)
        flip_byte(store._path(cid), 0)
        self.assertRaises(CorruptBlock, store.get, cid)
        store.put(cid, data)
        flip_byte(store._path(cid), 1)
        store.put(cid, data)
        self.assertEqual(len(os.listdir(store.quarantine_dir)), 2)
        self.assertEqual(store.get(cid), data)

    def _hook_stripe(self, store: DiskBlockStore, cid: CID, hook: Callable[[], None]) -> None:
        """Run ``hook`` the next time someone takes ``cid``'s lock, just before it is acquired."""
        real = store._stripes[cid.digest[0]]

        class HookedLock:
            pending: Callable[[], None] | None = hook

            def __enter__(self) -> bool:
                h, HookedLock.pending = HookedLock.pending, None
                if h is not None:
                    h()
                return real.__enter__()

            def __exit__(self, *exc: object) -> None:
                real.__exit__(*exc)

        store._stripes[cid.digest[0]] = HookedLock()  # type: ignore[call-overload]

    def test_get_does_not_quarantine_a_repaired_copy(self) -> None:
        """A get that read a corrupt copy while a put replaced it with a good one must not move the good one
        away (nor count it twice)."""
        store = self.make_store()
        cid, data = make_block(1, 300)
        store.put(cid, data)
        flip_byte(store._path(cid), 0)
        self._hook_stripe(store, cid, lambda: self.assertTrue(store.put(cid, data)))
        self.assertEqual(store.get(cid), data)
        self.assertTrue(store.has(cid))
        self.assertEqual(len(os.listdir(store.quarantine_dir)), 1)
        self.assertEqual(store.used(), 300)
        self.assertConsistent(store)

    def test_get_corrupt_deleted_meanwhile(self) -> None:
        store = self.make_store()
        cid, data = make_block(1, 300)
        store.put(cid, data)
        flip_byte(store._path(cid), 0)
        self._hook_stripe(store, cid, lambda: self.assertEqual(store.delete(cid), 300))
        self.assertRaises((CorruptBlock, BlockNotFound), store.get, cid)
        self.assertEqual(store.used(), 0)
        self.assertConsistent(store)


class AtomicityTests(StoreTestCase):
    def test_fsync_failure(self) -> None:
        store = self.make_store()
        good_cid, good = make_block(0)
        store.put(good_cid, good)
        cid, data = make_block(1)

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        p = self.patch(blockstore.os, "fsync", fsync)
        e = self.assertRaises(OSError, store.put, cid, data)
        self.assertEqual(e.errno, errno.EIO)
        p.restore()
        self.assertFalse(store.has(cid))
        self.assertEqual(os.listdir(store.tmp_dir), [])
        self.assertEqual(store.used(), len(good))
        self.assertConsistent(store)
        self.assertTrue(store.put(cid, data))
        self.assertEqual(store.get(cid), data)

    def _fail_fsync_of(self, should_fail: Callable[[str], bool]) -> Any:
        real = os.fsync

        def fsync(fd: int) -> None:
            if should_fail(os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(fd)

        return self.patch(blockstore.os, "fsync", fsync)

    def test_directory_fsync_failure_after_rename(self) -> None:
        """The shard directory cannot be synced after the rename: the put fails, and the store's accounting
        still matches the disk (the block is not left behind uncounted)."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc/self/fd")
        store = self.make_store()
        cid, data = make_block(1)
        store.put(cid, data)
        store.delete(cid)  # the shard directory exists now
        shard = os.path.realpath(store._shard(cid))
        p = self._fail_fsync_of(lambda path: path == shard)
        self.assertRaises(OSError, store.put, cid, data)
        p.restore()
        self.assertFalse(store.has(cid))
        self.assertEqual(store.used(), 0)
        self.assertConsistent(store)
        self.assertTrue(store.put(cid, data))
        self.assertEqual(store.used(), len(data))

    def test_new_shard_directory_fsync_failure(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc/self/fd")
        store = self.make_store()
        cid, data = make_block(1)
        blocks = os.path.realpath(store.blocks_dir)
        p = self._fail_fsync_of(lambda path: path == blocks)
        self.assertRaises(OSError, store.put, cid, data)
        p.restore()
        self.assertFalse(store.has(cid))
        self.assertEqual(store.used(), 0)
        self.assertConsistent(store)
        self.assertTrue(store.put(cid, data))

    def test_leftover_tmp_removed_on_open(self) -> None:
        root = self.mktemp()
        store = self.make_store(root=root)
        blocks = [make_block(i, 100 + i) for i in range(5)]
        for cid, data in blocks:
            store.put(cid, data)
        store.delete(blocks[0][0])
        # A crash mid-write leaves a partial file in tmp/.
        cid, data = make_block(99)
        with open(os.path.join(store.tmp_dir, f"{cid}.1234.5678.1"), "wb") as f:
            f.write(data[:10])
        reopened = self.make_store(root=root)
        self.assertEqual(os.listdir(reopened.tmp_dir), [])
        self.assertFalse(reopened.has(cid))
        self.assertEqual(reopened.used(), sum(len(d) for _, d in blocks[1:]))
        self.assertEqual(reopened.used(), store.used())
        self.assertEqual(sorted(map(str, reopened.cids())), sorted(str(c) for c, _ in blocks[1:]))
        for c, d in blocks[1:]:
            self.assertEqual(reopened.get(c), d)

    def test_reopen_with_limit(self) -> None:
        root = self.mktemp()
        store = self.make_store(root=root)
        cid, data = make_block(1, 600)
        store.put(cid, data)
        reopened = self.make_store(root=root, limit=1000)
        self.assertEqual(reopened.used(), 600)
        self.assertRaises(StorageLimitExceeded, reopened.put, *make_block(2, 500))
        self.assertTrue(reopened.put(*make_block(3, 400)))


class DurabilityTests(StoreTestCase):
    def record_fsyncs(self, block_path: str) -> list[tuple[str, bool, bool]]:
        """Record (path, is_dir, block file exists) for each fsync, then do it."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc/self/fd")
        calls: list[tuple[str, bool, bool]] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            calls.append(
                (os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode), os.path.exists(block_path))
            )
            real(fd)

        self.patch(blockstore.os, "fsync", fsync)
        return calls

    def test_put_new_shards(self) -> None:
        store = self.make_store()
        cid, data = make_block(1)
        path = store._path(cid)
        calls = self.record_fsyncs(path)
        store.put(cid, data)
        shard = os.path.realpath(store._shard(cid))
        parent = os.path.dirname(shard)
        blocks = os.path.realpath(store.blocks_dir)
        files = [c for c in calls if not c[1]]
        dirs = {c[0]: c for c in calls if c[1]}
        # The data was synced in tmp/, before the block appeared.
        self.assertEqual(len(files), 1)
        self.assertEqual(os.path.dirname(files[0][0]), os.path.realpath(store.tmp_dir))
        self.assertFalse(files[0][2])
        # The new directories were recorded in their parents, and the rename in the shard.
        self.assertIn(blocks, dirs)
        self.assertIn(parent, dirs)
        self.assertIn(shard, dirs)
        self.assertTrue(dirs[shard][2], "shard synced before the rename")
        self.assertGreaterEqual(len(calls), 4)

    def test_put_existing_shard(self) -> None:
        store = self.make_store()
        cid, data = make_block(1)
        store.put(cid, data)
        store.delete(cid)
        calls = self.record_fsyncs(store._path(cid))
        store.put(cid, data)
        self.assertGreaterEqual(len(calls), 2)
        self.assertEqual([c[1] for c in calls], [False, True])
        self.assertFalse(calls[0][2])
        self.assertEqual(calls[1][0], os.path.realpath(store._shard(cid)))
        self.assertTrue(calls[1][2])

    def test_put_new_second_level_shard(self) -> None:
        """Same first digest byte, new second byte: the new shard is recorded in its existing parent."""
        store = self.make_store()
        first, first_data = make_block(0)
        for i in range(1, 100000):
            cid, data = make_block(i)
            if cid.digest[0] == first.digest[0] and cid.digest[1] != first.digest[1]:
                break
        store.put(first, first_data)
        calls = self.record_fsyncs(store._path(cid))
        store.put(cid, data)
        shard = os.path.realpath(store._shard(cid))
        self.assertEqual([c[0] for c in calls if c[1]], [os.path.dirname(shard), shard])

    def test_no_fsync_for_rejected_or_present(self) -> None:
        store = self.make_store()
        cid, data = make_block(1)
        store.put(cid, data)
        calls = self.record_fsyncs(store._path(cid))
        store.put(cid, data)
        self.assertRaises(CorruptBlock, store.put, cid, data + b"!")
        self.assertEqual(calls, [])


class LimitTests(StoreTestCase):
    def test_limit(self) -> None:
        store = self.make_store(limit=1000)
        self.assertEqual(store.free(), 1000)
        a, a_data = make_block(1, 600)
        self.assertTrue(store.put(a, a_data))
        self.assertEqual(store.free(), 400)
        b, b_data = make_block(2, 500)
        e = self.assertRaises(StorageLimitExceeded, store.put, b, b_data)
        self.assertIsInstance(e, StorageFull)
        self.assertFalse(store.has(b))
        self.assertEqual(os.listdir(store.tmp_dir), [])
        self.assertEqual(store.used(), 600)
        self.assertEqual(store.free(), 400)
        # Smaller blocks that fit still go in, up to the limit exactly.
        c, c_data = make_block(3, 400)
        self.assertTrue(store.put(c, c_data))
        self.assertEqual(store.used(), 1000)
        self.assertEqual(store.free(), 0)
        self.assertRaises(StorageLimitExceeded, store.put, *make_block(4, 1))
        self.assertEqual(store.delete(a), 600)
        self.assertEqual(store.free(), 600)
        self.assertTrue(store.put(b, b_data))
        self.assertEqual(store.free(), 100)
        self.assertConsistent(store)

    def test_free_without_limit(self) -> None:
        store = self.make_store()
        st = os.statvfs(store.root)
        self.assertAlmostEqual(store.free(), st.f_bavail * st.f_frsize, delta=1 << 24)

    def test_failed_write_releases_reservation(self) -> None:
        store = self.make_store(limit=1000)

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, "boom")

        p = self.patch(blockstore.os, "fsync", fsync)
        for i in range(5):
            self.assertRaises(OSError, store.put, *make_block(i, 900))
        p.restore()
        self.assertEqual(store.free(), 1000)
        self.assertTrue(store.put(*make_block(9, 1000)))


class DiskFullTests(StoreTestCase):
    def _disk_full(self, code: int) -> None:
        store = self.make_store()
        good, good_data = make_block(0)
        store.put(good, good_data)
        cid, data = make_block(1, 10000)
        real_write = os.write
        writes = []

        def write(fd: int, buf: bytes) -> int:
            writes.append(fd)
            if len(writes) == 1:  # the first write goes half way: a partial file
                return real_write(fd, bytes(buf[: len(buf) // 2]))
            raise OSError(code, os.strerror(code))

        p = self.patch(blockstore.os, "write", write)
        e = self.assertRaises(DiskFull, store.put, cid, data)
        self.assertIsInstance(e, StorageFull)
        self.assertEqual(len(writes), 2)
        self.assertFalse(store.has(cid))
        self.assertEqual(os.listdir(store.tmp_dir), [])
        self.assertEqual(store.used(), len(good_data))
        self.assertConsistent(store)
        p.restore()
        self.assertTrue(store.put(cid, data))
        self.assertEqual(store.get(cid), data)
        self.assertEqual(store.used(), len(good_data) + len(data))
        self.assertConsistent(store)

    def test_enospc(self) -> None:
        self._disk_full(errno.ENOSPC)

    def test_edquot(self) -> None:
        self._disk_full(errno.EDQUOT)

    def test_enospc_on_mkdir(self) -> None:
        store = self.make_store()
        cid, data = make_block(1)

        def makedirs(*a: object, **kw: object) -> None:
            raise OSError(errno.ENOSPC, "no space")

        p = self.patch(blockstore.os, "makedirs", makedirs)
        self.assertRaises(DiskFull, store.put, cid, data)
        p.restore()
        self.assertEqual(store.used(), 0)
        self.assertConsistent(store)
        self.assertTrue(store.put(cid, data))

    def test_other_errors_not_disk_full(self) -> None:
        store = self.make_store()

        def write(fd: int, buf: bytes) -> int:
            raise OSError(errno.EIO, "io error")

        self.patch(blockstore.os, "write", write)
        e = self.assertRaises(OSError, store.put, *make_block(1))
        self.assertNotIsInstance(e, DiskFull)
        self.assertEqual(e.errno, errno.EIO)
        self.assertEqual(os.listdir(store.tmp_dir), [])


class ListingTests(StoreTestCase):
    def test_cids(self) -> None:
        store = self.make_store()
        blocks = [make_block(i) for i in range(20)]
        for cid, data in blocks:
            store.put(cid, data)
        self.assertEqual(sorted(map(str, store.cids())), sorted(str(c) for c, _ in blocks))
        store.delete(blocks[0][0])
        self.assertEqual(sorted(map(str, store.cids())), sorted(str(c) for c, _ in blocks[1:]))

    def test_cids_ignores_foreign_files(self) -> None:
        root = self.mktemp()
        store = self.make_store(root=root)
        cid, data = make_block(1)
        store.put(cid, data)
        shard = store._shard(cid)
        with open(os.path.join(store.blocks_dir, "README"), "w") as f:
            f.write("not a block")
        with open(os.path.join(shard, "notes.txt"), "w") as f:
            f.write("hello")
        with open(os.path.join(shard, str(cid).upper()), "w") as f:
            f.write("non-canonical name")
        os.makedirs(os.path.join(store.blocks_dir, "zz", "yy"))
        with open(os.path.join(store.blocks_dir, "zz", "junk"), "w") as f:
            f.write("x")
        # A block-id name in the wrong shard is not a stored block either.
        stray_cid, stray = make_block(2)
        stray_dir = os.path.join(store.blocks_dir, "zz", "yy")
        with open(os.path.join(stray_dir, str(stray_cid)), "wb") as f:
            f.write(stray)
        self.assertEqual(list(store.cids()), [cid])
        reopened = self.make_store(root=root)
        self.assertEqual(list(reopened.cids()), [cid])
        self.assertEqual(reopened.used(), len(data))

    def test_cids_empty(self) -> None:
        self.assertEqual(list(self.make_store().cids()), [])

    def test_delete(self) -> None:
        store = self.make_store()
        a, a_data = make_block(1, 123)
        b, b_data = make_block(2, 45)
        store.put(a, a_data)
        store.put(b, b_data)
        self.assertEqual(store.delete(a), 123)
        self.assertFalse(store.has(a))
        self.assertRaises(BlockNotFound, store.get, a)
        self.assertEqual(store.used(), 45)
        self.assertEqual(store.delete(a), 0)
        self.assertEqual(store.delete(make_block(3)[0]), 0)
        self.assertEqual(store.used(), 45)
        self.assertEqual(store.get(b), b_data)

    def test_delete_unless(self) -> None:
        store = self.make_store()
        a, a_data = make_block(1, 123)
        store.put(a, a_data)
        seen = []
        self.assertEqual(store.delete_unless(a, lambda c: seen.append(c) or True), 0)
        self.assertEqual(seen, [a])
        self.assertTrue(store.has(a))
        self.assertEqual(store.delete_unless(a, lambda c: False), 123)
        self.assertFalse(store.has(a))
        self.assertEqual(store.used(), 0)

    def test_delete_unless_decides_under_lock(self) -> None:
        store = self.make_store()
        a, a_data = make_block(1)
        store.put(a, a_data)
        held = []
        store.delete_unless(a, lambda c: held.append(store._stripe(c).locked()) or False)
        self.assertEqual(held, [True])


class ThreadTests(StoreTestCase):
    def test_concurrent_put_get_delete(self) -> None:
        store = self.make_store()
        blocks = [make_block(i, 200 + 37 * i) for i in range(12)]
        errors: list[BaseException] = []
        done = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(60):
                    cid, data = rng.choice(blocks)
                    op = rng.random()
                    if op < 0.45:
                        store.put(cid, data)
                    elif op < 0.8:
                        try:
                            if store.get(cid) != data:
                                raise AssertionError("wrong data")
                        except BlockNotFound:
                            pass
                    else:
                        store.delete(cid)
                done.append(seed)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "threads did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(sorted(done), list(range(8)))
        self.assertEqual(os.listdir(store.quarantine_dir), [])
        self.assertConsistent(store)
        on_disk = {str(c) for c in store.cids()}
        self.assertEqual(store.used(), sum(len(d) for c, d in blocks if str(c) in on_disk))
        self.assertEqual(self.make_store(root=store.root).used(), store.used())

    def test_concurrent_same_block_put(self) -> None:
        """Many threads storing the same block: exactly one writes it."""
        store = self.make_store(limit=10_000)
        cid, data = make_block(1, 5000)
        results: list[bool] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait(10)
            results.append(store.put(cid, data))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(results), [False] * 7 + [True])
        self.assertEqual(store.used(), 5000)
        self.assertConsistent(store)


class AccountingTests(SynchronousTestCase):
    """``used`` and the file count stay true when a block file changes behind the store's back (deleted or
    truncated): a shard's reconcile (what the scrub runs) corrects them; quarantined copies count apart, against
    the limit, and are bounded."""

    def shard(self, cid: CID) -> int:
        return int.from_bytes(cid.digest[:2], "big")

    def test_a_deleted_block_file_is_corrected(self) -> None:
        store = DiskBlockStore(self.mktemp())
        blocks = [make_block(i, 1000) for i in range(5)]
        for cid, data in blocks:
            store.put(cid, data)
        self.assertEqual((store.used(), store.files()), (5000, 5))
        cid = blocks[0][0]
        os.unlink(store._path(cid))
        self.assertEqual(store.delete(cid), 0)  # gone already: the store cannot know what it counted
        self.assertEqual(store.reconcile(self.shard(cid)), (-1000, -1))
        self.assertEqual((store.used(), store.files()), (4000, 4))
        self.assertEqual(store.reconcile(self.shard(cid)), (0, 0))  # right now: nothing more to correct

    def test_a_truncated_block_is_quarantined_and_counted_right(self) -> None:
        store = DiskBlockStore(self.mktemp())
        cid, data = make_block(1, 1000)
        store.put(cid, data)
        with open(store._path(cid), "r+b") as f:
            f.truncate(300)
        self.assertIs(store.check(cid), False)  # corrupt: quarantined
        self.assertEqual((store.used(), store.files(), store.quarantined()), (0, 0, 300))
        self.assertIsNone(store.check(cid))  # not stored any more
        self.assertTrue(store.put(cid, data))  # a good copy back
        self.assertEqual((store.used(), store.files()), (1000, 1))
        self.assertIs(store.check(cid), True)

    def test_accounting_survives_a_restart(self) -> None:
        root = self.mktemp()
        store = DiskBlockStore(root)
        blocks = [make_block(i, 700) for i in range(4)]
        for cid, data in blocks:
            store.put(cid, data)
        with open(store._path(blocks[0][0]), "r+b") as f:
            f.write(b"\xff")
        store.check(blocks[0][0])
        again = DiskBlockStore(root)
        self.assertEqual((again.used(), again.files(), again.quarantined()), (2100, 3, 700))
        for s in {self.shard(c) for c, _d in blocks}:
            self.assertEqual(again.reconcile(s), (0, 0))

    def test_quarantine_counts_against_the_limit_and_is_bounded(self) -> None:
        store = DiskBlockStore(self.mktemp(), limit=10_000, quarantine_limit=2500)
        blocks = [make_block(i, 1000) for i in range(4)]
        for cid, data in blocks:
            store.put(cid, data)
        self.assertEqual(store.free(), 6000)
        for cid, _data in blocks:
            with open(store._path(cid), "r+b") as f:
                f.write(b"\xff")
            self.assertIs(store.check(cid), False)
        # four copies of 1,000 bytes quarantined, at most 2,500 kept: the two oldest went
        self.assertEqual(store.quarantined(), 2000)
        self.assertEqual(len(os.listdir(store.quarantine_dir)), 2)
        self.assertEqual(store.free(), 8000)
        self.assertEqual(DiskBlockStore(store.root).quarantined(), 2000)
