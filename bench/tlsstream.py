"""The bare sender of the TLS baselines (bench/peers.py, bench/replication.py): once the client's first byte
arrives, stream block files in order through a registered push producer, no framing, then close.

Imported by child processes only (it imports Twisted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer


def streamer(
    paths: list[str], result: dict[str, Any], on_start: Callable[[], None] | None = None,
    on_end: Callable[[bool], None] | None = None,
) -> type[Protocol]:
    """A Protocol class streaming ``paths`` (read on the reactor thread); counts ``result["bytes"]``, sets
    ``blocks_sent`` and ``complete``, calls ``on_start()`` at the first byte and ``on_end(started)`` when
    the connection is lost, then stops the reactor."""

    @implementer(IPushProducer)
    class Streamer(Protocol):
        def __init__(self) -> None:
            self.i = 0
            self.paused = self.stopped = self.started = self.pumping = self.finished = False

        def dataReceived(self, data: bytes) -> None:
            if not self.started:
                self.started = True
                if on_start is not None:
                    on_start()
                self.transport.registerProducer(self, True)
                self._pump()

        def _pump(self) -> None:
            if self.pumping:
                return
            self.pumping = True
            try:
                while not self.paused and not self.stopped and self.i < len(paths):
                    with open(paths[self.i], "rb", buffering=0) as f:
                        block = f.read()
                    self.i += 1
                    result["bytes"] += len(block)
                    self.transport.write(block)
                if self.i == len(paths) and not self.finished and not self.stopped:
                    self.finished = True
                    self.transport.unregisterProducer()
                    self.transport.loseConnection()
            finally:
                self.pumping = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            self._pump()

        def stopProducing(self) -> None:
            self.stopped = True

        def connectionLost(self, reason: Any = None) -> None:
            if on_end is not None:
                on_end(self.started)
            result["blocks_sent"] = self.i
            result["complete"] = self.finished
            reactor.callLater(0, reactor.stop)

    return Streamer
