"""Test helpers: a node on a temp dir with a clock and injectable worker runner, and fake producers/consumers."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from cas.node.core import Node
from cas.store.datadir import prepare


def property_settings(max_examples: int = 200) -> settings:
    """Hypothesis settings for trial tests: no deadline (this VM's timing varies). Each test instance is fresh
    and stateless, so running a property again from a new instance (as ``trial --until-failure`` does) is
    safe: the differing-executors health check does not apply."""
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.differing_executors])


def sync_run(f: Callable[..., Any], *args: Any) -> Deferred:
    """A worker 'pool' that runs the job at once on the calling thread."""
    return maybeDeferred(f, *args)


class ManualRunner:
    """A worker pool whose jobs run only when the test says so: shows what is in flight."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Deferred, Callable[..., Any], tuple]] = deque()
        self.max_queued = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.queue.append((d, f, args))
        self.max_queued = max(self.max_queued, len(self.queue))
        return d

    def run_one(self) -> None:
        d, f, args = self.queue.popleft()
        maybeDeferred(f, *args).chainDeferred(d)

    def run_all(self) -> None:
        while self.queue:
            self.run_one()


def make_node(testcase: Any, run: Callable[..., Deferred] = sync_run, **kw: Any) -> Node:
    clock = task.Clock()
    node = Node(prepare(testcase.mktemp()), clock, run=run, **kw)
    node.start()
    if isinstance(run, ManualRunner):  # the start-up collection pass
        run.run_all()
        run.max_queued = 0
    testcase.addCleanup(node.stop)
    return node


@implementer(IPushProducer)
class FakeProducer:
    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IConsumer)
class Collector:
    """A consumer that keeps what it got; ``pause_after`` pauses the producer after that many writes."""

    def __init__(self, pause_every: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.producer: Any = None
        self.streaming: bool | None = None
        self.pause_every = pause_every
        self.registered = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, streaming
        self.registered += 1

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.pause_every and len(self.chunks) % self.pause_every == 0:
            self.producer.pauseProducing()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)
