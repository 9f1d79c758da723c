"""The block store: verified, durable, write-once storage of blocks on the local disk.

Layout: ``blocks/<aa>/<bb>/<cid>`` where ``aa`` and ``bb`` are the first two bytes of the BLAKE3 digest in hex
(65,536 directories: a thousand blocks per directory at 64 million blocks). Writes go to ``tmp/``, are
fsynced, renamed into place, and the directory is fsynced, so a block file is either complete or absent.
Methods block (disk I/O): call them from the node's worker pool, never from the reactor thread.

Accounting: bytes and files are counted per shard directory, so that a scrub visiting a shard can compare the
count with the files there (``reconcile``) and correct what changed behind the store's back (a block file
deleted or truncated by hand or by a failing disk). Quarantined copies count apart and are bounded
(``quarantine_limit``: the oldest go first).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from array import array
from typing import Callable, Iterator

from zope.interface import Interface, implementer

from cas.base.buffers import uninitialized
from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock, DiskFull, StorageLimitExceeded

MAX_BLOCK_SIZE = (1 << 20) + 64 * 1024
SHARDS = 1 << 16
QUARANTINE_LIMIT = 256 << 20  # bytes of quarantined copies kept for inspection at most (the oldest go first)
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
    def __init__(self, root: str, limit: int | None = None, quarantine_limit: int = QUARANTINE_LIMIT) -> None:
        self.root = root
        self.limit = limit
        self.quarantine_limit = quarantine_limit
        self._nowait = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")  # cleared if the kernel refuses it
        self.blocks_dir = os.path.join(root, "blocks")
        self.tmp_dir = os.path.join(root, "tmp")
        self.quarantine_dir = os.path.join(root, "quarantine")
        for d in (self.blocks_dir, self.tmp_dir, self.quarantine_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()  # guards the counts
        self._stripes = [threading.Lock() for _ in range(256)]  # serialises put/delete of one id
        self._tmp_seq = 0
        self._clean_tmp()
        self._shard_bytes = array("q", bytes(8 * SHARDS))  # what the store believes each shard holds
        self._shard_files = array("q", bytes(8 * SHARDS))
        self._used = self._files = 0
        for c in self.cids():
            try:
                self._count(c, os.stat(self._path(c)).st_size, 1)
            except FileNotFoundError:
                pass
        self._quarantined = sum(_size(os.path.join(self.quarantine_dir, n)) for n in _listdir(self.quarantine_dir))
        self._reserved = 0

    # -- paths -------------------------------------------------------------------------------------------
    def _shard(self, cid: CID) -> str:
        h = cid.digest.hex()
        return os.path.join(self.blocks_dir, h[0:2], h[2:4])

    def _path(self, cid: CID) -> str:
        return os.path.join(self._shard(cid), str(cid))

    def _stripe(self, cid: CID) -> threading.Lock:
        return self._stripes[cid.digest[0]]

    def _count(self, cid: CID, size: int, files: int) -> None:
        """Add a block file (``files`` 1) or take one away (-1, ``size`` negative) from the accounting."""
        s = int.from_bytes(cid.digest[:2], "big")
        with self._lock:
            self._used += size
            self._files += files
            self._shard_bytes[s] += size
            self._shard_files[s] += files

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

    def files(self) -> int:
        with self._lock:
            return self._files

    def quarantined(self) -> int:
        """Bytes of quarantined copies (they count against the storage limit too)."""
        with self._lock:
            return self._quarantined

    def free(self) -> int | None:
        st = os.statvfs(self.root)
        disk = st.f_bavail * st.f_frsize
        with self._lock:
            if self.limit is None:
                return disk
            return max(0, min(disk, self.limit - self._used - self._reserved - self._quarantined))

    def _reserve(self, n: int) -> None:
        with self._lock:
            if self.limit is not None and self._used + self._reserved + self._quarantined + n > self.limit:
                raise StorageLimitExceeded(
                    f"storage limit reached: {self._used} of {self.limit} bytes used, a {n}-byte block does not fit"
                )
            self._reserved += n

    def _commit(self, cid: CID, reserved: int, added: int) -> None:
        with self._lock:
            self._reserved -= reserved
        if added:
            self._count(cid, added, 1)

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
                self._quarantine(cid, path)
            self._reserve(len(data))
            written = 0
            try:
                self._write_atomically(cid, path, data)
                written = len(data)
            finally:
                self._commit(cid, len(data), written)
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
                self._quarantine(cid, path)
            raise CorruptBlock(f"block {cid} is corrupt on disk and was quarantined")
        return data

    def _quarantine(self, cid: CID, path: str) -> None:
        """Move a block whose bytes fail verification out of the store (kept for inspection, within
        ``quarantine_limit``). Called under the block's stripe lock."""
        dest = os.path.join(self.quarantine_dir, f"{cid}.{os.getpid()}.{os.urandom(8).hex()}")  # never overwrite
        try:
            size = os.stat(path).st_size
            os.rename(path, dest)
        except FileNotFoundError:
            return  # someone else moved it already
        fsync_dir(self.quarantine_dir)
        fsync_dir(os.path.dirname(path))
        # The file left the store: its shard is counted again from its files (a truncated file was counted at the
        # size it had when written), and the copy counts in quarantine.
        self._reconcile_locked(int.from_bytes(cid.digest[:2], "big"))
        with self._lock:
            self._quarantined += size
        self._trim_quarantine()

    def _trim_quarantine(self) -> None:
        """The oldest quarantined copies go while there are more bytes than ``quarantine_limit``."""
        if self.quarantined() <= self.quarantine_limit:
            return
        entries = []
        for name in _listdir(self.quarantine_dir):
            path = os.path.join(self.quarantine_dir, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, path, st.st_size))
        for _mtime, path, size in sorted(entries):
            if self.quarantined() <= self.quarantine_limit:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            with self._lock:
                self._quarantined -= size

    def check(self, cid: CID) -> bool | None:
        """Read and verify a stored block (a scrub): True if good, False if it was corrupt (now quarantined),
        None if it is not stored."""
        try:
            self.get(cid)
        except BlockNotFound:
            return None
        except CorruptBlock:
            return False
        return True

    def live_shards(self, group: int) -> list[int]:
        """The shards of one group (the 256 whose ids start with byte ``group``) that have a directory or are
        counted as holding something: the others have nothing to check."""
        names = set(_listdir(os.path.join(self.blocks_dir, f"{group:02x}")))
        with self._lock:
            return [s for s in range(group << 8, (group + 1) << 8)
                    if f"{s & 0xFF:02x}" in names or self._shard_files[s] or self._shard_bytes[s]]

    def shard_cids(self, shard: int) -> list[CID]:
        """The blocks stored in one shard directory (0 to ``SHARDS`` - 1)."""
        a, b = f"{shard >> 8:02x}", f"{shard & 0xFF:02x}"
        out = []
        for name in _listdir(os.path.join(self.blocks_dir, a, b)):
            try:
                cid = CID.parse(name)
            except Exception:
                continue
            if cid.digest[:2] == bytes((shard >> 8, shard & 0xFF)):
                out.append(cid)
        return out

    def reconcile(self, shard: int) -> tuple[int, int]:
        """Make the accounting of one shard match its files (a block file deleted or truncated behind the store's
        back): (bytes, files) corrected, 0 when it was right. Under the shard's stripe lock: no put or delete
        of its blocks runs meanwhile."""
        with self._stripes[shard >> 8]:
            return self._reconcile_locked(shard)

    def _reconcile_locked(self, shard: int) -> tuple[int, int]:
        size = files = 0
        for cid in self.shard_cids(shard):
            n = _size(self._path(cid))
            if n is not None:
                size, files = size + n, files + 1
        with self._lock:
            dsize, dfiles = size - self._shard_bytes[shard], files - self._shard_files[shard]
            self._shard_bytes[shard], self._shard_files[shard] = size, files
            self._used += dsize
            self._files += dfiles
        return dsize, dfiles

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
            self._count(cid, -size, -1)
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


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


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
