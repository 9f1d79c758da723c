"""Keeping this node's leases on its holders: provisional ones while an upload runs, full ones once recorded.

Every ``placed`` row (cas/store/placements.py) says when its lease is due: half its length before it expires.
The ``Renewer`` sends, each round, a ``LEASE`` per holder for the keys due there (at most ``MAX_KEYS`` per
message, as many messages as needed), asking for the row's length: ``PROVISIONAL`` (1 h) for the blocks of an
upload or upload session not recorded yet, ``--lease-time`` for a recorded file. A file just recorded is due at
once (``Node`` kicks a round), so its provisional leases become full ones within seconds. A holder that does
not answer is asked again after ``RETRY`` seconds; one that answers "not granted" for a key (it lost the
blocks, or refuses) is asked again half a lease later. A holder of protocol version 1 has no LEASE: it keeps
blocks for its own ``--max-lease-time`` (logged once per round).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.nodeid import short_node_id
from cas.peer import frames
from cas.peer.connection import NotSupported

log = Logger()

MAX_KEYS = 1024  # keys per LEASE
INTERVAL = 60.0  # seconds between rounds
RETRY = 300  # seconds before asking a holder that did not answer again
ROUND = 64 * MAX_KEYS  # (holder, key) pairs per round at most
TIMEOUT = 30.0


class Renewer:
    def __init__(self, index: Any, peers: Any, clock: Any, interval: float = INTERVAL) -> None:
        self.index, self.peers, self.clock, self.interval = index, peers, clock, interval
        self._timer: Any = None
        self._running: Deferred[None] | None = None
        self._again = False
        self.renewed = 0  # leases granted (for status and tests)

    def start(self) -> None:
        self._timer = self.clock.callLater(0, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._tick)
        self.kick()

    def kick(self) -> Deferred[None]:
        """A round now (or right after the one running)."""
        if self._running is not None:
            self._again = True
            return self._running
        d = self._running = ensureDeferred(self._rounds())

        def over(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure):
                log.failure("renewing leases failed", result)

        d.addBoth(over)
        return d

    async def _rounds(self) -> None:
        while True:
            self._again = False
            await self._round()
            if not self._again:
                return

    async def _round(self) -> None:
        now = int(self.clock.seconds())
        due: dict[tuple[bytes, int], list[bytes]] = defaultdict(list)
        for holder, key, wanted in self.index.placements.due(now, ROUND):
            due[(holder, wanted)].append(key)
        ds = [ensureDeferred(self._holder(holder, wanted, keys, now)) for (holder, wanted), keys in due.items()]
        await DeferredList(ds, consumeErrors=True)

    async def _holder(self, holder: bytes, wanted: int, keys: list[bytes], now: int) -> None:
        for i in range(0, len(keys), MAX_KEYS):
            batch = keys[i:i + MAX_KEYS]
            try:
                r = await self.peers.request(holder, frames.LEASE, {"keys": batch, "time": wanted}, timeout=TIMEOUT)
            except NotSupported:
                log.info("node {h} speaks protocol version 1: it keeps our blocks for its own lease time",
                         h=short_node_id(holder))
                self.index.renewed(holder, [(k, False) for k in batch], 0, now)
                continue
            except Exception as e:
                log.debug("renewing leases on {h} failed: {e}", h=short_node_id(holder), e=e)
                self.index.retry_leases(holder, keys[i:], now + RETRY)
                return
            granted = r.header.get("time")
            bits = _bits(r.header.get("granted"), len(batch))
            if not isinstance(granted, int) or granted < 0:
                granted, bits = 0, [False] * len(batch)
            self.index.renewed(holder, list(zip(batch, bits)), granted, now)
            self.renewed += sum(bits)
            refused = len(batch) - sum(bits)
            if refused:
                log.info("node {h} did not grant leases on {n} of {m} key(s)", h=short_node_id(holder), n=refused,
                         m=len(batch))


def _bits(value: Any, n: int) -> list[bool]:
    if not isinstance(value, bytes) or len(value) != (n + 7) // 8:
        return [False] * n
    return [bool(value[i // 8] & (0x80 >> (i % 8))) for i in range(n)]
