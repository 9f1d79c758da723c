#!/usr/bin/env python
"""A user's put on a node while that node repairs at its full --repair-rate, against the same put without repair
(before the repair and after it). See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402
import replication  # noqa: E402  (network_up: start the nodes, wait for full membership)

MiB = harness.MiB
# The user's node (its put is timed, its repairs measured), the backlog's origin, the holder killed, a node that
# joins after the backlog is stored. With --replicas 2 the user and the victim hold every block of the backlog;
# once the victim is dead the user is its only live holder and copies all of it to the newcomer.
NAMES = ("user", "origin", "victim", "newcomer")
PHASES = {"before": "put, no repair (before)", "during": "put during full-rate repair",
          "after": "put, no repair (after)"}


def repair_sent(node: harness.Node) -> int:
    """The bytes ``node`` has sent to repair copies since it started (GET /v1/status)."""
    with open(os.path.join(node.data, "api.token")) as f:
        token = f.read().strip()
    req = urllib.request.Request(node.url + "v1/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["repair"]["bytes_sent"]


def until(what: str, ready: Any, timeout: float = 300.0) -> float:
    t0 = time.perf_counter()
    while not ready():
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"FAIL: no {what} within {timeout:.0f} s")
        time.sleep(0.2)
    return time.perf_counter() - t0


def run(a: argparse.Namespace) -> None:
    env = harness.environment()

    def prepare(size: int, work: str) -> tuple[dict[str, Any], dict[str, Any]]:
        srcs = {k: os.path.join(work, f"{k}.bin") for k in ("backlog", *PHASES)}
        for k, path in srcs.items():
            harness.make_source(a.backlog if k == "backlog" else size, path)
        return srcs, {"backlog": a.backlog}

    def one_round(size: int, work: str, srcs: dict[str, str], n: int) -> dict[str, Any]:
        def opts(name: str) -> list[str]:  # only the user's node repairs: the others wait a day
            return ["--replicas", "2", "--dead-after", str(a.dead_after),
                    "--repair-after", str(a.repair_after) if name == "user" else "1d"]

        nodes = [harness.Node(name, os.path.join(work, name), opts(name)) for name in NAMES]
        user, origin, victim = nodes[:3]
        r: dict[str, Any] = {}

        def put(phase: str) -> dict[str, Any]:
            harness.settle()  # the writes before it (backlog, repair) written back first, untimed
            with harness.timed_phase(a) as row:
                got = harness.Cli(["--node", user.data, "put", "--quiet", srcs[phase]], work, phase).wait(
                    replication.run_timeout(size), size)
            return {**row, **{k: v for k, v in got.items() if k != "stdout"}}

        try:
            replication.network_up(nodes[:3], "3 nodes")
            harness.Cli(["--node", origin.data, "put", "--quiet", srcs["backlog"]], work, "backlog").wait(
                replication.run_timeout(a.backlog))
            replication.network_up(nodes, "the newcomer joined")
            r["before"] = put("before")
            victim.proc.kill()  # type: ignore[union-attr]  # for good: the user's node copies what it held
            harness.reap(victim.proc)  # type: ignore[arg-type]
            victim.proc = None
            r["repair_start_seconds"] = until("repair", lambda: repair_sent(user) > 0)
            s0, t0 = repair_sent(user), time.perf_counter()
            time.sleep(2.0)  # repair alone, at its full rate
            s1, t1 = repair_sent(user), time.perf_counter()
            r["repair_mib_s_alone"] = (s1 - s0) / MiB / (t1 - t0)
            s0, t0 = s1, t1
            r["during"] = put("during")
            s1, t1 = repair_sent(user), time.perf_counter()
            r["repair_mib_s_during"] = (s1 - s0) / MiB / (t1 - t0)
            time.sleep(0.5)
            r["repair_running_after"] = repair_sent(user) > s1  # repair went on past the put's end

            def idle() -> bool:
                s = repair_sent(user)
                time.sleep(3.0)
                return repair_sent(user) == s

            until("end of repair", idle)
            r["repair_mib_total"] = repair_sent(user) / MiB
            r["after"] = put("after")
        finally:
            for node in nodes:
                node.stop()
        for p in PHASES:
            print(f"  {PHASES[p]}: {r[p]['mib_s_end_to_end']:.1f} MiB/s from the command's start", file=sys.stderr)
        return r

    def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
        s = {p: harness.summary([r[p] for r in rounds]) for p in PHASES}
        s["during"].update({k: harness.median([r[k] for r in rounds])
                            for k in ("repair_mib_s_alone", "repair_mib_s_during", "repair_start_seconds",
                                      "repair_mib_total")})
        s["during"]["repair_running_after"] = all(r["repair_running_after"] for r in rounds)
        base = (s["before"]["mib_s_end_to_end"] + s["after"]["mib_s_end_to_end"]) / 2
        s["during"]["vs_without"] = s["during"]["mib_s_end_to_end"] / base
        return s

    results = harness.bench_sizes(a, "repair", one_round, summarise, prepare)
    def repair(x: dict[str, Any]) -> str:
        return f"{x['repair_mib_s_alone']:.1f} / {x['repair_mib_s_during']:.1f}" if "vs_without" in x else ""

    def target(x: dict[str, Any]) -> str:
        ok = "vs_without" in x and x["vs_without"] >= 0.9 and x["repair_running_after"]
        return harness.ok(ok, "within 10%, repair on") if "vs_without" in x else ""

    cols = [("MiB/s e2e", 18, lambda x: harness.speed(x, a.repeat, "mib_s_end_to_end")),
            ("from request", 13, "mib_s:.1f"), ("vs without", 11, "vs_without:.3f"),
            ("repair MiB/s alone/put", 23, repair), ("target", 22, target)]
    text = harness.table(results, ("operation", 28), cols, PHASES)
    harness.finish(a, "repair", env, [
        f"a user's put on the node that repairs (--repair-rate {a.repair_rate_label}, 4 nodes on this machine, "
        f"--replicas 2, a backlog of {harness.fmt_size(a.backlog)} put by another node, its other holder killed); "
        "'vs without' is against the mean of the puts before and after the repair"], text, {"results": results})


if __name__ == "__main__":
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--backlog", type=harness.parse_size, default=2 * harness.GiB,
                   help="the file whose copies the user's node repairs (default 2G)")
    p.add_argument("--repair-after", default="5", help="the user's node's --repair-after (default 5 s)")
    p.add_argument("--dead-after", default="5",
                   help="every node's --dead-after (default 5 s: detection is not measured)")
    p.set_defaults(repair_rate_label="20M (the default)")
    harness.main(p, {}, run)
