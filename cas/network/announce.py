"""Files stored before leases (data-dir format < 3): announced to their holders once, so that they are kept.

The upgrade to format 3 gave every block held for others a grace lease of ``--lease-time`` for its sender, and
listed this node's own files in ``announce``: nothing recorded where their blocks went. The ``Announcer`` walks
each such file's manifests (the local copy), records its placement keys as the file's, and asks each key's
first N + 4 nodes in rank for a lease, listing per key the blocks it placed under it (LEASE ``cids``): a holder
moves the blocks this node pushed without a key (held under ``legacy_key``) to the key they belong to, and
grants the lease where it holds the key's blocks. The nodes that grant are recorded and renewed from then on;
blocks nobody claims go when their grace lease ends. A pass runs ``DELAY`` s after start (peers connected by
then) and every ``INTERVAL`` s while files remain that no node leased anything of.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.cid import CID
from cas.network.placement import file_placement

log = Logger()

DELAY = 30.0
INTERVAL = 300.0
MAX_FILES = 100_000  # files per pass at most


class Announcer:
    def __init__(self, node: Any, peers: Any, clock: Any, delay: float = DELAY, interval: float = INTERVAL) -> None:
        self.node, self.peers, self.clock, self.delay, self.interval = node, peers, clock, delay, interval
        self._timer: Any = None
        self._running: Deferred[None] | None = None
        self.announced = 0  # files announced (for tests)

    def start(self) -> None:
        if self.node.index.to_announce(1):
            self._timer = self.clock.callLater(self.delay, self.kick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def kick(self) -> Deferred[None]:
        self._timer = None
        if self._running is None:
            self._running = ensureDeferred(self._pass())
            self._running.addBoth(self._over)
        return self._running

    def _over(self, result: Any) -> None:
        self._running = None
        if isinstance(result, Failure):
            log.failure("announcing files stored before leases failed", result)
        if self.node.index.to_announce(1) and self._timer is None:
            self._timer = self.clock.callLater(self.interval, self.kick)

    async def _pass(self) -> None:
        """Each file waiting once (those no node would lease wait for the next pass)."""
        if not self.peers.members():
            return
        for root in self.node.index.to_announce(MAX_FILES):
            await self._announce(root)

    async def _announce(self, root: CID) -> None:
        if self.node.index.get(root) is None:  # forgotten since
            self.node.index.announced(root)
            return
        blocks = await file_placement(root, self.node.fetch)
        by_key: dict[bytes, list[CID]] = {}
        for cid, key in blocks:
            by_key.setdefault(key, []).append(cid)
        if self.node.index.get(root) is None:  # forgotten while its manifests were read
            self.node.index.announced(root)
            return
        self.node.index.adopt_keys(root, by_key)
        await self.node.renewer.take(list(by_key), self.node.lease_time, announced=by_key)
        granted = self.node.index.placements.holders(f"file:{root}")
        if not granted:
            log.info("no node leased any block of a file stored before leases: announced again later")
            return
        self.node.index.announced(root)
        self.announced += 1
        log.info("announced a file stored before leases to its holders: {k} of {n} placement keys leased",
                 k=len(granted), n=len(by_key))
