"""The owner's index (SQLite): the files this node's owner stored, with their keys, and which blocks each
file needs. It lives in the data dir (0600) because it holds read capabilities.

``holds`` records the blocks this node keeps for other nodes: which node asked (its id, hex), the block's
size, when it first and last asked, and the placement key it was placed under (``legacy_key(sender)`` when
the sender did not say: blocks held before data-dir format 2 and blocks from nodes of protocol version 1);
they are kept while a lease lives on their key (cas/store/expiry.py collects the rest).
``leases`` (cas/store/leases.py) say which node wants which placement key kept until when; ``unleased`` lists
the keys whose last lease ended, to be collected.
On the uploading side, ``owner_keys``, ``placed`` and ``releases`` (cas/store/placements.py) record where each
owner's blocks went, the leases held there, and the releases not delivered yet.
``sessions`` are resumable uploads (``POST /v1/uploads``): the file key, placement salt, name and type, an
expiry, and in ``session_links`` the data blocks stored so far, in order; their blocks are referenced by the
owner ``session:<id>`` until the file is recorded (or the session expires).
``refs`` maps an owner (``file:<root>`` for a stored file, ``upload:<n>`` for an upload in progress) to the
blocks it needs; a block no owner needs is garbage. Uploads record their blocks as they go, so memory stays
flat and an upload cut short by a crash leaves only ``upload:`` rows, dropped at the next start.
Calls are short and run on the reactor thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import attrs

from cas.base.cid import CID
from cas.base.errors import SessionNotFound
from cas.store.leases import LEGACY, LeaseBook, grace_leases
from cas.store.placements import PROVISIONAL, Placements

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    root TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    owner TEXT NOT NULL,
    cid TEXT NOT NULL,
    PRIMARY KEY (owner, cid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_cid ON refs (cid);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    peer TEXT NOT NULL,
    cid TEXT NOT NULL,
    size INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    key BLOB,
    PRIMARY KEY (peer, cid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_by_cid ON holds (cid);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    salt BLOB NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    segment_size INTEGER NOT NULL,
    min_replicas INTEGER NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    blocks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS session_links (
    id TEXT NOT NULL,
    i INTEGER NOT NULL,
    cid TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (id, i)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS announce (
    root TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pinned (
    root TEXT PRIMARY KEY,
    local INTEGER NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS underplaced (
    cid TEXT PRIMARY KEY,
    pkey BLOB NOT NULL,
    holders BLOB NOT NULL
) WITHOUT ROWID;
"""


@attrs.frozen(repr=False)
class Session:
    id: str
    key: bytes
    salt: bytes
    name: str
    content_type: str
    segment_size: int
    min_replicas: int
    created: int
    expires: int
    blocks: int  # data blocks stored so far: the upload continues at blocks x segment_size

    @property
    def owner(self) -> str:
        return f"session:{self.id}"

    @property
    def offset(self) -> int:
        return self.blocks * self.segment_size

    def __repr__(self) -> str:
        return f"Session(id={self.id}, name={self.name!r}, blocks={self.blocks})"


@attrs.frozen
class Underplaced:
    """A block of one of the owner's files that fewer holders than wanted acknowledged: ``holders`` are the
    node ids that did; repair (the origin's part) places it on more as members return or join."""

    cid: CID
    key: bytes  # its placement key
    holders: tuple[bytes, ...]


@attrs.frozen(repr=False)
class FileRecord:
    root: CID
    key: bytes
    name: str
    content_type: str
    size: int
    blocks: int
    created: int

    def __repr__(self) -> str:
        return f"FileRecord(root={self.root}, name={self.name!r}, size={self.size})"


class Index:
    def __init__(self, path: str) -> None:
        fresh = not os.path.exists(path)
        if fresh:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # Uploads that did not finish before the last stop: their blocks become garbage.
        self.db.execute("DELETE FROM refs WHERE owner LIKE 'upload:%'")
        self.leases = LeaseBook(self.db)
        self.placements = Placements(self.db)
        self.path = path
        # Uploads cut short by a crash: what they placed is released (their leases there are provisional).
        with self._transaction():
            until = int(time.time()) + PROVISIONAL
            for owner in self.placements.abandoned():
                self.placements.queue_releases(owner, until)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # With isolation_level=None, ``with self.db`` opens no transaction: each statement would commit alone.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def new_upload_owner(self) -> str:
        with self._transaction():
            self.db.execute("INSERT INTO counters VALUES ('upload', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1")
            (n,) = self.db.execute("SELECT value FROM counters WHERE name = 'upload'").fetchone()
        return f"upload:{n}"

    def add_refs(self, owner: str, cids: Iterable[CID]) -> None:
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?)", ((owner, str(c)) for c in cids))

    def drop_owner(self, owner: str, until: int = 0) -> list[bytes]:
        """An upload failed: its refs go, and what it placed is queued for release (until ``until``)."""
        with self._transaction():
            self.db.execute("DELETE FROM refs WHERE owner = ?", (owner,))
            return self._queue_releases(owner, until)

    def commit_file(
        self, upload_owner: str, rec: FileRecord, underplaced: Iterable[Underplaced] = (), session: str | None = None,
        lease_time: int = 0,
    ) -> None:
        """Turn an upload's refs into the file's refs and record the file (its blocks that still need holders),
        in one transaction; its placements become the file's, due for leases of ``lease_time``."""
        owner = f"file:{rec.root}"
        with self._transaction():
            self.placements.commit(upload_owner, owner, lease_time)
            self.db.executemany(
                "INSERT OR REPLACE INTO underplaced VALUES (?, ?, ?)",
                ((str(u.cid), u.key, b"".join(u.holders)) for u in underplaced),
            )
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(rec.root), rec.key, rec.name, rec.content_type, rec.size, rec.blocks, rec.created),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO refs SELECT ?, cid FROM refs WHERE owner = ?", (owner, upload_owner)
            )
            self.db.execute("DELETE FROM refs WHERE owner = ?", (upload_owner,))
            if session is not None:
                self.db.execute("DELETE FROM sessions WHERE id = ?", (session,))
                self.db.execute("DELETE FROM session_links WHERE id = ?", (session,))

    def forget(self, root: CID, until: int, also: Iterable[tuple[bytes, bytes]] = ()) -> list[bytes] | None:
        """Forget a file, and queue the release of every lease its blocks were placed under (until ``until``,
        when they would have expired anyway), and of ``also`` (holder, key); the recorded holders queued, or
        None if the file is not here."""
        with self._transaction():
            cur = self.db.execute("DELETE FROM files WHERE root = ?", (str(root),))
            self.db.execute("DELETE FROM refs WHERE owner = ?", (f"file:{root}",))
            holders = self.placements.queue_releases(f"file:{root}", until, also) if cur.rowcount else []
        return holders if cur.rowcount else None

    # -- pins: files of other nodes this node keeps leases on (cas/node/pinning.py) ------------------------------
    def add_pin(self, root: CID, local: bool, now: int, keys: Iterable[bytes], cids: Iterable[CID] = ()) -> None:
        """Pin a file: its placement keys become the pin's (owner ``pin:<root>``), and with a local copy its
        blocks are referenced so that collection keeps them (they are fetched after this)."""
        owner = f"pin:{root}"
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO pinned VALUES (?, ?, COALESCE((SELECT created FROM pinned WHERE "
                            "root = ?), ?))", (str(root), int(local), str(root), now))
            self.db.executemany("INSERT OR IGNORE INTO owner_keys VALUES (?, ?)", ((owner, k) for k in keys))
            self.db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?)", ((owner, str(c)) for c in cids))

    def pinned(self, root: CID) -> tuple[bool, int] | None:
        """(local copy, created) of a pin, or None."""
        row = self.db.execute("SELECT local, created FROM pinned WHERE root = ?", (str(root),)).fetchone()
        return (bool(row[0]), int(row[1])) if row else None

    def pins(self) -> list[tuple[str, bool, int, int, int]]:
        """(root, local, created, keys, holders) of every pin, oldest first."""
        rows = self.db.execute(
            "SELECT p.root, p.local, p.created, (SELECT count(*) FROM owner_keys o WHERE o.owner = 'pin:' || p.root), "
            "(SELECT count(DISTINCT pl.holder) FROM owner_keys o JOIN placed pl ON pl.key = o.key "
            "WHERE o.owner = 'pin:' || p.root) FROM pinned p ORDER BY p.created, p.root")
        return [(r, bool(loc), int(c), int(k), int(h)) for r, loc, c, k, h in rows]

    def drop_pin(self, root: CID, until: int, also: Iterable[tuple[bytes, bytes]] = ()) -> list[bytes] | None:
        """Unpin: the local copy's refs go, and the pin's leases are queued for release (until ``until``); the
        holders queued, or None if the file is not pinned."""
        with self._transaction():
            cur = self.db.execute("DELETE FROM pinned WHERE root = ?", (str(root),))
            if not cur.rowcount:
                return None
            self.db.execute("DELETE FROM refs WHERE owner = ?", (f"pin:{root}",))
            return self.placements.queue_releases(f"pin:{root}", until, also)

    # -- files stored before leases (data-dir format < 3), to announce to their holders (cas/network/announce.py)
    def to_announce(self, limit: int) -> list[CID]:
        return [CID.parse(r) for (r,) in self.db.execute("SELECT root FROM announce ORDER BY root LIMIT ?", (limit,))]

    def adopt_keys(self, root: CID, keys: Iterable[bytes]) -> None:
        """The keys are the file's (its placements are recorded as holders grant leases)."""
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO owner_keys VALUES (?, ?)", ((f"file:{root}", k) for k in keys))

    def announced(self, root: CID) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM announce WHERE root = ?", (str(root),))

    def _queue_releases(self, owner: str, until: int) -> list[bytes]:
        return self.placements.queue_releases(owner, until)

    def plan_placement(self, owner: str, key: bytes, holders: Iterable[bytes], wanted: int, now: int) -> None:
        """Before blocks under ``key`` go to ``holders``: durably (its own transaction)."""
        with self._transaction():
            self.placements.plan(owner, key, holders, wanted, now)

    def add_placed(self, key: bytes, holders: Iterable[bytes], wanted: int, now: int) -> None:
        """More holders took blocks under ``key`` (top-up), under leases of ``wanted``."""
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO placed VALUES (?, ?, ?, ?, ?)",
                                ((key, h, wanted, now + wanted, now + wanted // 2) for h in holders))

    def pending_releases(self, now: int, holder: bytes | None = None, limit: int = 1024) -> dict[bytes, list[bytes]]:
        return self.placements.pending_releases(now, holder, limit)

    def released(self, holder: bytes, keys: Iterable[bytes]) -> None:
        with self._transaction():
            self.placements.released(holder, keys)

    def count_releases(self) -> int:
        return self.placements.count_releases()

    def renewed(self, holder: bytes, outcome: Iterable[tuple[bytes, bool, bool]], granted: int, now: int,
                retry: int, adopted: Iterable[tuple[bytes, int]] = ()) -> None:
        with self._transaction():
            self.placements.renewed(holder, outcome, granted, now, retry)
            for key, wanted in adopted:
                self.placements.adopt(holder, key, wanted, granted, now)

    def short_keys(self, keys: Iterable[bytes], since: int, now: int, replicas: int
                   ) -> dict[str, dict[bytes, list[bytes]]]:
        """Keys of recorded files left with fewer than ``replicas`` live holders: among ``keys`` and the keys
        whose leases ran out in ``(since, now]``; holders lost for a whole lease length are forgotten first."""
        with self._transaction():
            self.placements.prune(now)
            return self.placements.short(set(keys) | self.placements.expired_between(since, now), now, replicas)

    def add_underplaced(self, rows: Iterable[Underplaced]) -> None:
        """Blocks top-up is to give more holders (rows already there are replaced: fresher holders)."""
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO underplaced VALUES (?, ?, ?)",
                                ((str(u.cid), u.key, b"".join(u.holders)) for u in rows))

    def retry_leases(self, holder: bytes, keys: Iterable[bytes], at: int) -> None:
        with self._transaction():
            self.placements.retry_at(holder, keys, at)

    def get(self, root: CID) -> FileRecord | None:
        row = self.db.execute("SELECT * FROM files WHERE root = ?", (str(root),)).fetchone()
        return _record(row) if row else None

    def files(self) -> list[FileRecord]:
        return [_record(r) for r in self.db.execute("SELECT * FROM files ORDER BY created, rowid")]

    def count(self) -> int:
        (n,) = self.db.execute("SELECT count(*) FROM files").fetchone()
        return int(n)

    def random_file(self) -> FileRecord | None:
        """One of this node's files, drawn at random (the owner's audits)."""
        row = self.db.execute("SELECT * FROM files ORDER BY random() LIMIT 1").fetchone()
        return _record(row) if row else None

    def referenced(self) -> set[CID]:
        rows = self.db.execute("SELECT cid FROM refs UNION SELECT cid FROM holds")
        return {CID.parse(c) for (c,) in rows}

    # -- blocks held for other nodes ---------------------------------------------------------------------------
    def is_held(self, cid: CID) -> bool:
        return self.db.execute("SELECT 1 FROM holds WHERE cid = ? LIMIT 1", (str(cid),)).fetchone() is not None

    def record_holds(self, holds: Iterable[tuple[str, CID, int, int, bytes, int]],
                     info: Iterable[tuple[bytes, bytes | None, int | None, list[tuple[bytes, int]]]] = ()) -> None:
        """Record ``(peer hex, block id, size, unix time, placement key, lease expiry)`` rows, each block with
        the sender's lease on its key, in one transaction (one fsync for a batch). A block keeps the key it was
        first sent under by that peer. ``info``: per key, the origin and copies wanted (kept from the first
        sender that says) and the leases a repairer carried ([(lease holder, expiry)])."""
        with self._transaction():
            for peer, cid, size, at, key, expires in holds:
                row = self.db.execute("SELECT key FROM holds WHERE peer = ? AND cid = ?", (peer, str(cid))).fetchone()
                if row is not None and bytes(row[0]) != key:
                    if key.startswith(LEGACY):
                        continue  # sent again without a key (protocol version 1): it stays where it is
                    # the same sender names another key for a block it sent before (a block pushed without a
                    # key, now placed under its own): the block moves, as an announce would move it
                    self.leases.rekey(peer, cid, bytes(row[0]), key, int(size), at)
                elif row is None and not self.leases.has_block(key, cid):
                    self.leases.block_added(key, size)
                self.db.execute(
                    "INSERT INTO holds (peer, cid, size, first, last, key) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(peer, cid) DO UPDATE SET last = excluded.last", (peer, str(cid), size, at, at, key))
                self.leases.grant(key, bytes.fromhex(peer), expires)
            for key, origin, n, carried in info:
                if origin is not None and n is not None:
                    self.db.execute("INSERT OR IGNORE INTO key_info VALUES (?, ?, ?)", (key, origin, n))
                for holder, expiry in carried:
                    self.leases.grant(key, holder, expiry)

    def attach_legacy(self, sender: bytes, announced: Iterable[tuple[bytes, Sequence[CID]]], now: int) -> int:
        """Move the blocks ``sender`` pushed without a key to the keys it now announces (LeaseBook.attach)."""
        with self._transaction():
            return sum(self.leases.attach(sender, key, cids, now) for key, cids in announced)

    def grant_leases(self, holder: bytes, keys: Iterable[bytes], expires: int) -> None:
        with self._transaction():
            for key in keys:
                self.leases.grant(key, holder, expires)

    def drop_leases(self, holder: bytes, keys: Iterable[bytes], now: int) -> list[bool]:
        with self._transaction():
            return [self.leases.drop(key, holder, now) for key in keys]

    # -- resumable uploads -----------------------------------------------------------------------------------
    def add_session(self, s: Session) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (s.id, s.key, s.salt, s.name, s.content_type, s.segment_size, s.min_replicas, s.created,
                             s.expires, s.blocks))

    def session(self, sid: str) -> Session | None:
        row = self.db.execute("SELECT * FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None:
            return None
        i, key, salt, name, ctype, seg, minr, created, expires, blocks = row
        return Session(i, bytes(key), bytes(salt), name, ctype, seg, minr, created, expires, blocks)

    def session_links(self, sid: str, blocks: int) -> list[tuple[CID, int]]:
        rows = self.db.execute("SELECT cid, count FROM session_links WHERE id = ? AND i < ? ORDER BY i", (sid, blocks))
        return [(CID.parse(c), int(n)) for c, n in rows]

    def session_progress(self, sid: str, first: int, links: Iterable[tuple[CID, int]], refs: Iterable[CID],
                         underplaced: Iterable["Underplaced"], expires: int) -> None:
        """Record data blocks ``first``, ``first + 1``, ... of a session, the references of every block it
        stored, and the blocks short of holders, in one transaction."""
        links = list(links)
        with self._transaction():
            if self.db.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone() is None:
                raise SessionNotFound(f"upload session {sid} was dropped or expired meanwhile")
            self.db.executemany("INSERT OR REPLACE INTO session_links VALUES (?, ?, ?, ?)",
                                ((sid, first + n, str(c), count) for n, (c, count) in enumerate(links)))
            self.db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?)", ((f"session:{sid}", str(c)) for c in refs))
            self.db.executemany("INSERT OR REPLACE INTO underplaced VALUES (?, ?, ?)",
                                ((str(u.cid), u.key, b"".join(u.holders)) for u in underplaced))
            self.db.execute("UPDATE sessions SET blocks = ?, expires = ? WHERE id = ?", (first + len(links), expires, sid))

    def drop_session(self, sid: str, keep_refs: bool = False, until: int = 0) -> bool:
        """Drop an upload session; unless ``keep_refs`` (the file was recorded), its blocks become garbage and
        the leases they were placed under are queued for release until ``until``."""
        with self._transaction():
            if not keep_refs:
                self._queue_releases(f"session:{sid}", until)
            cur = self.db.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            self.db.execute("DELETE FROM session_links WHERE id = ?", (sid,))
            if not keep_refs:
                self.db.execute("DELETE FROM refs WHERE owner = ?", (f"session:{sid}",))
        return cur.rowcount > 0

    def expired_sessions(self, now: int) -> list[str]:
        return [i for (i,) in self.db.execute("SELECT id FROM sessions WHERE expires <= ?", (now,))]

    # -- blocks that need more holders ---------------------------------------------------------------------
    def underplaced(self, limit: int, after: str = "") -> list[Underplaced]:
        rows = self.db.execute(
            "SELECT cid, pkey, holders FROM underplaced WHERE cid > ? ORDER BY cid LIMIT ?", (after, limit))
        return [Underplaced(CID.parse(c), bytes(k), tuple(bytes(h[i:i + 32]) for i in range(0, len(h), 32)))
                for c, k, h in rows]

    def fewest_holders(self, cids: Iterable[CID]) -> int | None:
        """The fewest holders of any of ``cids`` still short of them (``underplaced``); None if none is."""
        fewest: int | None = None
        ids = [str(c) for c in cids]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            row = self.db.execute(
                f"SELECT min(length(holders)) FROM underplaced WHERE cid IN ({','.join('?' * len(chunk))})", chunk,
            ).fetchone()
            if row[0] is not None:
                n = int(row[0]) // 32
                fewest = n if fewest is None else min(fewest, n)
        return fewest

    def count_underplaced(self) -> int:
        (n,) = self.db.execute("SELECT count(*) FROM underplaced").fetchone()
        return int(n)

    def update_underplaced(self, done: Iterable[CID], progress: Iterable[Underplaced]) -> None:
        with self._transaction():
            self.db.executemany("DELETE FROM underplaced WHERE cid = ?", ((str(c),) for c in done))
            self.db.executemany("UPDATE underplaced SET holders = ? WHERE cid = ?",
                                ((b"".join(u.holders), str(u.cid)) for u in progress))

    def get_counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_counter(self, name: str, value: int) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
                            (name, value, value))

    def stored_cids(self, after: str, limit: int) -> list[CID]:
        """Blocks the index says are stored here (this node's files and uploads, and blocks held for others), in
        id order after ``after``: the scrub checks that each one's file is there."""
        rows = self.db.execute("SELECT cid FROM refs WHERE cid > ? UNION SELECT cid FROM holds WHERE cid > ? "
                               "ORDER BY cid LIMIT ?", (after, after, limit))
        return [CID.parse(c) for (c,) in rows]

    def count_stored(self) -> int:
        (n,) = self.db.execute("SELECT count(*) FROM (SELECT cid FROM refs UNION SELECT cid FROM holds)").fetchone()
        return int(n)

    def owners_of(self, cid: CID) -> list[str]:
        """The owners (``file:ROOT``, ``session:ID``, ``pin:ROOT``) that refer to a block stored here."""
        return [o for (o,) in self.db.execute("SELECT owner FROM refs WHERE cid = ?", (str(cid),))]

    def hold_keys(self, cid: CID) -> set[bytes | None]:
        """The placement keys this block is held under (None: not known)."""
        return {k for (k,) in self.db.execute("SELECT key FROM holds WHERE cid = ?", (str(cid),))}

    def holds_of(self, cid: CID) -> list[tuple[str, int, int]]:
        """``(peer hex, first, last)`` for every node this block is held for."""
        rows = self.db.execute("SELECT peer, first, last FROM holds WHERE cid = ? ORDER BY peer", (str(cid),))
        return [(p, int(f), int(la)) for p, f, la in rows]


def _record(row: tuple) -> FileRecord:
    root, key, name, ctype, size, blocks, created = row
    return FileRecord(CID.parse(root), bytes(key), name, ctype, size, blocks, created)


def add_hold_keys(path: str) -> str:
    """Data-dir format 1 to 2: ``holds`` gains the placement key of each block (NULL for those held so far).
    One transaction, and a second run does nothing: a crash before the version file is written is harmless."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        columns = [row[1] for row in db.execute("PRAGMA table_info(holds)")]
        held = 0
        if columns and "key" not in columns:
            db.execute("ALTER TABLE holds ADD COLUMN key BLOB")
            (held,) = db.execute("SELECT count(*) FROM holds").fetchone()
        db.execute("COMMIT")
    finally:
        db.close()
    return f"blocks held for other nodes now record their placement key ({held} held so far, key unknown)"


def add_leases(path: str, now: int, lease_time: int) -> str:
    """Data-dir format 2 to 3: leases. Every block held so far gets a grace lease of ``lease_time`` for the
    node that sent it (its key, or ``legacy_key(sender)`` when it came without one). One transaction; a second
    run changes nothing (the grace leases exist)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE IF NOT EXISTS holds (peer TEXT NOT NULL, cid TEXT NOT NULL, size INTEGER NOT NULL, "
                   "first INTEGER NOT NULL, last INTEGER NOT NULL, key BLOB, PRIMARY KEY (peer, cid)) WITHOUT ROWID")
        n = grace_leases(db, now, lease_time)
        # The files stored so far have no placements recorded: the node announces them to their holders.
        db.execute("CREATE TABLE IF NOT EXISTS announce (root TEXT PRIMARY KEY) WITHOUT ROWID")
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").fetchone():
            db.execute("INSERT OR IGNORE INTO announce SELECT root FROM files")
        db.execute("COMMIT")
    finally:
        db.close()
    return f"leases: {n} grace lease(s) of {lease_time // 86400} days for the blocks held so far"
