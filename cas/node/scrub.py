"""Scrub: bad copies of blocks stored here are found and replaced from other holders.

A background pass re-reads and re-hashes every stored block, one shard directory after another (65,536 of
them, walked in 256 groups: a group's position is saved in the index after it), paced so that a pass takes about ``--scrub-interval`` (7 days by default) and the disk spends at most
``DUTY`` (10%) of its time on it: after each read that took t seconds the pass waits at least 9 t. Each shard's
accounting is checked against its files first (a block file deleted or truncated behind the node's back is
counted out: ``DiskBlockStore.reconcile``). A block that fails its hash is quarantined, logged once, and
``recover`` fetches a good copy from another holder of its placement key (any node's copy is checked against
the id, so it is safe to take from anyone). A corrupt copy found by a read (``Node.fetch``) is recovered the
same way at once, and so is one a reader reports (a ``REPORT`` of bytes that did not match the id). The pass's
position is saved in the index (``counters``), so a restart continues where it stopped.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.cid import CID
from cas.store.blockstore import SHARDS

log = Logger()

SCRUB_INTERVAL = 7 * 86400  # seconds a pass over every stored block takes (at most: DUTY may slow it)
DUTY = 0.10  # share of the disk's time the scrub may take
CURSOR = "scrub.group"  # the index counter that keeps the pass's position: the group of 256 shards it is at
GROUPS = SHARDS >> 8
START_DELAY = 60.0  # seconds after start before the first shard (start-up work first)
RETRY = 600.0  # seconds before a block that could not be replaced is tried again (then by the next pass)
RETRIES = 1000  # blocks waiting for such a retry at most
AT_ONCE = 4  # blocks fetched at a time to replace bad or missing copies


class Scrubber:
    def __init__(self, node: Any, interval: float = SCRUB_INTERVAL, start_delay: float = START_DELAY) -> None:
        self.node, self.store, self.reactor = node, node.store, node.reactor
        self.interval, self.start_delay = interval, start_delay
        self.timer = time.perf_counter  # how long a read took (the disk time the duty cycle counts)
        self._recovering: dict[CID, Deferred[bool]] = {}
        self._retries: dict[CID, Any] = {}  # blocks that could not be replaced: tried again RETRY later, once
        self._retried: set[CID] = set()  # blocks being tried the second time (a failure then waits for the pass)
        self._window = DeferredSemaphore(AT_ONCE)
        self._running: Deferred[None] | None = None
        self._stopped = True  # the pass is not running
        self._closed = False  # stopped by the node's service: no retries either
        self._wait: Deferred[None] | None = None
        self._group: int | None = None  # the group of shards the pass is at (saved after each)
        self._after = ""  # the index walk's position (block ids the index says are here)
        self._page = 0  # index rows per group: the whole index once a pass
        # counters (cas status, tests)
        self.checked = 0  # blocks re-hashed by the pass since start
        self.corrupt = 0  # corrupt copies found (pass, reads, reports)
        self.recovered = 0  # of those, replaced by a good copy from another holder
        self.unrecovered = 0  # of those, no other node could send a good copy (logged)
        self.corrected_bytes = 0  # accounting corrected by reconciling shards with their files
        self.passes = 0  # passes completed since start
        self.missing = 0  # blocks the index says are here whose file was gone

    def start(self) -> None:
        self._stopped = self._closed = False
        self._running = ensureDeferred(self._run())
        self._running.addErrback(self._failed)

    def stop(self) -> None:
        self._stopped = self._closed = True
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        self._retried.clear()
        if self._wait is not None and not self._wait.called:
            self._wait.cancel()

    def status(self) -> dict[str, Any]:
        group = self._group if self._group is not None else self.node.index.get_counter(CURSOR)
        return {"position": group / GROUPS, "checked": self.checked,
                "corrupt": self.corrupt, "recovered": self.recovered, "unrecovered": self.unrecovered,
                "missing": self.missing, "corrected_bytes": self.corrected_bytes, "passes": self.passes,
                "interval": self.interval}

    def _failed(self, f: Failure) -> None:
        if not self._stopped:
            log.failure("the scrub stopped", f)

    async def _sleep(self, seconds: float) -> None:
        self._wait = deferLater(self.reactor, max(0.0, seconds), lambda: None)
        try:
            await self._wait
        finally:
            self._wait = None

    async def _run(self) -> None:
        from twisted.internet.defer import CancelledError

        try:
            await self._sleep(self.start_delay)
            group = self._group = self.node.index.get_counter(CURSOR) % GROUPS
            while not self._stopped:
                await self._walk(group)
                if self._stopped:
                    return
                group = self._group = (group + 1) % GROUPS
                self.node.index.set_counter(CURSOR, group)
                if group == 0:
                    self.passes += 1
                    log.info("scrub pass over: {n} blocks checked since start, {c} corrupt, {r} replaced",
                             n=self.checked, c=self.corrupt, r=self.recovered)
        except CancelledError:
            return  # stopped while waiting

    async def _walk(self, group: int) -> None:
        """One group of 256 shard directories: each one's accounting checked against its files, then each block
        re-hashed, with rests between reads (``_pace``)."""
        t = self.timer()
        await self._index_page(group)
        shards = await self.node.run(self.store.live_shards, group)
        for shard in shards:
            if self._stopped:
                return
            dsize, dfiles = await self.node.run(self.store.reconcile, shard)
            if dsize or dfiles:
                self.corrected_bytes += abs(dsize)
                log.warn("block files changed behind the node's back: the accounting was corrected by {b} bytes and "
                         "{f} file(s) (shard {s:04x})", b=dsize, f=dfiles, s=shard)
            cids = await self.node.run(self.store.shard_cids, shard)
            for cid in cids:
                if self._stopped:
                    return
                await self._pace(self.timer() - t, 0)
                t = self.timer()
                good = await self.node.run(self.store.check, cid)
                self.checked += good is not None
                if good is False:
                    self.found_corrupt(cid, "found by the scrub")
                await self._pace(self.timer() - t, 1)
                t = self.timer()
        await self._pace(self.timer() - t, 0, groups=1)

    async def _index_page(self, group: int) -> None:
        """A share of the index walk: blocks the index says are here, whose file is gone (deleted behind the
        node's back, or lost by the disk), are fetched again from other holders."""
        if group == 0 or not self._page:
            # A pass starts, or this node did (at any group): the whole index is walked over the groups left, so
            # a node restarted every day mid-pass still looks at every row.
            self._after = ""
            self._page = max(1, -(-self.node.index.count_stored() // (GROUPS - group)))
        cids = self.node.index.stored_cids(self._after, self._page)
        if not cids:
            return
        self._after = str(cids[-1])
        present = await self.node.run(lambda: [self.store.has(c) for c in cids])
        for cid, here in zip(cids, present):
            if not here and cid not in self._recovering and cid not in self._retries:
                self.missing += 1
                log.warn("block {cid} is recorded on this node but its file is gone: fetching a good copy",
                         cid=str(cid))
                self.recover(cid)

    async def _pace(self, took: float, blocks: int, groups: int = 0) -> None:
        """Rest so that the disk time stays under ``DUTY`` and a pass takes about ``interval``: half of it is
        spread over the groups of shards, half over the blocks."""
        spread = self.interval / 2 * (blocks / max(1, self.store.files()) + groups / GROUPS)
        wait = max(took * (1 - DUTY) / DUTY, spread)
        if wait > 0:
            await self._sleep(wait)

    def found_corrupt(self, cid: CID, how: str) -> Deferred[bool]:
        """A copy here failed its hash (already quarantined by the store): logged once, replaced if another
        holder has a good one."""
        if cid in self._recovering:
            return self._recovering[cid]
        self.corrupt += 1
        log.warn("block {cid} was corrupt on this node's disk ({how}): quarantined, fetching a good copy",
                 cid=str(cid), how=how)
        return self.recover(cid)

    def recover(self, cid: CID) -> Deferred[bool]:
        """Fetch a good copy of ``cid`` from another node and store it here (once at a time per block, and
        ``AT_ONCE`` blocks at a time: a disk that lost a directory must not start thousands of fetches)."""
        if cid in self._recovering:
            return self._recovering[cid]
        d = self._recovering[cid] = self._window.run(lambda: ensureDeferred(self._recover(cid)))

        def done(result: Any) -> Any:
            self._recovering.pop(cid, None)
            return result

        return d.addBoth(done)

    def _wanted(self, cid: CID) -> bool:
        """Whether the index still refers to ``cid`` here (a file, an upload, a local pin, or a hold)."""
        return bool(self.node.index.owners_of(cid) or self.node.index.hold_keys(cid))

    def _retry(self, cid: CID) -> None:
        self._retries.pop(cid, None)
        if not self.store.has(cid):
            self._retried.add(cid)
            self.recover(cid)

    async def _recover(self, cid: CID) -> bool:
        node = self.node
        retried = cid in self._retried  # the second try: a failure now waits for the next pass
        self._retried.discard(cid)
        if node.peers is None or not node.peers.members():
            self.unrecovered += 1
            log.warn("block {cid} cannot be replaced: no other node is known", cid=str(cid))
            return False
        if not self._wanted(cid):
            return False  # collected meanwhile (its key's leases ended, or the file was forgotten): nothing to do
        try:
            key = await node.placement_key(cid)
            data = await node.retrieve(cid, key)
            if not self._wanted(cid):
                return False  # collected while it was fetched: do not bring it back
            await node.run(self.store.put, cid, data)
        except Exception as e:
            self.unrecovered += 1
            again = not self._closed and not retried and len(self._retries) < RETRIES
            log.warn("block {cid} could not be replaced: {e}; {when}", cid=str(cid), e=e,
                     when=f"trying again in {RETRY / 60:.0f} minutes" if again else "the next scrub pass tries again")
            if again:
                self._retries[cid] = self.reactor.callLater(RETRY, self._retry, cid)
            return False
        self.recovered += 1
        log.info("block {cid} replaced by a good copy from another node", cid=str(cid))
        return True
