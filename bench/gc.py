#!/usr/bin/env python
"""The reactor's responsiveness while a node collects blocks held for others (cas/store/expiry.py,
cas/store/collector.py). See bench/README.md."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402

KEY_BLOCKS = 100  # blocks per placement key (a stripe of a file is 64)
PHASES = {"idle": "idle (baseline)", "full": "full collection pass", "leases": "release + lease collection"}


def child_gc(a: argparse.Namespace) -> None:
    """A node in this process holding ``a.size`` bytes for one peer in ``a.block``-byte blocks: a 10 ms
    ``LoopingCall`` records its lateness while the reactor idles, while a full collection pass runs, and from
    the release of every lease until the last block is deleted."""
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred

    from cas.base.cid import CID
    from cas.node.core import Node
    from cas.store.datadir import prepare

    node = Node(prepare(os.path.join(a.dir, "node")), reactor, gc_period=1.0, monotonic=time.monotonic)
    peer, n, now = b"\x07" * 32, a.size // a.block, int(time.time())
    keys = [b"cas/stripe/v1bench" + i.to_bytes(8, "big") for i in range(0, n, KEY_BLOCKS)]
    for first in range(0, n, 10_000):  # the fill is not timed
        rows = []
        for i in range(first, min(n, first + 10_000)):
            block = i.to_bytes(8, "big") * (a.block // 8)
            cid = CID.of(block)
            node.store.put(cid, block)
            rows.append((peer.hex(), cid, a.block, now, keys[i // KEY_BLOCKS], now + 86400))
        node.index.record_holds(rows)
    result: dict[str, Any] = {"blocks": n, "keys": len(keys), "block_size": a.block}

    async def phase(name: str, work: Any) -> None:
        lags: list[float] = []
        last = [time.perf_counter()]

        def tick() -> None:
            t = time.perf_counter()
            lags.append(max(0.0, t - last[0] - 0.010) * 1000)
            last[0] = t

        loop = task.LoopingCall(tick)
        loop.start(0.010, now=False)
        t0 = time.perf_counter()
        await work()
        result[name] = {"seconds": time.perf_counter() - t0, "ticks": len(lags), **quantiles(lags)}
        loop.stop()

    async def release_all() -> None:
        for i in range(0, len(keys), 1024):  # as RELEASE requests of 1,024 keys would arrive
            node.release(peer, keys[i:i + 1024])
            await task.deferLater(reactor, 0, lambda: None)
        while node.expiry.collected_blocks < n:
            await task.deferLater(reactor, 0.05, lambda: None)

    async def main(_reactor: Any) -> None:
        node.start()
        await phase("idle", lambda: task.deferLater(reactor, 3.0, lambda: None))
        await phase("full", node.collect_garbage)
        await phase("leases", release_all)
        node.stop()
        harness.emit(result)

    task.react(lambda r: ensureDeferred(main(r)))


def quantiles(lags: list[float]) -> dict[str, float]:
    xs = sorted(lags) or [0.0]
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return {"lag_p50_ms": xs[len(xs) // 2], "lag_p99_ms": p99, "lag_max_ms": xs[-1]}


def run(a: argparse.Namespace) -> None:
    env = harness.environment()

    def one_round(size: int, work: str, _s: Any, n: int) -> dict[str, Any]:
        return harness.run_child(__file__, "gc", work, f"gc{n}", size=size, block=a.block, dir=work)

    def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
        return {p: {k: harness.median([r[p][k] for r in rounds]) for k in rounds[0][p]} for p in PHASES}

    results = harness.bench_sizes(a, "gc", one_round, summarise, prepare=lambda size, work: ({}, {}))
    idle = results[0]["summary"]["idle"]["lag_p99_ms"] or 0.01
    cols = [("seconds", 8, "seconds:.1f"), ("p50 ms", 7, "lag_p50_ms:.1f"), ("p99 ms", 7, "lag_p99_ms:.1f"),
            ("max ms", 8, "lag_max_ms:.0f"), ("p99 vs idle", 11, lambda s: f"{s['lag_p99_ms'] / idle:.1f}x"),
            ("target", 12, lambda s: harness.ok(s["lag_p99_ms"] < 50, "p99 < 50 ms"))]
    text = "".join(harness.table([e], ("phase", 28), cols, PHASES) for e in results)
    blocks = ", ".join(f"{e['rounds'][0]['blocks']:,} blocks" for e in results)
    harness.finish(a, "gc", env, [f"reactor lag (a 10 ms LoopingCall) while collecting {blocks} of {a.block} bytes"],
                   text, {"results": results})


if __name__ == "__main__":
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--block", type=harness.parse_size, default=4096, help="block size (default 4K)")
    harness.main(p, {"gc": child_gc}, run)
