"""Leases on the blocks this node holds for others: who wants which placement key kept, until when.

A lease is (placement key, lease holder, expiry): the lease holder is the authenticated node id that asked,
the expiry is computed on this node's clock from the duration asked (capped by ``--max-lease-time``). A block
held for others (a ``holds`` row: who sent it, under which key) is kept while its key has a live lease; a key
whose last lease expired or was released goes into ``unleased`` and its blocks are collected one full GC
period later (``LeaseCollector`` in cas/store/expiry.py) unless a lease comes back meanwhile.

Accounting (what ``--quota`` and each peer's share count) is kept in memory, derived from the index at start
and updated by every lease change and deletion:

- ``leased_bytes``: bytes of the blocks under keys with at least one lease row (expired rows count until the
  collector removes them, at most one period: the error is on the safe side). A block under two keys counts
  under each; a second lease on a key adds nothing.
- ``peer_bytes[holder]`` and ``peer_keys[holder]``: what each lease holder's leases cover.

Blocks pushed by nodes that speak protocol version 1 (and those held before data-dir format 3) have no
placement key we can trust: they are filed under ``legacy_key(sender)``, one key per sender, which no peer can
name (keys starting with ``LEGACY`` are refused on the wire).

All calls run on the reactor thread, on the index's connection.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence

from cas.base.cid import CID

LEGACY = b"cas/legacy/v1/"
DAY = 86400
LEASE_TIME = 31 * DAY  # what this node's uploads ask for
MAX_LEASE_TIME = 62 * DAY  # the most this node grants

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    key BLOB NOT NULL,
    holder BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (key, holder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires);
CREATE INDEX IF NOT EXISTS leases_by_holder ON leases (holder);
CREATE TABLE IF NOT EXISTS unleased (
    key BLOB PRIMARY KEY,
    since INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_by_key ON holds (key);
CREATE TABLE IF NOT EXISTS key_info (
    key BLOB PRIMARY KEY,
    origin BLOB NOT NULL,
    n INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held_keys (
    key BLOB PRIMARY KEY,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
"""
KEY_BYTES = "SELECT key, SUM(size) FROM (SELECT DISTINCT key, cid, size FROM holds) GROUP BY key"


def create_tables(db: sqlite3.Connection) -> None:
    """The tables, statement by statement (``executescript`` would commit the caller's transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def legacy_key(sender: bytes) -> bytes:
    """The key of the blocks ``sender`` (a node id) pushed without one we can trust."""
    return LEGACY + sender


class LeaseBook:
    """The ``leases`` and ``unleased`` tables of the index, and the accounting derived from them."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        create_tables(db)
        self.leased_bytes = 0
        self.peer_bytes: dict[bytes, int] = defaultdict(int)
        self.peer_keys: dict[bytes, int] = defaultdict(int)
        self.recount()

    def recount(self) -> None:
        """Derive the accounting from the tables (at start, and in tests to check the running figures); the bytes
        per key are summed again from ``holds``, the truth."""
        self.db.execute("DELETE FROM held_keys")
        self.db.execute(f"INSERT INTO held_keys {KEY_BYTES}")
        key_bytes = "(SELECT key, bytes AS kb FROM held_keys)"
        self.peer_bytes.clear()
        self.peer_keys.clear()
        for holder, n, kb in self.db.execute(
            f"SELECT l.holder, count(*), COALESCE(SUM(k.kb), 0) FROM leases l LEFT JOIN {key_bytes} k "
            "ON k.key = l.key GROUP BY l.holder"
        ):
            self.peer_keys[bytes(holder)] = int(n)
            self.peer_bytes[bytes(holder)] = int(kb)
        (total,) = self.db.execute(
            f"SELECT COALESCE(SUM(kb), 0) FROM {key_bytes} WHERE key IN (SELECT key FROM leases)").fetchone()
        self.leased_bytes = int(total)

    # -- reading -------------------------------------------------------------------------------------------
    def key_bytes(self, key: bytes) -> int:
        """Bytes of the distinct blocks held under ``key`` (kept in ``held_keys``: one row read, not a sum)."""
        row = self.db.execute("SELECT bytes FROM held_keys WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def all_bytes(self) -> int:
        """Bytes held for others, leased or awaiting collection (a block under two keys counts twice)."""
        (n,) = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM held_keys").fetchone()
        return int(n)

    def holders(self, key: bytes) -> list[bytes]:
        return [bytes(h) for (h,) in self.db.execute("SELECT holder FROM leases WHERE key = ?", (key,))]

    def expiry(self, key: bytes, holder: bytes) -> int | None:
        row = self.db.execute("SELECT expires FROM leases WHERE key = ? AND holder = ?", (key, holder)).fetchone()
        return int(row[0]) if row else None

    def live(self, key: bytes, now: float) -> bool:
        return self.db.execute("SELECT 1 FROM leases WHERE key = ? AND expires > ? LIMIT 1", (key, now)).fetchone() \
            is not None

    def holds_key(self, key: bytes) -> bool:
        """At least one block is held under ``key``."""
        return self.db.execute("SELECT 1 FROM holds WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def leased_blocks(self, cids: Sequence[CID], now: int) -> set[CID]:
        """Those of ``cids`` held here under at least one lease that has not expired. Blocks under a legacy key
        (pushed by a node of protocol version 1, or before leases and not announced since) do not count: their
        lease cannot be renewed."""
        out: set[CID] = set()
        for i in range(0, len(cids), 500):
            chunk = [str(c) for c in cids[i:i + 500]]
            rows = self.db.execute(
                f"SELECT DISTINCT h.cid FROM holds h JOIN leases l ON l.key = h.key WHERE h.cid IN "
                f"({','.join('?' * len(chunk))}) AND l.expires > ? AND substr(h.key, 1, ?) != ?",
                (*chunk, now, len(LEGACY), LEGACY))
            out.update(CID.parse(c) for (c,) in rows)
        return out

    def key_info(self, key: bytes) -> tuple[bytes, int] | None:
        """(origin, copies wanted) of a key, as its uploader or a repairer said (None if nobody did)."""
        row = self.db.execute("SELECT origin, n FROM key_info WHERE key = ?", (key,)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def leases_on(self, key: bytes, now: int) -> list[tuple[bytes, int]]:
        """(lease holder, seconds left) of the live leases on ``key`` (what a repair carries to a new copy)."""
        return [(bytes(h), int(e) - now) for h, e in self.db.execute(
            "SELECT holder, expires FROM leases WHERE key = ? AND expires > ? ORDER BY expires DESC", (key, now))]

    def held_keys(self, after: bytes, limit: int) -> list[bytes]:
        """Keys with blocks held here, in key order after ``after`` (legacy keys left out: nobody repairs them)."""
        rows = self.db.execute("SELECT key FROM held_keys WHERE key > ? AND substr(key, 1, ?) != ? ORDER BY key "
                               "LIMIT ?", (after, len(LEGACY), LEGACY, limit))
        return [bytes(k) for (k,) in rows]

    def count_held_keys(self) -> int:
        (n,) = self.db.execute("SELECT count(*) FROM held_keys WHERE substr(key, 1, ?) != ?",
                               (len(LEGACY), LEGACY)).fetchone()
        return int(n)

    def blocks_of(self, key: bytes) -> tuple[list[CID], int]:
        """The blocks held under ``key``, and when the newest of them arrived (Unix seconds)."""
        rows = self.db.execute("SELECT cid, max(first) FROM holds WHERE key = ? GROUP BY cid", (key,)).fetchall()
        return [CID.parse(c) for c, _f in rows], max((int(f) for _c, f in rows), default=0)

    def has_block(self, key: bytes, cid: CID) -> bool:
        return self.db.execute("SELECT 1 FROM holds WHERE key = ? AND cid = ? LIMIT 1", (key, str(cid))).fetchone() \
            is not None

    def count(self) -> int:
        (n,) = self.db.execute("SELECT count(*) FROM leases").fetchone()
        return int(n)

    # -- changing (inside the caller's transaction) --------------------------------------------------------
    def block_added(self, key: bytes, size: int) -> None:
        """A block new under ``key`` was recorded (call before its ``holds`` row is written)."""
        self.db.execute("INSERT INTO held_keys VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET bytes = bytes + ?",
                        (key, size, size))
        holders = self.holders(key)
        if holders:
            self.leased_bytes += size
        for h in holders:
            self.peer_bytes[h] += size

    def block_removed(self, key: bytes, size: int) -> None:
        """A block is no longer under ``key`` (call before its ``holds`` row changes key)."""
        self.db.execute("UPDATE held_keys SET bytes = bytes - ? WHERE key = ?", (size, key))
        holders = self.holders(key)
        if holders:
            self.leased_bytes -= size
        for h in holders:
            self.peer_bytes[h] -= size

    def rekey(self, peer: str, cid: CID, old: bytes, new: bytes, size: int, now: int) -> None:
        """Move ``peer``'s hold of ``cid`` from key ``old`` to ``new``, keeping the accounting (the caller
        writes nothing else about the row's key). An ``old`` key left without blocks loses its leases and
        rows; a ``new`` key left without a lease waits in ``unleased`` for collection, like any other."""
        self.block_removed(old, size)
        if not self.has_block(new, cid):
            self.block_added(new, size)
        self.db.execute("UPDATE holds SET key = ? WHERE peer = ? AND cid = ?", (new, peer, str(cid)))
        if not self.holds_key(old):
            for h in self.holders(old):
                self.drop(old, h, now)
            self.db.execute("DELETE FROM held_keys WHERE key = ?", (old,))
            self.db.execute("DELETE FROM unleased WHERE key = ?", (old,))
        if not self.holders(new):
            self.db.execute("INSERT OR IGNORE INTO unleased VALUES (?, ?)", (new, now))

    def attach(self, sender: bytes, key: bytes, cids: Sequence[CID], now: int) -> int:
        """``sender`` (an origin of protocol version 2 announcing a file it stored before leases) names the
        blocks it placed under ``key``: those it pushed here without a key (held under ``legacy_key(sender)``)
        move to ``key``. The blocks moved."""
        legacy, peer, moved = legacy_key(sender), sender.hex(), 0
        for cid in cids:
            row = self.db.execute("SELECT size FROM holds WHERE peer = ? AND cid = ? AND key = ?",
                                  (peer, str(cid), legacy)).fetchone()
            if row is not None:
                self.rekey(peer, cid, legacy, key, int(row[0]), now)
                moved += 1
        return moved

    def grant(self, key: bytes, holder: bytes, expires: int) -> None:
        """Add or renew (never shorten) ``holder``'s lease on ``key``."""
        old = self.expiry(key, holder)
        if old is not None:
            if expires > old:
                self.db.execute("UPDATE leases SET expires = ? WHERE key = ? AND holder = ?", (expires, key, holder))
            return
        kb = self.key_bytes(key)
        if not self.holders(key):
            self.leased_bytes += kb
        self.db.execute("INSERT INTO leases VALUES (?, ?, ?)", (key, holder, expires))
        self.db.execute("DELETE FROM unleased WHERE key = ?", (key,))
        self.peer_bytes[holder] += kb
        self.peer_keys[holder] += 1

    def drop(self, key: bytes, holder: bytes, now: int) -> bool:
        """Remove ``holder``'s lease on ``key`` (released or expired); the key goes to ``unleased`` when no
        lease is left on it. True if there was one."""
        cur = self.db.execute("DELETE FROM leases WHERE key = ? AND holder = ?", (key, holder))
        if not cur.rowcount:
            return False
        kb = self.key_bytes(key)
        self.peer_bytes[holder] -= kb
        self.peer_keys[holder] -= 1
        if not self.peer_keys[holder]:
            del self.peer_keys[holder], self.peer_bytes[holder]
        if not self.holders(key):
            self.leased_bytes -= kb
            self.db.execute("INSERT OR IGNORE INTO unleased VALUES (?, ?)", (key, now))
        return True

    def forget_key(self, key: bytes, now: float) -> list[tuple[CID, int]]:
        """The key's blocks are to be collected: drop its ``holds`` and ``unleased`` rows (and any lease row,
        all expired); the blocks (id, size) that nothing else references any more, to delete from the store."""
        for (holder,) in self.db.execute("SELECT holder FROM leases WHERE key = ?", (key,)).fetchall():
            self.drop(key, bytes(holder), int(now))
        rows = self.db.execute("SELECT DISTINCT cid, size FROM holds WHERE key = ?", (key,)).fetchall()
        self.db.execute("DELETE FROM holds WHERE key = ?", (key,))
        self.db.execute("DELETE FROM held_keys WHERE key = ?", (key,))
        self.db.execute("DELETE FROM unleased WHERE key = ?", (key,))
        self.db.execute("DELETE FROM key_info WHERE key = ?", (key,))
        gone = []
        for c, size in rows:
            if self.db.execute("SELECT 1 FROM holds WHERE cid = ? UNION ALL SELECT 1 FROM refs WHERE cid = ? LIMIT 1",
                               (c, c)).fetchone() is None:
                gone.append((CID.parse(c), int(size)))
        return gone

    def unleased(self, before: int, limit: int, after: bytes = b"") -> list[bytes]:
        """Keys without a lease since before ``before`` (wall clock), in key order after ``after``."""
        rows = self.db.execute("SELECT key FROM unleased WHERE since <= ? AND key > ? ORDER BY key LIMIT ?",
                               (before, after, limit))
        return [bytes(k) for (k,) in rows]


def expired(db: sqlite3.Connection, now: float, limit: int) -> list[tuple[bytes, bytes]]:
    """(key, holder) of leases that have expired, by expiry: a read on any connection (the collector's is its
    own, read-only, on a worker thread)."""
    rows = db.execute("SELECT key, holder FROM leases WHERE expires <= ? ORDER BY expires LIMIT ?", (int(now), limit))
    return [(bytes(k), bytes(h)) for k, h in rows]


def grace_leases(db: sqlite3.Connection, now: int, lease_time: int) -> int:
    """Data-dir format 2 to 3 (inside the migration's transaction): every block held so far gets a key
    (``legacy_key(sender)`` where it had none) and its sender a lease of ``lease_time`` on it."""
    for (peer,) in db.execute("SELECT DISTINCT peer FROM holds WHERE key IS NULL").fetchall():
        db.execute("UPDATE holds SET key = ? WHERE peer = ? AND key IS NULL", (legacy_key(bytes.fromhex(peer)), peer))
    create_tables(db)
    db.execute(f"INSERT OR REPLACE INTO held_keys {KEY_BYTES}")
    rows: Sequence[tuple[bytes, str]] = db.execute("SELECT DISTINCT key, peer FROM holds").fetchall()
    db.executemany("INSERT OR IGNORE INTO leases VALUES (?, ?, ?)",
                   ((key, bytes.fromhex(peer), now + lease_time) for key, peer in rows))
    return len(rows)


def read_incomplete(path: str, has: Callable[[CID], bool], keys: list[bytes]) -> set[bytes]:
    """Those of ``keys`` with a block held under them that is no longer in the store (``has``), read on a
    read-only connection of its own (run on a worker thread: a stat per block)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: set[bytes] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for key, cid in db.execute(f"SELECT key, cid FROM holds WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                if bytes(key) not in out and not has(CID.parse(cid)):
                    out.add(bytes(key))
        return out
    finally:
        db.close()
