"""The block store: verified, durable, write-once storage of blocks on the local disk.

Layout: ``blocks/<aa>/<bb>/<cid>`` where ``aa`` and ``bb`` are the first two bytes of the BLAKE3 digest in hex
(65,536 directories: a thousand blocks per directory at 64 million blocks). Writes go to ``tmp/``, are
fsynced, renamed into place, and the directory is fsynced, so a block file is either complete or absent.
Methods block (disk I/O): call them from the node's worker pool, never from the reactor thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from typing import Callable, Iterator

from zope.interface import Interface, implementer

from cas.base.buffers import uninitialized
from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock, DiskFull, StorageLimitExceeded

MAX_BLOCK_SIZE = (1 << 20) + 64 * 1024
_NOSPACE = {errno.ENOSPC, errno.EDQUOT}


class IBlockStore(Interface):
    """Blocking storage of verified blocks by id. Every method may be called from any thread."""

    def put(cid: CID, data: bytes, verified: bool = False) -> bool:
        """Store ``data`` under ``cid`` after checking that it hashes to ``cid`` (skipped when ``verified``:
        the caller computed ``cid`` from these very bytes in this process, never for bytes from elsewhere).

        Returns False when a good copy was already there (write-once: it is not rewritten). Raises
        CorruptBlock if ``data`` does not match ``cid``, StorageFull when the limit or the disk is full."""

    def get(cid: CID) -> bytes:
        """The block's bytes, verified. Raises BlockNotFound, or CorruptBlock after quarantining it."""

    def read(cid: CID, cached_only: bool = False) -> bytes | memoryview | None:
        """The block's bytes as stored, NOT verified: for a peer that asked, which checks them itself.

        With ``cached_only``: None unless the page cache holds every byte, so the call never waits for the
        disk and the reactor thread may make it. Raises BlockNotFound."""

    def has(cid: CID) -> bool:
        """Whether a block file exists (not verified)."""

    def delete(cid: CID) -> int:
        """Remove a block; returns the bytes freed (0 if absent)."""

    def delete_unless(cid: CID, keep: Callable[[CID], bool]) -> int:
        """Remove a block unless ``keep(cid)`` holds, deciding under the block's lock (for collection)."""

    def cids() -> Iterator[CID]:
        """Every stored block id (a snapshot-free walk: blocks added meanwhile may be missed)."""

    def used() -> int:
        """Bytes held by stored blocks."""

    def free() -> int | None:
        """Bytes that may still be written: the lower of the storage limit and the disk's free space."""


@implementer(IBlockStore)
class DiskBlockStore:
    def __init__(self, root: str, limit: int | None = None) -> None:
        self.root = root
        self.limit = limit
        self._nowait = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")  # cleared if the kernel refuses it
        self.blocks_dir = os.path.join(root, "blocks")
        self.tmp_dir = os.path.join(root, "tmp")
        self.quarantine_dir = os.path.join(root, "quarantine")
        for d in (self.blocks_dir, self.tmp_dir, self.quarantine_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()  # guards _used and _reserved
        self._stripes = [threading.Lock() for _ in range(256)]  # serialises put/delete of one id
        self._tmp_seq = 0
        self._clean_tmp()
        self._used = sum(os.stat(self._path(c)).st_size for c in self.cids())
        self._reserved = 0

    # -- paths -------------------------------------------------------------------------------------------
    def _shard(self, cid: CID) -> str:
        h = cid.digest.hex()
        return os.path.join(self.blocks_dir, h[0:2], h[2:4])

    def _path(self, cid: CID) -> str:
        return os.path.join(self._shard(cid), str(cid))

    def _stripe(self, cid: CID) -> threading.Lock:
        return self._stripes[cid.digest[0]]

    def _clean_tmp(self) -> None:
        """Temporary files left by a crash are never complete blocks: remove them (and anything else there)."""
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    # -- accounting --------------------------------------------------------------------------------------
    def used(self) -> int:
        with self._lock:
            return self._used

    def free(self) -> int | None:
        st = os.statvfs(self.root)
        disk = st.f_bavail * st.f_frsize
        with self._lock:
            if self.limit is None:
                return disk
            return max(0, min(disk, self.limit - self._used - self._reserved))

    def _reserve(self, n: int) -> None:
        with self._lock:
            if self.limit is not None and self._used + self._reserved + n > self.limit:
                raise StorageLimitExceeded(
                    f"storage limit reached: {self._used} of {self.limit} bytes used, a {n}-byte block does not fit"
                )
            self._reserved += n

    def _commit(self, reserved: int, added: int) -> None:
        with self._lock:
            self._reserved -= reserved
            self._used += added

    # -- operations --------------------------------------------------------------------------------------
    def has(self, cid: CID) -> bool:
        return os.path.exists(self._path(cid))

    def put(self, cid: CID, data: bytes, verified: bool = False) -> bool:
        if len(data) > MAX_BLOCK_SIZE:
            raise CorruptBlock(f"refused a {len(data)}-byte block: the maximum is {MAX_BLOCK_SIZE}")
        if not verified and not cid.verify(data):
            raise CorruptBlock(f"refused block {cid}: its bytes do not match its id")
        path = self._path(cid)
        with self._stripe(cid):
            try:
                with open(path, "rb") as f:
                    existing = f.read(MAX_BLOCK_SIZE + 1)
            except FileNotFoundError:
                pass
            else:
                if cid.verify(existing):
                    return False
                self._quarantine(cid, path, len(existing))
            self._reserve(len(data))
            written = 0
            try:
                self._write_atomically(cid, path, data)
                written = len(data)
            finally:
                self._commit(len(data), written)
            return True

    def _write_atomically(self, cid: CID, path: str, data: bytes) -> None:
        with self._lock:
            self._tmp_seq += 1
            tmp = os.path.join(self.tmp_dir, f"{cid}.{os.getpid()}.{threading.get_ident()}.{self._tmp_seq}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            shard = self._shard(cid)
            self._makedirs_durably(shard)
            os.rename(tmp, path)
            tmp = path  # from here on, a failure must remove the (uncounted) block itself
            fsync_dir(shard)
        except OSError as e:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if e.errno in _NOSPACE:
                raise DiskFull(f"disk full: could not store a {len(data)}-byte block") from None
            raise

    def _makedirs_durably(self, shard: str) -> None:
        if os.path.isdir(shard):
            return
        parent = os.path.dirname(shard)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            fsync_dir(self.blocks_dir)
        os.makedirs(shard, mode=0o700, exist_ok=True)
        fsync_dir(parent)

    def read(self, cid: CID, cached_only: bool = False) -> bytes | memoryview | None:
        path = self._path(cid)
        if not cached_only:
            try:
                with open(path, "rb") as f:
                    return f.read(MAX_BLOCK_SIZE + 1)
            except FileNotFoundError:
                raise BlockNotFound(f"block {cid} is not stored here") from None
        if not self._nowait:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlockNotFound(f"block {cid} is not stored here") from None
        try:
            size = os.fstat(fd).st_size
            if size > MAX_BLOCK_SIZE:
                return None  # the slow path reads it and says what is wrong
            buf = uninitialized(size)  # returned only if preadv filled all of it
            try:
                n = os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
            except BlockingIOError:  # not (all) in the page cache
                return None
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a kernel or file system without RWF_NOWAIT
                    self._nowait = False
                    return None
                raise
            return buf.toreadonly() if n == size else None
        finally:
            os.close(fd)

    def get(self, cid: CID) -> bytes:
        path = self._path(cid)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BLOCK_SIZE + 1)
        except FileNotFoundError:
            raise BlockNotFound(f"block {cid} is not stored here") from None
        if not cid.verify(data):
            with self._stripe(cid):
                # A put may have replaced (or a delete removed) the copy we read: decide on the current one.
                try:
                    with open(path, "rb") as f:
                        data = f.read(MAX_BLOCK_SIZE + 1)
                except FileNotFoundError:
                    raise BlockNotFound(f"block {cid} is not stored here") from None
                if cid.verify(data):
                    return data
                self._quarantine(cid, path, len(data))
            raise CorruptBlock(f"block {cid} is corrupt on disk and was quarantined")
        return data

    def _quarantine(self, cid: CID, path: str, size: int) -> None:
        """Move a block whose bytes fail verification out of the store (kept for inspection)."""
        dest = os.path.join(self.quarantine_dir, f"{cid}.{os.getpid()}.{os.urandom(8).hex()}")  # never overwrite
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return  # someone else moved it already
        with self._lock:
            self._used -= size

    def delete(self, cid: CID) -> int:
        return self.delete_unless(cid, lambda _cid: False)

    def delete_unless(self, cid: CID, keep: Callable[[CID], bool]) -> int:
        with self._stripe(cid):
            if keep(cid):
                return 0
            path = self._path(cid)
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return 0
            with self._lock:
                self._used -= size
            return size

    def cids(self) -> Iterator[CID]:
        for a in sorted(_listdir(self.blocks_dir)):
            for b in sorted(_listdir(os.path.join(self.blocks_dir, a))):
                for name in _listdir(os.path.join(self.blocks_dir, a, b)):
                    try:
                        cid = CID.parse(name)
                    except Exception:
                        continue  # not ours: ignore foreign files
                    if cid.digest.hex()[:4] == a + b:  # a block id in the wrong shard is not a stored block
                        yield cid


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
