"""The uploading side's record of where its blocks went, what leases it holds there, and what it must release.

- ``owner_keys``: the placement keys of each owner (``upload:<n>`` while an upload runs, ``session:<id>`` for a
  resumable upload, ``file:<root>`` once recorded, ``pin:<root>`` for a file of another node pinned here). A
  key belongs to one owner: salts are random per upload, a manifest key names a manifest of one file, and a
  node does not pin a file it stored.
- ``placed``: per (key, holder), the lease this node holds or asked for there: ``wanted`` (its length:
  ``PROVISIONAL`` while the upload is not recorded, ``--lease-time`` after), ``expires`` (as granted, on this
  node's clock) and ``due`` (when to renew: half the length before the expiry). A row is written before the
  first block under that key is sent to that holder, in its own transaction: an upload cut by a crash leaves
  the rows, and the next start releases them.
- ``releases``: releases not delivered yet (holder, key, ``until``: when the lease would have ended anyway).

All calls run on the reactor thread, on the index's connection, inside the caller's transaction unless they
say otherwise.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable

PROVISIONAL = 3600  # seconds of the lease on the blocks of an upload not recorded yet (renewed as it goes)
MAX_RELEASES = 1_000_000  # undelivered releases kept at most; past it the soonest to expire are dropped

SCHEMA = """
CREATE TABLE IF NOT EXISTS owner_keys (
    owner TEXT NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owner_keys_by_key ON owner_keys (key);
CREATE TABLE IF NOT EXISTS placed (
    key BLOB NOT NULL,
    holder BLOB NOT NULL,
    wanted INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    due INTEGER NOT NULL,
    PRIMARY KEY (key, holder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS placed_by_due ON placed (due);
CREATE INDEX IF NOT EXISTS placed_by_expires ON placed (expires);
CREATE TABLE IF NOT EXISTS releases (
    holder BLOB NOT NULL,
    key BLOB NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (holder, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS releases_by_until ON releases (until);
"""


def renew_after(granted: int) -> int:
    """When a lease of ``granted`` seconds is renewed: half-way, less a random eighth, so that the leases of
    files stored together (one upload, one announce) are not all due in the same round again."""
    return granted // 2 - random.randrange(granted // 8 + 1)


class Placements:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)

    # -- placing ----------------------------------------------------------------------------------------------
    def plan(self, owner: str, key: bytes, holders: Iterable[bytes], wanted: int, now: int) -> None:
        """``owner`` is about to send blocks under ``key`` to ``holders``, asking for leases of ``wanted``."""
        self.db.execute("INSERT OR IGNORE INTO owner_keys VALUES (?, ?)", (owner, key))
        self.db.executemany("INSERT OR IGNORE INTO placed VALUES (?, ?, ?, ?, ?)",
                            ((key, h, wanted, now + wanted, now + wanted // 2) for h in holders))

    def commit(self, upload_owner: str, owner: str, lease_time: int) -> None:
        """The upload is recorded as ``owner``: its keys become the file's, and its provisional leases are due
        to become full ones at once."""
        self.db.execute("UPDATE placed SET wanted = ?, due = 0 WHERE key IN (SELECT key FROM owner_keys WHERE "
                        "owner = ?)", (lease_time, upload_owner))
        self.db.execute("INSERT OR IGNORE INTO owner_keys SELECT ?, key FROM owner_keys WHERE owner = ?",
                        (owner, upload_owner))
        self.db.execute("DELETE FROM owner_keys WHERE owner = ?", (upload_owner,))

    def holders(self, owner: str) -> dict[bytes, list[bytes]]:
        """Placement key -> the holders asked to keep blocks under it, for one owner's keys."""
        out: dict[bytes, list[bytes]] = {}
        for key, holder in self.db.execute(
            "SELECT p.key, p.holder FROM owner_keys o JOIN placed p ON p.key = o.key WHERE o.owner = ? "
            "ORDER BY p.key, p.holder", (owner,)
        ):
            out.setdefault(bytes(key), []).append(bytes(holder))
        return out

    def lease_expiries(self, keys: list[bytes]) -> dict[tuple[bytes, bytes], int]:
        """(key, holder) -> when this node's lease there ends (as last granted), for ``keys``."""
        out: dict[tuple[bytes, bytes], int] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for k, h, e in self.db.execute(
                f"SELECT key, holder, expires FROM placed WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ):
                out[(bytes(k), bytes(h))] = int(e)
        return out

    # -- renewing ---------------------------------------------------------------------------------------------
    def due(self, now: int, limit: int) -> list[tuple[bytes, bytes, int]]:
        """(holder, key, wanted) of the leases to take or renew now, the most urgent first."""
        rows = self.db.execute("SELECT holder, key, wanted FROM placed WHERE due <= ? ORDER BY due LIMIT ?",
                               (now, limit))
        return [(bytes(h), bytes(k), int(w)) for h, k, w in rows]

    def renewed(self, holder: bytes, outcome: Iterable[tuple[bytes, bool, bool]], granted: int, now: int,
                retry: int) -> None:
        """A holder answered a LEASE, per key (granted, complete): a key granted with every block still there
        expires ``granted`` seconds from ``now``. A key granted with blocks missing no longer counts as held
        (``expires`` = now: the renewal check gives its blocks to top-up) and is asked again ``retry`` seconds
        later; one not granted (the holder lost the blocks, or refuses) no longer counts either and is asked
        again half a lease later."""
        for key, ok, complete in outcome:
            if ok and complete:
                self.db.execute("UPDATE placed SET expires = ?, due = ? WHERE key = ? AND holder = ?",
                                (now + granted, now + renew_after(granted), key, holder))
            else:
                self.db.execute("UPDATE placed SET expires = min(expires, ?), due = ? + (CASE WHEN ? THEN ? ELSE "
                                "wanted / 2 END) WHERE key = ? AND holder = ?", (now, now, ok, retry, key, holder))

    def adopt(self, holder: bytes, key: bytes, wanted: int, granted: int, now: int) -> None:
        """A node this one never sent blocks under ``key`` granted a lease there with every block (a copy made
        by repair): it is one of the key's holders from now on, if the key still has an owner here (a file
        forgotten or unpinned while the answer came back is not taken up again)."""
        self.db.execute("INSERT OR REPLACE INTO placed SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM owner_keys "
                        "WHERE key = ?)", (key, holder, wanted, now + granted, now + renew_after(granted), key))

    def expired_between(self, since: int, now: int) -> set[bytes]:
        """Keys with a lease that ran out (or was found lost) in ``(since, now]``."""
        return {bytes(k) for (k,) in self.db.execute(
            "SELECT DISTINCT key FROM placed WHERE expires > ? AND expires <= ?", (since, now))}

    def short(self, keys: Iterable[bytes], now: int, replicas: int) -> dict[str, dict[bytes, list[bytes]]]:
        """Those of ``keys`` that belong to a recorded file or a pin and have fewer than ``replicas`` holders
        under a live lease: owner -> key -> the holders that still count."""
        out: dict[str, dict[bytes, list[bytes]]] = {}
        for key in keys:
            row = self.db.execute("SELECT owner FROM owner_keys WHERE key = ? AND (owner LIKE 'file:%' OR owner "
                                  "LIKE 'pin:%') LIMIT 1", (key,)).fetchone()
            if row is None:
                continue
            live = [bytes(h) for (h,) in self.db.execute("SELECT holder FROM placed WHERE key = ? AND expires > ?",
                                                         (key, now))]
            if len(live) < replicas:
                out.setdefault(row[0], {})[key] = live
        return out

    def prune(self, now: int) -> int:
        """Forget holders whose lease on a key ran out a whole lease length ago (gone for good, or refusing
        for that long): they are no longer asked. The rows forgotten."""
        return self.db.execute("DELETE FROM placed WHERE expires <= ? - wanted", (now,)).rowcount

    def retry_at(self, holder: bytes, keys: Iterable[bytes], at: int) -> None:
        """The holder did not answer: ask again at ``at``."""
        self.db.executemany("UPDATE placed SET due = ? WHERE key = ? AND holder = ?", ((at, k, holder) for k in keys))

    # -- releasing --------------------------------------------------------------------------------------------
    def owner_keys(self, owner: str) -> list[bytes]:
        return [bytes(k) for (k,) in self.db.execute("SELECT key FROM owner_keys WHERE owner = ?", (owner,))]

    def queue_releases(self, owner: str, until: int, also: Iterable[tuple[bytes, bytes]] = ()) -> list[bytes]:
        """Forget ``owner``'s placements, queueing a release of each (and of the (holder, key) pairs ``also``:
        nodes that may hold a lease of ours we did not record, such as a copy made by repair); the holders of
        recorded placements."""
        recorded = [(h, k) for k, hs in self.holders(owner).items() for h in hs]
        rows = list(dict.fromkeys([*recorded, *also]))
        self.db.execute("DELETE FROM placed WHERE key IN (SELECT key FROM owner_keys WHERE owner = ?)", (owner,))
        self.db.execute("DELETE FROM owner_keys WHERE owner = ?", (owner,))
        self.db.executemany("INSERT OR REPLACE INTO releases VALUES (?, ?, ?)", ((h, k, until) for h, k in rows))
        (n,) = self.db.execute("SELECT count(*) FROM releases").fetchone()
        if n > MAX_RELEASES:
            self.db.execute("DELETE FROM releases WHERE (holder, key) IN (SELECT holder, key FROM releases ORDER BY "
                            "until LIMIT ?)", (n - MAX_RELEASES,))
        return sorted({h for h, _k in recorded})

    def abandoned(self) -> list[str]:
        """Owners of uploads that were not recorded before the last stop."""
        return [o for (o,) in self.db.execute("SELECT DISTINCT owner FROM owner_keys WHERE owner LIKE 'upload:%'")]

    def pending_releases(self, now: int, holder: bytes | None = None, limit: int = 1024) -> dict[bytes, list[bytes]]:
        """Holder -> keys to release (at most ``limit`` in all); releases past their ``until`` are dropped."""
        self.db.execute("DELETE FROM releases WHERE until <= ?", (now,))
        if holder is None:
            rows = self.db.execute("SELECT holder, key FROM releases ORDER BY holder, key LIMIT ?", (limit,))
        else:
            rows = self.db.execute("SELECT holder, key FROM releases WHERE holder = ? ORDER BY key LIMIT ?",
                                   (holder, limit))
        out: dict[bytes, list[bytes]] = {}
        for h, k in rows:
            out.setdefault(bytes(h), []).append(bytes(k))
        return out

    def released(self, holder: bytes, keys: Iterable[bytes]) -> None:
        self.db.executemany("DELETE FROM releases WHERE holder = ? AND key = ?", ((holder, k) for k in keys))

    def count_releases(self) -> int:
        (n,) = self.db.execute("SELECT count(*) FROM releases").fetchone()
        return int(n)
