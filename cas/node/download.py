"""The read pipeline: fetch -> verify -> decrypt -> deliver in order, with backpressure.

``Download`` is an ``IPushProducer``: it writes plaintext to any ``IConsumer``, keeping at most ``window``
blocks fetched or decrypting ahead of the consumer, and stops fetching while the consumer has paused it.
A byte range touches only the blocks it needs (and the manifest nodes on their path).
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from cas.base.budget import Budget
from cas.base.cid import CID
from cas.base.errors import RangeNotSatisfiable, TamperedData
from cas.content import cipher
from cas.content.capability import ReadCap
from cas.content.manifest import Link, Metadata, Node, Root, data_links, decode_node, decode_root
from cas.network.placement import STRIPE_BLOCKS, manifest_key, stripe_key

Fetch = Callable[..., Deferred]  # (block id, placement key[, spread][, then=f]) -> verified block, or f(block) (worker)


@attrs.frozen
class OpenFile:
    """A file whose root manifest was fetched, verified and decrypted: enough to send headers."""

    cap: ReadCap
    root: Root
    metadata: Metadata

    @property
    def size(self) -> int:
        return self.metadata.size


async def open_file(cap: ReadCap, fetch: Fetch) -> OpenFile:
    raw = await fetch(cap.root, manifest_key(cap.root.to_bytes()))
    root = decode_root(raw)
    return OpenFile(cap, root, root.metadata(cap.key))


def resolve_range(size: int, offset: int, length: int | None) -> tuple[int, int]:
    """Clamp a request for ``length`` bytes at ``offset`` to the file; returns (offset, length)."""
    if offset < 0 or (length is not None and length < 0):
        raise RangeNotSatisfiable("negative range")
    if offset > size or (offset == size and size > 0 and length != 0):
        raise RangeNotSatisfiable(f"range starts at {offset}, past the end of a {size}-byte file")
    end = size if length is None else min(size, offset + length)
    return offset, end - offset


@implementer(IPushProducer)
class Download:
    def __init__(
        self, f: OpenFile, fetch: Fetch, offset: int = 0, length: int | None = None, window: int = 4,
        budget: Budget | None = None,
    ) -> None:
        self.file = f
        self._fetch, self._window = fetch, window
        # The node-wide buffer budget: a segment fetched ahead holds one segment of it until it is delivered.
        # Past the budget the download reads no further ahead; it always keeps one segment in flight.
        self._budget, self._cost = budget, f.root.segment_size
        self.offset, self.length = resolve_range(f.size, offset, length)
        self.written = 0
        self._consumer: IConsumer | None = None
        self._paused = False
        self._unpause: Deferred | None = None
        self._stopped = False
        # segments fetched ahead, in order, each with whether its budget was forced (past the budget)
        self._pending: deque[tuple[Deferred, bool]] = deque()

    def start(self, consumer: IConsumer) -> Deferred:
        """Register with ``consumer`` and stream; fires when the last byte was written (the producer is then
        unregistered), or fails with TamperedData/CorruptBlock/BlockNotFound/CancelledError."""
        self._consumer = consumer
        consumer.registerProducer(self, True)
        d = ensureDeferred(self._stream())

        def done(result: object) -> object:
            consumer.unregisterProducer()
            return result

        return d.addBoth(done)

    # -- IPushProducer ---------------------------------------------------------------------------------------
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._unpause is not None:
            d, self._unpause = self._unpause, None
            d.callback(None)

    def stopProducing(self) -> None:
        """The consumer went away: stop fetching and fail the stream with CancelledError."""
        self._stopped = True
        for d, _forced in list(self._pending):
            d.cancel()
        if self._unpause is not None:
            d, self._unpause = self._unpause, None
            d.errback(CancelledError("consumer stopped"))

    # -- streaming -------------------------------------------------------------------------------------------
    async def _stream(self) -> None:
        if self.length == 0:
            return
        root, key = self.file.root, self.file.cap.key
        seg = root.segment_size
        first = self.offset // seg
        last = (self.offset + self.length - 1) // seg
        end = self.offset + self.length
        size = self.file.size
        try:
            async for i, link in data_links(root, self._load_node, first, last + 1):
                self._check()
                while len(self._pending) >= self._window or (self._pending and not self._take()):
                    await self._deliver()
                forced = False
                if not self._pending and not self._take():
                    self._budget.force(self._cost)  # type: ignore[union-attr]  # one in flight, always
                    forced = True
                lo = max(self.offset - i * seg, 0)
                hi = min(end - i * seg, seg)
                expect = min(seg, size - i * seg)
                try:
                    segment = self._segment(key, i, i == root.blocks - 1, link, expect, lo, hi)
                except BaseException:
                    self._give(forced)  # taken for a segment that never started
                    raise
                self._pending.append((segment, forced))
            while self._pending:
                await self._deliver()
        finally:
            while self._pending:  # after a failure: stop the work ahead, swallow its outcome
                d, forced = self._pending.popleft()
                self._give(forced)
                d.addErrback(lambda _: None)
                d.cancel()

    def _take(self) -> bool:
        return self._budget is None or self._budget.take(self._cost, download=True)

    def _give(self, forced: bool) -> None:
        if self._budget is not None:
            self._budget.give(self._cost, download=True, forced=forced)

    def _check(self) -> None:
        if self._stopped:
            raise CancelledError("consumer stopped")

    async def _deliver(self) -> None:
        data = await self._pending[0][0]
        _d, forced = self._pending.popleft()
        self._give(forced)  # from here the segment is plaintext on its way out, no longer fetched ahead
        while self._paused:
            self._unpause = Deferred()
            await self._unpause
        self._check()
        assert self._consumer is not None
        self._consumer.write(data)
        self.written += len(data)

    def _segment(self, key: bytes, index: int, last: bool, link: Link, expect: int, lo: int, hi: int) -> Deferred:
        root = self.file.root
        # Consecutive blocks start with different holders of their stripe: several send at once. The block is
        # decrypted where it was checked (``then``: one worker job per block).
        return self._fetch(link.cid, stripe_key(root.salt, index // STRIPE_BLOCKS), index,
                           then=partial(_open, key, index, last, link.count, expect, lo, hi))

    async def _load_node(self, cid: CID) -> Node:
        raw = await self._fetch(cid, manifest_key(cid.to_bytes()))
        return decode_node(raw, self.file.root.segment_size)


def _open(key: bytes, index: int, last: bool, count: int, expect: int, lo: int, hi: int, block: bytes) -> bytes:
    """Worker thread: check the block's length against the manifest, decrypt it, check its length against the
    file size, cut the range."""
    if len(block) != count:
        raise TamperedData(f"block {index} has {len(block)} bytes, the manifest says {count}")
    plain = cipher.open_segment(key, index, last, block)
    if len(plain) != expect:
        raise TamperedData(f"segment {index} holds {len(plain)} bytes where {expect} were expected")
    return plain if (lo == 0 and hi >= len(plain)) else plain[lo:hi]
