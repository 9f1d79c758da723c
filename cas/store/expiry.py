"""Collecting the blocks held for others whose leases ended.

Every ``period`` seconds (30 by default) a pass:

1. reads expired leases from the index by expiry time, in batches, on a worker thread over a read-only
   connection of its own (WAL lets it read while the reactor writes), and drops them on the reactor thread
   (one short transaction per batch, each lease checked again: it may have been renewed meanwhile); keys left
   without a lease go to ``unleased``;
2. collects the keys that a pass at least one full period earlier (on the monotonic clock) already found in
   ``unleased`` and that still have no lease: their ``holds`` rows go in one transaction per batch, then their
   blocks that nothing else references are deleted on a worker thread (pinned blocks are kept: a block being
   written again is never lost).

So a released block is gone one to two periods after its release (about a minute by default), and a lease that
comes back within a period saves it. A pass frees at most ``MAX_SHARE`` of the bytes held for others (or 1 GiB,
whichever is more): past that it logs a warning and leaves the rest to the next passes (a mass expiry is more
often a clock jump or a bug than a wish). Between batches the reactor runs, so its callbacks wait one batch at most (bench/gc.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from cas.base import crash
from cas.base.cid import CID
from cas.store.blockstore import IBlockStore
from cas.store.collector import Pins
from cas.store.index import Index
from cas.store.leases import expired

log = Logger()

PERIOD = 30.0  # seconds between passes
BATCH = 500  # leases, keys or blocks per transaction
MAX_SHARE = 0.10  # of the bytes held for others, freed by one pass at most ...
MIN_BUDGET = 1 << 30  # ... or this many bytes, whichever is more


def read_expired(path: str, now: float, limit: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """Expired leases, and the bytes held for others in all, read on a connection of its own (read-only; run
    on a worker thread)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (held,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM holds").fetchone()
        return expired(db, now, limit), int(held)
    finally:
        db.close()


class LeaseCollector:
    def __init__(
        self, index: Index, store: IBlockStore, pins: Pins, run: Callable[..., Deferred], clock: Any,
        lock: DeferredLock, period: float = PERIOD, batch: int = BATCH, monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.index, self.store, self.pins, self.run, self.clock = index, store, pins, run, clock
        self.lock, self.period, self.batch = lock, period, batch
        self.monotonic = monotonic or clock.seconds  # the service passes time.monotonic
        self._seen: dict[bytes, float] = {}  # unleased keys -> when a pass first found them (monotonic)
        self._timer: Any = None
        self._running: Deferred[None] | None = None
        self._stopped = False
        self.share, self.min_budget = MAX_SHARE, MIN_BUDGET
        self.collected_blocks = 0
        self.collected_bytes = 0

    def start(self) -> None:
        self._timer = self.clock.callLater(self.period, self._tick)

    def stop(self) -> None:
        self._stopped = True  # a pass in progress ends at its next step (the index is about to close)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.period, self._tick)
        if self._running is None:
            self.run_pass().addErrback(lambda f: log.failure("collecting expired leases failed", f))

    def run_pass(self) -> Deferred[None]:
        """One pass now (or the one running)."""
        if self._running is not None:
            return self._running
        d = self._running = ensureDeferred(self._pass())

        def over(result: Any) -> Any:
            self._running = None
            return result

        return d.addBoth(over)

    async def _pass(self) -> None:
        await self.lock.acquire()
        self.pins.begin_pass()
        try:
            held = await self._drop_expired()
            await self._collect_unleased(self._budget(held))
        finally:
            self.pins.end_pass()
            self.lock.release()

    def _budget(self, held: int) -> int:
        """Bytes one pass may free: ``MAX_SHARE`` of what is held for others, and ``MIN_BUDGET`` at least (a
        small node frees a released file within a minute)."""
        return max(int(held * self.share), self.min_budget)

    async def _drop_expired(self) -> int:
        """Drop the expired leases; the bytes held for others at the start."""
        now = self.clock.seconds()
        held = -1
        while True:
            rows, total = await self.run(read_expired, self.index.path, now, self.batch)
            held = total if held < 0 else held
            if not rows or self._stopped:
                return held
            book = self.index.leases
            with self.index._transaction():
                for key, holder in rows:
                    expiry = book.expiry(key, holder)
                    if expiry is not None and expiry <= now:  # not renewed since the read
                        book.drop(key, holder, int(now))
            if len(rows) < self.batch:
                return held
            await deferLater(self.clock, 0, lambda: None)  # let the reactor run between batches

    async def _collect_unleased(self, budget: int) -> None:
        now, mono = self.clock.seconds(), self.monotonic()
        seen: dict[bytes, float] = {}
        after, freed, warned = b"", 0, False
        book = self.index.leases
        while not self._stopped:
            keys = book.unleased(int(now), self.batch, after)
            if not keys:
                break
            after = keys[-1]
            due = [k for k in keys if mono - self._seen.get(k, mono) >= self.period]
            seen.update((k, self._seen.get(k, mono)) for k in keys if k not in due)
            i = 0
            while i < len(due) and not self._stopped:
                gone: list[tuple[CID, int]] = []
                with self.index._transaction():  # a batch of about ``batch`` blocks per transaction
                    while i < len(due) and len(gone) < self.batch:
                        k = due[i]
                        i += 1
                        if freed >= budget:
                            seen[k] = self._seen[k]  # the next pass
                            if not warned:
                                warned = True
                                log.warn("more than {budget} bytes held for others ({share:.0%} of them, or 1 GiB) "
                                         "lost their leases at once; collecting them over several passes",
                                         budget=budget, share=self.share)
                            continue
                        if book.live(k, now):
                            continue
                        blocks = book.forget_key(k, now)
                        gone.extend(blocks)
                        freed += sum(n for _c, n in blocks)
                if gone:  # rows first: a crash now leaves unreferenced blocks, which the next start collects
                    crash.point("gc.after_rows")
                    n, nbytes = await self.run(self._delete, [c for c, _n in gone])
                    self.collected_blocks += n
                    self.collected_bytes += nbytes
                await deferLater(self.clock, 0, lambda: None)  # let the reactor run between batches
        self._seen = seen

    def _delete(self, cids: list[CID]) -> tuple[int, int]:
        blocks = freed = 0
        for cid in cids:
            n = self.store.delete_unless(cid, lambda c: c in self.pins)
            if n:
                crash.point("gc.after_unlink")
                blocks += 1
                freed += n
        self.store.sync_deletes(cids)  # the unlinks, durably (a shard directory once per batch)
        return blocks, freed
