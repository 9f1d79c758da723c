"""Releasing the leases of forgotten files on their holders, now or when the holders come back.

``Index.forget`` (and a dropped upload session) queues one release per (holder, key) in the ``releases``
table, in the same transaction that forgets the file: a release is never lost to a crash. The ``Releaser``
sends them as ``RELEASE`` requests (at most ``MAX_KEYS`` keys each, as many as needed), deletes what a holder
acknowledged, and leaves the rest for later: it tries again whenever a connection to that holder opens, and every
``interval`` seconds. A release whose lease would have expired anyway is dropped. A holder that speaks
protocol version 1 has no RELEASE: its releases are dropped with one log line (it gave those blocks a lease
of its own ``--max-lease-time``, after which they go).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger

from cas.base.nodeid import short_node_id
from cas.peer import frames
from cas.peer.connection import NotSupported

log = Logger()

MAX_KEYS = 1024  # keys per RELEASE
INTERVAL = 300.0  # seconds between retries while releases wait
TIMEOUT = 10.0  # seconds a holder has to answer a RELEASE


class Releaser:
    def __init__(self, index: Any, peers: Any, clock: Any, interval: float = INTERVAL, timeout: float = TIMEOUT,
                 me: bytes | None = None, release_here: Callable[[bytes, list[bytes]], Any] | None = None) -> None:
        self.index, self.peers, self.clock, self.interval, self.timeout = index, peers, clock, interval, timeout
        # Leases this node holds on itself (a pin of a file whose blocks it holds) are released without the network.
        self.me, self.release_here = me, release_here
        self._timer: Any = None
        self._unsubscribe: Callable[[], None] | None = None
        self._busy: set[bytes] = set()  # holders being sent releases now
        self.released = 0  # keys released on holders (for status and tests)

    def start(self) -> None:
        self._unsubscribe = self.peers.on_connect(self._connected)
        self._timer = self.clock.callLater(0, self._tick)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _connected(self, node_id: bytes) -> None:
        if self.index.pending_releases(int(self.clock.seconds()), node_id, 1):
            self.send([node_id]).addErrback(lambda f: log.failure("sending releases failed", f))

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._tick)
        self.send().addErrback(lambda f: log.failure("sending releases failed", f))

    def send(self, holders: Iterable[bytes] | None = None) -> Deferred[dict[bytes, bool]]:
        """Deliver the queued releases of ``holders`` (all holders with some when None); fires with, per
        holder tried, whether all of its releases were delivered."""
        now = int(self.clock.seconds())
        if holders is None:
            holders = list(self.index.pending_releases(now, limit=1 << 30))
        holders = [h for h in holders if h not in self._busy]
        ds = [ensureDeferred(self._holder(h)) for h in holders]

        def outcome(results: list[tuple[bool, Any]]) -> dict[bytes, bool]:
            return {h: ok and bool(r) for h, (ok, r) in zip(holders, results)}

        return DeferredList(ds, consumeErrors=True).addCallback(outcome)

    async def _holder(self, holder: bytes) -> bool:
        self._busy.add(holder)
        try:
            while True:
                keys = self.index.pending_releases(int(self.clock.seconds()), holder, MAX_KEYS).get(holder, [])
                if not keys:
                    return True
                try:
                    if holder == self.me and self.release_here is not None:
                        self.release_here(holder, keys)
                    else:
                        await self.peers.request(holder, frames.RELEASE, {"keys": keys}, timeout=self.timeout)
                except NotSupported:
                    log.info("node {h} speaks protocol version 1, which cannot release: {n} lease(s) there end "
                             "with its own lease time", h=short_node_id(holder), n=len(keys))
                    self.index.released(holder, keys)
                    continue
                except Exception as e:
                    log.debug("releasing on {h} failed: {e}", h=short_node_id(holder), e=e)
                    return False
                self.index.released(holder, keys)
                self.released += len(keys)
        finally:
            self._busy.discard(holder)