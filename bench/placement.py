#!/usr/bin/env python
"""Balance and movement of rendezvous placement (cas/network/placement.py), for docs/placement.md: pure computation,
one process per node count. See bench/README.md."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402

from cas.network.placement import Rendezvous, stripe_key  # noqa: E402

REPLICAS = 3


def measure(n_nodes: int, n_stripes: int, seed: int) -> dict[str, Any]:
    rng, p = random.Random(seed), Rendezvous()
    nodes = [rng.randbytes(32) for _ in range(n_nodes)]
    joiner, leaver = rng.randbytes(32), nodes[rng.randrange(n_nodes)]
    held, first, moved_join, moved_leave = dict.fromkeys(nodes, 0), dict.fromkeys(nodes, 0), 0, 0
    t = time.perf_counter()
    for i in range(n_stripes):
        key = stripe_key(b"bench-file-%d" % (i // 1000), i % 1000)
        scores = sorted(((p.score(key, m), m) for m in nodes), reverse=True)
        top = [m for _, m in scores[: REPLICAS + 1]]
        holders = top[:REPLICAS]
        for h in holders:
            held[h] += 1
        first[holders[0]] += 1
        # A joiner enters the holder set iff it outscores the third holder.
        if p.score(key, joiner) > scores[REPLICAS - 1][0]:
            moved_join += 1
        if leaver in holders:
            moved_leave += 1
    seconds, counts, mean = time.perf_counter() - t, list(held.values()), n_stripes * REPLICAS / n_nodes
    return {"nodes": n_nodes, "stripes": n_stripes, "replicas": REPLICAS, "held_mean": mean, "held_min": min(counts),
            "held_max": max(counts), "held_stdev": statistics.pstdev(counts), "held_max_over_mean": max(counts) / mean,
            "held_min_over_mean": min(counts) / mean,
            "first_max_over_mean": max(first.values()) / (n_stripes / n_nodes),
            "moved_on_join": moved_join / n_stripes, "ideal_on_join": REPLICAS / (n_nodes + 1),
            "moved_on_leave": moved_leave / n_stripes, "ideal_on_leave": REPLICAS / n_nodes, "seconds": seconds}


def run(a: argparse.Namespace) -> None:
    counts = [int(x) for x in a.nodes.split(",")]
    env = harness.environment()
    with ProcessPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(measure, counts, [a.stripes] * len(counts), [a.seed] * len(counts)))
    cols = [("nodes", 6), ("mean", 9), ("min", 7), ("max", 7), ("stdev", 7), ("max/mean", 8), ("min/mean", 8),
            ("1st max/mean", 12), ("join moves", 10), ("ideal", 6), ("leave moves", 11), ("ideal", 6)]
    rows = [[str(r["nodes"]), f"{r['held_mean']:.1f}", str(r["held_min"]), str(r["held_max"]), f"{r['held_stdev']:.1f}",
             f"{r['held_max_over_mean']:.3f}", f"{r['held_min_over_mean']:.3f}", f"{r['first_max_over_mean']:.3f}",
             f"{r['moved_on_join']:.4f}", f"{r['ideal_on_join']:.4f}", f"{r['moved_on_leave']:.4f}",
             f"{r['ideal_on_leave']:.4f}"] for r in results]
    a.json = a.json or os.path.join(harness.RESULTS, f"placement-{a.stripes}.json")
    harness.finish(a, "placement", env, [f"{a.stripes:,} stripes, {REPLICAS} replicas, rendezvous (BLAKE3) placement"],
                   harness.render(cols, [rows]), {"results": results})


if __name__ == "__main__":
    p = harness.parser(__doc__.splitlines()[0], files=False)
    p.add_argument("--stripes", type=int, default=100_000)
    p.add_argument("--nodes", default="10,100,1000")
    p.add_argument("--seed", type=int, default=1)
    harness.main(p, {}, run)
