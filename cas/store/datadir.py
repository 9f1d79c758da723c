"""The node's data directory: layout, first-start initialisation and the format-version check.

    lock             flock'ed by the node using the dir, for the process's life; holds its pid
    format-version   "3"; versions 1 and 2 are upgraded at start (``MIGRATIONS``); any other is refused
    node.key         Ed25519 private key (0600)
    node.crt         self-signed certificate (0600)
    api.token        bearer token of the HTTP API (0600)
    index.sqlite     the owner's index: files, their keys, block references (0600)
    blocks/ tmp/ quarantine/   the block store
    api.url          written at every start: where the API listens
"""

from __future__ import annotations

import base64
import errno
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from cas.base.errors import DataDirError
from cas.base.identity import Identity, load_or_create, write_private
from cas.store.blockstore import fsync_dir
from cas.store.index import add_hold_keys, add_leases
from cas.store.leases import LEASE_TIME

log = Logger()

FORMAT_VERSION = 3
LOCK_NAME = "lock"
INDEX_NAME = "index.sqlite"


def _to_2(path: str, lease_time: int) -> str:
    index = os.path.join(path, INDEX_NAME)
    return add_hold_keys(index) if os.path.exists(index) else "nothing to change"


def _to_3(path: str, lease_time: int) -> str:
    index = os.path.join(path, INDEX_NAME)
    return add_leases(index, int(time.time()), lease_time) if os.path.exists(index) else "nothing to change"


# Upgrades, by the version they start from: each does its work in one transaction and can run twice; the
# version file is written after it, alone, atomically. A crash in between runs the step again at the next start.
MIGRATIONS: dict[int, Callable[[str, int], str]] = {1: _to_2, 2: _to_3}


class DirLock:
    """An exclusive ``flock`` on ``DATA_DIR/lock``: one node per data dir.

    ``flock`` belongs to the open file, so it survives twistd's fork into a daemon and is dropped only when the
    last descriptor closes (the process exits, or ``release``); ``fcntl``/``lockf`` locks would be lost at the
    fork and whenever any descriptor of the file closed. The file holds the owner's pid, for the error a second
    node shows; ``write_pid`` records the daemon's pid after the fork."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            who = f"pid {owner}" if owner else "another process"
            raise DataDirError(f"data dir {os.path.dirname(self.path)} is in use by {who}") from None
        self._fd = fd
        self.write_pid()

    def write_pid(self) -> None:
        if self._fd is not None:
            text = f"{os.getpid()}\n".encode("ascii")
            os.pwrite(self._fd, text, 0)  # then cut: a reader never sees the file empty
            os.ftruncate(self._fd, len(text))

    def still_held(self) -> bool:
        """Whether another open of the file is refused, as it must be while we hold the lock. On a network
        filesystem Linux emulates flock with a POSIX lock of the process, which twistd's fork loses."""
        if self._fd is None:
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            return e.errno in (errno.EWOULDBLOCK, errno.EACCES)
        finally:
            os.close(fd)  # drops the probe's lock, if it got one
        return False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the last descriptor of the open file: the lock goes with it

    def __del__(self) -> None:  # a DataDir dropped without release (a test's node never stopped)
        try:
            self.release()
        except OSError:
            pass


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@attrs.frozen
class DataDir:
    path: str
    lock: DirLock | None = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "path", os.path.abspath(self.path))

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def token_path(self) -> str:
        return self.join("api.token")

    def read_token(self) -> str:
        with open(self.token_path, encoding="ascii") as f:
            return f.read().strip()

    def identity(self) -> Identity:
        return load_or_create(self.join("node.key"), self.join("node.crt"))

    def release(self) -> None:
        """Let another node use this data dir (a node that stops in-process; a process's exit does it too)."""
        if self.lock is not None:
            self.lock.release()

    def write_public(self, name: str, text: str) -> None:
        tmp = self.join(name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.join(name))


def prepare(path: str, lease_time: int = LEASE_TIME) -> DataDir:
    """Create (0700) or open a data dir and lock it for this process; raises DataDirError with a one-line message
    on any problem. The lock is taken before anything in the dir is read or written (a foreign, non-empty
    directory is refused first, so nothing is created in it)."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise DataDirError(f"cannot create data dir {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise DataDirError(f"data dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not writable")
    version_file = os.path.join(path, "format-version")
    lock = DirLock(os.path.join(path, LOCK_NAME))
    try:
        _check_foreign(path, version_file)
        lock.acquire()
        if os.path.exists(version_file):
            with open(version_file, encoding="ascii", errors="replace") as f:
                text = f.read().strip()
            if text != str(FORMAT_VERSION):
                if not (text.isdigit() and int(text) in MIGRATIONS):
                    raise DataDirError(f"data dir {path} has format version {text!r}; this cas opens versions "
                                       f"{min(MIGRATIONS)} to {FORMAT_VERSION}")
                _upgrade(path, version_file, int(text), lease_time)
        else:
            _check_foreign(path, version_file)  # again under the lock: another node may have started here
            _write_version(version_file, FORMAT_VERSION)
        d = DataDir(path, lock)
        if not os.path.exists(d.token_path):
            write_private(d.token_path, (base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=") + b"\n"))
        d.identity()
        return d
    except DataDirError:
        lock.release()
        raise
    except OSError as e:
        lock.release()
        raise DataDirError(f"data dir {path}: {e.strerror} ({e.filename})") from None


def _upgrade(path: str, version_file: str, version: int, lease_time: int) -> None:
    while version < FORMAT_VERSION:
        try:
            what = MIGRATIONS[version](path, lease_time)
        except sqlite3.Error as e:  # a damaged index: say so in one line, change nothing more
            raise DataDirError(f"data dir {path}: cannot upgrade format {version} to {version + 1}: {e}") from None
        _write_version(version_file, version + 1)
        log.info("data dir {path}: format {old} upgraded to {new}: {what}", path=path, old=version, new=version + 1,
                 what=what)
        version += 1


def _write_version(version_file: str, version: int) -> None:
    """Atomically, durably: a reader sees the old version or the new, never an empty file."""
    tmp = version_file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{version}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, version_file)
    fsync_dir(os.path.dirname(version_file))


def _check_foreign(path: str, version_file: str) -> None:
    """A directory without a format-version file must be empty (but for dot files and the lock)."""
    ours = (LOCK_NAME, os.path.basename(version_file) + ".tmp")  # a first start cut short may leave these
    if not os.path.exists(version_file) and [n for n in os.listdir(path) if not n.startswith(".") and n not in ours]:
        raise DataDirError(f"{path} is not empty and is not a cas data dir (no format-version file)")
