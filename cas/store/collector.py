"""Garbage collection of blocks no file needs, concurrent with reads and writes.

A block is kept while it is referenced in the index or pinned. Uploads pin each block before writing it and
release the pin only after its reference is committed. During a collection pass, released pins stay in
force until the pass ends, so a reference committed after the pass took its snapshot still protects its
block. The keep/delete decision is made under the block store's per-block lock, so a concurrent ``put`` of
the same block either completes before the deletion (and is then re-written by the put that follows the
pin) or after it.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Callable, Iterable

import attrs

from cas.base.cid import CID
from cas.store.blockstore import IBlockStore


class Pins:
    """Thread-safe multiset of block ids that must not be collected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[CID, int] = {}
        self._held: set[CID] | None = None  # releases during a collection pass

    def pin(self, cid: CID) -> None:
        with self._lock:
            self._counts[cid] = self._counts.get(cid, 0) + 1

    def release(self, cids: Iterable[CID]) -> None:
        with self._lock:
            for cid in cids:
                n = self._counts[cid] - 1
                if n:
                    self._counts[cid] = n
                else:
                    del self._counts[cid]
                if self._held is not None:
                    self._held.add(cid)

    def __contains__(self, cid: CID) -> bool:
        with self._lock:
            return cid in self._counts or (self._held is not None and cid in self._held)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def begin_pass(self) -> None:
        with self._lock:
            self._held = set()

    def end_pass(self) -> None:
        with self._lock:
            self._held = None


@attrs.frozen
class CollectResult:
    blocks: int
    bytes: int


def read_referenced(index_path: str) -> set[CID]:
    """Every block id the index references (own files, uploads, sessions, blocks held for others), read on a
    connection of its own, read-only: run it on a worker thread, not the reactor (200,000 ids take seconds)."""
    db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
    try:
        return {CID.parse(c) for (c,) in db.execute("SELECT cid FROM refs UNION SELECT cid FROM holds")}
    finally:
        db.close()


def collect_from_index(store: IBlockStore, pins: Pins, index_path: str) -> CollectResult:
    """A collection pass against the index's references, read after ``pins.begin_pass()`` (worker thread)."""
    return collect(store, pins, read_referenced(index_path))


def collect(store: IBlockStore, pins: Pins, referenced: set[CID]) -> CollectResult:
    """One blocking collection pass (run it on a worker thread); ``referenced`` is a snapshot taken after
    ``pins.begin_pass()``."""
    blocks = freed = 0
    keep: Callable[[CID], bool] = lambda c: c in referenced or c in pins
    deleted: list[CID] = []
    for cid in store.cids():
        if keep(cid):
            continue
        n = store.delete_unless(cid, keep)
        if n:
            blocks += 1
            freed += n
            deleted.append(cid)
            if len(deleted) >= 1000:
                store.sync_deletes(deleted)
                deleted = []
    store.sync_deletes(deleted)  # the unlinks, durably
    return CollectResult(blocks, freed)
