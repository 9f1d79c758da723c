"""Every benchmark in bench/ runs, at a tiny size, so that a broken benchmark turns CI red.

Each script runs as a user runs it (``python bench/SCRIPT.py``), with its temporary files in a test directory,
its ports picked by the system (every node and server listens on 127.0.0.1 port 0), the page cache left alone
(``--cache warm``: dropping it needs root) and one round; its JSON must hold the figures its table reports.
All of them together take well under a minute on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120  # per script; all of them together take 20-30 s here


class Benchmarks(SynchronousTestCase):
    def run_bench(self, script: str, *args: str) -> dict:
        """``python bench/SCRIPT ARGS --json J`` in a fresh directory; its JSON, after checking the exit code."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.addCleanup(shutil.rmtree, work, True)
        out = os.path.join(work, "result.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
        t = time.perf_counter()
        # its own process group: past the timeout the script and every node it started are stopped (SIGTERM,
        # which the harness turns into stopping its children, then SIGKILL to the group), none left running
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", script), *args, "--json", out],
                                cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                stdout, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate()
            self.fail(f"{script} did not finish within {TIMEOUT} s:\n{stdout[-5000:]}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still there
            except ProcessLookupError:
                pass
        self.assertEqual(proc.returncode, 0, f"{script} failed after {time.perf_counter() - t:.1f} s:\n{stdout[-5000:]}")
        with open(out) as f:
            doc = json.load(f)
        # everything it wrote is gone, but for the JSON asked for
        self.assertEqual(sorted(os.listdir(work)), ["result.json"])
        self.assertIn("table", doc)
        self.assertTrue(doc["environment"]["date"])
        return doc

    def files(self) -> list[str]:
        """A temporary directory of its own (which must be left empty), the page cache left alone, one round."""
        tmp = os.path.abspath(self.mktemp())
        self.addCleanup(lambda: (self.assertEqual(os.listdir(tmp), []), shutil.rmtree(tmp)))
        return ["--dir", tmp, "--cache", "warm", "--repeat", "1"]

    def check_rows(self, summary: dict, keys: list[str], figures: tuple[str, ...]) -> None:
        """Every row is there with its figures: MiB/s (from the request), peak RSS > 0; CPU can be 0 at this size
        (/proc counts 10 ms ticks)."""
        self.assertEqual(sorted(summary), sorted(keys))
        for key in keys:
            for fig in ("mib_s", *figures):
                self.assertGreaterEqual(summary[key][fig], 0, f"{key}: {fig}")
                if fig.startswith("mib_s") or "rss" in fig:
                    self.assertGreater(summary[key][fig], 0, f"{key}: {fig}")

    def test_pipeline(self) -> None:
        doc = self.run_bench("pipeline.py", "--size", "4M", *self.files(), "--no-prefault")
        size = doc["sizes"][0]
        self.check_rows(size["summary"], ["loop_put", "loop_put_threaded", "cas_put", "loop_get", "cas_get"],
                        ("mib_s_end_to_end", "peak_rss_mib", "cpu_s_per_gib"))
        for op in ("put", "get"):
            self.assertGreater(size["summary"][f"cas_{op}"]["ratio_vs_loop"], 0)
        for key in ("loop_get", "cas_get"):
            self.assertEqual(size["rounds"][0][key]["blake3"], size["source_blake3"])
        self.assertEqual(size["rounds"][0]["cas_put"]["cache"], "warm")

    def test_api(self) -> None:
        doc = self.run_bench("api.py", "--size", "4M", *self.files(), "--no-prefault")
        size = doc["sizes"][0]
        self.check_rows(size["summary"], ["pipeline_put", "api_put", "pipeline_get", "api_get"],
                        ("mib_s_end_to_end", "node_peak_rss_mib", "cpu_s_per_gib"))
        for op in ("put", "get"):
            x = size["summary"][f"api_{op}"]
            self.assertGreater(x["cli_peak_rss_mib"], 0)
            self.assertGreater(x["ratio_vs_pipeline"], 0)
            self.assertGreater(x["ratio_from_request"], 0)
            r = size["rounds"][0][f"api_{op}"]
            self.assertLess(r["request_seconds"], r["start_seconds"])  # the CLI's start-up is in the second only
        self.assertEqual(size["rounds"][0]["api_get"]["blake3"], size["source_blake3"])

    def test_peers(self) -> None:
        doc = self.run_bench("peers.py", "--size", "4M", *self.files())
        summary = doc["sizes"][0]["summary"]
        self.check_rows(summary, ["bare", "bare_tuned", "bare_b3", "cas"],
                        ("mib_s_end_to_end", "recv_peak_rss_mib", "send_peak_rss_mib", "recv_cpu_s_per_gib",
                         "send_cpu_s_per_gib"))
        self.assertGreater(summary["cas"]["ratio_vs_bare"], 0)
        self.assertIn("target_met", summary["cas"])

    def test_replication(self) -> None:
        doc = self.run_bench("replication.py", "--size", "2M", *self.files(), "--concurrent", "2",
                             "--concurrent-size", "1M", "--gossip-interval", "0.3")
        size = doc["sizes"][0]
        self.check_rows(size["summary"], ["cas_put", "cas_get", "base_put", "base_get"],
                        ("mib_s_end_to_end", "cpu_s_per_gib"))
        for op in ("put", "get"):
            c = size["summary"][f"cas_{op}"]
            self.assertGreater(c["ratio_vs_base"], 0)
            self.assertEqual(len(c["node_peak_rss_mib"]), 4 if op == "put" else 5)
            self.assertGreater(c["cli_peak_rss_mib"], 0)
        self.assertEqual(size["rounds"][0]["cas_get"]["verified"], size["source_blake3"])
        self.assertGreater(doc["concurrent"]["summary"]["mib_s"], 0)
        self.assertIn("concurrent", doc["judged"])

    def test_gc(self) -> None:
        doc = self.run_bench("gc.py", "--size", "2M", *self.files())
        [size] = doc["results"]
        self.assertEqual(size["rounds"][0]["blocks"], 512)  # 2 MiB of 4 KiB blocks, every one collected
        for phase in ("idle", "full", "leases"):
            figures = size["summary"][phase]
            self.assertGreater(figures["ticks"], 0, phase)
            self.assertGreaterEqual(figures["lag_max_ms"], figures["lag_p99_ms"])
        self.assertIn("release + lease collection", doc["table"])

    def test_placement(self) -> None:
        doc = self.run_bench("placement.py", "--stripes", "300", "--nodes", "10,20")
        self.assertEqual([r["nodes"] for r in doc["results"]], [10, 20])
        for r in doc["results"]:
            self.assertEqual(r["stripes"], 300)
            self.assertGreater(r["held_max_over_mean"], 0)

    def test_tlspath(self) -> None:
        doc = self.run_bench("tlspath.py", "--blocks", "4", "--repeat", "1")
        self.assertEqual(len(doc["rounds"]), 1)
        self.assertGreater(doc["median"]["recv_cpu_s_per_gib"], 0)
        self.assertGreater(doc["median"]["send_cpu_s_per_gib"], 0)

    def test_repair(self) -> None:
        doc = self.run_bench("repair.py", "--size", "1M", "--backlog", "24M", *self.files(), "--dead-after", "1",
                             "--repair-after", "1")
        [size] = doc["results"]
        self.check_rows(size["summary"], ["before", "during", "after"], ("mib_s_end_to_end",))
        during = size["summary"]["during"]
        self.assertGreater(during["repair_mib_total"], 0)  # the user's node did repair the killed holder's copies
        self.assertGreater(during["vs_without"], 0)
        self.assertIn("put during full-rate repair", doc["table"])
