#!/usr/bin/env python
"""Throughput and memory of the HTTP API + ``cas`` CLI against the store/read pipelines alone.

    python bench/api.py --size 1G [--size 5G] [--repeat N] [--dir DIR] [--json OUT] [--no-prefault] [--keep]

For each size, in one run: make a random source file (bench/pipeline.py's ``mksrc`` child, which also gives
its BLAKE3); run the pipelines alone, without HTTP (pipeline.py's cas ``put`` and ``get`` children: the
baseline); then start a real node (``twistd --nodaemon cas --port 0``) on a fresh data dir and run the CLI as
a subprocess: ``cas --node DIR put SOURCE`` (timed, key from stdout) and ``cas --node DIR get KEY -o OUT``
(timed), checking that the output has the source's size and BLAKE3. See bench/README.md.

Memory. The client's peak RSS is ``ru_maxrss`` from ``os.wait4`` on its pid, cross-checked by sampling its
``VmHWM`` every 20 ms; the table shows the larger. ``ru_maxrss`` of an exec'd child starts at its parent's
peak RSS (exec keeps the old memory map's high-water mark), so this parent imports only the standard library
(and bench/pipeline.py, which is standard library only at import time), never Twisted or cas; BLAKE3 of the
output is computed in a child too. The node's peak RSS is its ``VmHWM`` read after the put, then reset
(``/proc/PID/clear_refs``, "5") and read again after the get, so the two figures are per operation; where the
reset is refused the get figure is the peak since the node started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline  # noqa: E402  (standard library only at import time)

MiB = pipeline.MiB
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGET_RATIO = 0.70  # API put and get >= 70% of the pipeline alone
TARGET_NODE_RSS_MIB = 100  # node peak RSS < 100 MiB
TARGET_CLIENT_RSS_MIB = 60  # cas client peak RSS < 60 MiB
SAMPLE_S = 0.020  # client VmHWM sampling period
NODE_START_TIMEOUT = 60.0
NODE_STOP_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- child: BLAKE3 of a file (keeps blake3 out of this process) --------------------------------------------


def child_b3sum(path: str) -> None:
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(pipeline.CHUNK):
            h.update(chunk)
            n += len(chunk)
    sys.stdout.write(pipeline.RESULT_PREFIX + json.dumps({"blake3": h.hexdigest(), "bytes": n}) + "\n")


def b3sum(path: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-b3sum", path]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=child_env())
    lines = [l for l in proc.stdout.splitlines() if l.startswith(pipeline.RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"FAIL: hashing {path} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(pipeline.RESULT_PREFIX):])


# -- /proc readers -------------------------------------------------------------------------------------------


def _proc_fields(path: str, keys: tuple[str, ...], unit: int) -> dict[str, float]:
    """``KEY: VALUE`` lines of a /proc file, values divided by ``unit`` ({} once the process is gone)."""
    out: dict[str, float] = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(keys):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) / unit
    except OSError:
        pass
    return out


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM of a process in MiB ({} once it is gone or a zombie; the file gives KiB)."""
    return _proc_fields(f"/proc/{pid}/status", ("VmRSS:", "VmHWM:"), 1024)


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (all threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_io(pid: int) -> dict[str, float]:
    """Bytes read from and written to disk by a process, in MiB."""
    return _proc_fields(f"/proc/{pid}/io", ("read_bytes:", "write_bytes:"), MiB)


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0). False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- processes ------------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class RunningNode:
    """``twistd --nodaemon cas --port 0 --data-dir D`` as a real process; ready when D/api.url exists."""

    def __init__(self, data: str, log_path: str) -> None:
        self.data = data
        self.log_path = log_path
        cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
               "cas", "--port", "tcp:0:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1", "--data-dir", data]
        self.log = open(log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(), cwd=os.path.dirname(data))
        self.pid = self.proc.pid
        url = os.path.join(data, "api.url")
        while not os.path.exists(url):
            if self.proc.poll() is not None:
                raise SystemExit(f"FAIL: the node exited ({self.proc.returncode}) before writing api.url:\n{self.tail()}")
            if time.perf_counter() - t0 > NODE_START_TIMEOUT:
                self.stop()
                raise SystemExit(f"FAIL: the node wrote no api.url within {NODE_START_TIMEOUT:.0f} s:\n{self.tail()}")
            time.sleep(0.02)
        # api.url is written in privilegedStartService; the worker pool starts right after, in startService.
        time.sleep(0.2)
        self.startup_seconds = time.perf_counter() - t0
        with open(url) as f:
            self.url = f.read().strip()
        self.idle = proc_status(self.pid)

    def tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(NODE_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  node {self.pid} ignored SIGTERM for {NODE_STOP_TIMEOUT:.0f} s: killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def wait_sampled(proc: subprocess.Popen, t0: float, timeout: float | None = None) -> tuple[Any, dict[str, float], float]:
    """Reap ``proc`` with ``wait4`` while a thread samples its ``VmHWM`` every 20 ms; kill it past ``timeout``
    seconds or if we are interrupted. Sets ``proc.returncode``; returns (rusage, {"hwm": MiB, "n": samples},
    seconds since ``t0``)."""
    samples = {"hwm": 0.0, "n": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            hwm = proc_status(proc.pid).get("VmHWM")
            if hwm is not None:
                samples["hwm"] = max(samples["hwm"], hwm)
                samples["n"] += 1
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    killer = threading.Timer(timeout, proc.kill) if timeout else None
    if killer is not None:
        killer.start()
    try:
        _pid, status, ru = os.wait4(proc.pid, 0)
    except BaseException:  # interrupted (SIGINT/SIGTERM): do not leave the child running
        proc.kill()
        proc.wait()
        raise
    finally:
        if killer is not None:
            killer.cancel()
        dt = time.perf_counter() - t0
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    return ru, samples, dt


def run_client(args: list[str], stdout_path: str, stderr_path: str, node_pid: int, nbytes: int) -> dict[str, Any]:
    """Run ``cas ARGS`` as a subprocess; wall clock from just before the spawn to the reap. Peak RSS from
    ``wait4``'s ``ru_maxrss`` and from ``VmHWM`` sampled every 20 ms (the larger is reported)."""
    cmd = [sys.executable, "-m", "cas.cli", *args]
    node_cpu0, node_io0 = proc_cpu(node_pid), proc_io(node_pid)
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=child_env(), cwd=os.path.dirname(stdout_path))
        ru, samples, dt = wait_sampled(proc, t0)
    node_cpu1, node_io1 = proc_cpu(node_pid), proc_io(node_pid)
    with open(stdout_path, "rb") as f:
        stdout = f.read().decode("utf-8", "replace")
    with open(stderr_path, "rb") as f:
        stderr = f.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(cmd[2:])} exited {proc.returncode}: {stderr.strip()}")
    ru_maxrss = ru.ru_maxrss / 1024
    r: dict[str, Any] = {
        "bytes": nbytes,
        "seconds": dt,
        "mib_s": nbytes / MiB / dt,
        "client_ru_maxrss_mib": ru_maxrss,
        "client_vmhwm_sampled_mib": samples["hwm"] or None,
        "client_vmhwm_samples": samples["n"],
        "client_peak_rss_mib": max(ru_maxrss, samples["hwm"]),
        "client_cpu_user_seconds": ru.ru_utime,
        "client_cpu_sys_seconds": ru.ru_stime,
        "client_minor_faults": ru.ru_minflt,
        "node_cpu_user_seconds": node_cpu1[0] - node_cpu0[0],
        "node_cpu_sys_seconds": node_cpu1[1] - node_cpu0[1],
        "node_disk_read_mib": node_io1.get("read_bytes", 0) - node_io0.get("read_bytes", 0),
        "node_disk_write_mib": node_io1.get("write_bytes", 0) - node_io0.get("write_bytes", 0),
        "stdout": stdout,
    }
    r["client_cpu_seconds"] = r["client_cpu_user_seconds"] + r["client_cpu_sys_seconds"]
    r["node_cpu_seconds"] = r["node_cpu_user_seconds"] + r["node_cpu_sys_seconds"]
    gib = nbytes / (1 << 30)
    r["cpu_s_per_gib"] = (r["client_cpu_seconds"] + r["node_cpu_seconds"]) / gib if gib else 0.0
    r["node_cpu_s_per_gib"] = r["node_cpu_seconds"] / gib if gib else 0.0
    r["client_cpu_s_per_gib"] = r["client_cpu_seconds"] / gib if gib else 0.0
    return r


# -- one size ---------------------------------------------------------------------------------------------------


def prefault(size: int, a: argparse.Namespace) -> None:
    """As pipeline.py's children do just before t0 (untimed): touch and free size + 64 MiB in a forked process."""
    if not a.no_prefault:
        pipeline.prefault(argparse.Namespace(prefault=size + 64 * MiB))


def pipeline_ops(size: int, work: str, s: dict[str, Any], src: str, a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The baseline: the pipelines alone, no HTTP (pipeline.py's cas ``put`` and ``get`` children)."""
    pipe_dir = os.path.join(work, "pipeline-data")
    key_file = os.path.join(work, "pipeline.key")
    out = os.path.join(work, "out.bin")
    pre = None if a.no_prefault else size + 64 * MiB
    rows: dict[str, dict[str, Any]] = {}
    try:
        load = pipeline.loadavg()
        r = pipeline.run_child("put", size=size, prefault=pre, src=src, data=pipe_dir, key_out=key_file)
        r["loadavg_before"] = load
        rows["pipeline_put"] = r
        say("pipeline put", r, r["peak_rss_mib"], None, load)
        pipeline.settle()
        load = pipeline.loadavg()
        r = pipeline.run_child("get", size=size, prefault=pre, data=pipe_dir, key_in=key_file, out=out)
        r["loadavg_before"] = load
        pipeline.check(r, s, "pipeline get")
        rows["pipeline_get"] = r
        say("pipeline get", r, r["peak_rss_mib"], None, load)
    finally:
        shutil.rmtree(pipe_dir, ignore_errors=True)
        for f in (key_file, out):
            if os.path.exists(f):
                os.unlink(f)
        pipeline.settle()
    return rows


def api_ops(size: int, work: str, s: dict[str, Any], src: str, a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """A fresh node (real twistd process) and the CLI as a subprocess: cas put, then cas get -o."""
    node_dir = os.path.join(work, "node-data")
    out = os.path.join(work, "out.bin")
    rows: dict[str, dict[str, Any]] = {}
    node: RunningNode | None = RunningNode(node_dir, os.path.join(work, "node.log"))
    try:
        assert node is not None
        print(f"  node {node.pid} up in {node.startup_seconds:.2f} s at {node.url}, idle RSS "
              f"{node.idle.get('VmRSS', 0):.1f} MiB", file=sys.stderr)
        # The smallest CLI round trip (start-up, imports, one HTTP request): included in every timed operation.
        rt = run_client(["--node", node_dir, "status"], os.path.join(work, "status.stdout"),
                        os.path.join(work, "status.stderr"), node.pid, 0)
        pipeline.settle()

        prefault(size, a)
        load = pipeline.loadavg()
        r = run_client(["--node", node_dir, "put", src], os.path.join(work, "put.stdout"), os.path.join(work, "put.stderr"),
                       node.pid, size)
        key = r.pop("stdout").strip()
        if not key.startswith("cas1") or "\n" in key:
            raise SystemExit(f"FAIL: cas put printed {key!r}, not one key")
        st = proc_status(node.pid)
        r.update(node_peak_rss_mib=st["VmHWM"], node_rss_end_mib=st["VmRSS"], loadavg_before=load,
                 node_idle_rss_mib=node.idle.get("VmRSS"), node_startup_seconds=node.startup_seconds,
                 cli_status_seconds=rt["seconds"], cli_status_peak_rss_mib=rt["client_peak_rss_mib"])
        rows["api_put"] = r
        say("API put", r, r["node_peak_rss_mib"], r["client_peak_rss_mib"], load)
        pipeline.settle()

        reset = reset_peak_rss(node.pid)  # so that the node's peak below is the get's own
        rss_before_get = proc_status(node.pid)
        prefault(size, a)
        load = pipeline.loadavg()
        r = run_client(["--node", node_dir, "get", key, "-o", out], os.path.join(work, "get.stdout"),
                       os.path.join(work, "get.stderr"), node.pid, size)
        r.pop("stdout")
        st = proc_status(node.pid)
        r.update(node_peak_rss_mib=st["VmHWM"], node_rss_end_mib=st["VmRSS"], node_peak_rss_reset=reset,
                 node_rss_before_mib=rss_before_get.get("VmRSS"), loadavg_before=load)
        rows["api_get"] = r
        say("API get", r, r["node_peak_rss_mib"], r["client_peak_rss_mib"], load)
        got = b3sum(out)
        pipeline.check(got, s, "API get (cas get -o OUT)")
        r["blake3"] = got["blake3"]
        code = node.stop()
        node_log_tail = node.tail()
        node = None
        if code not in (0, -signal.SIGTERM):  # twistd stops cleanly, then re-raises SIGTERM to exit with it
            print(f"  note: the node exited {code} after SIGTERM:\n{node_log_tail}", file=sys.stderr)
        rows["api_put"]["node_exit_code"] = code
    finally:
        if node is not None:
            node.stop()
        if not a.keep:
            shutil.rmtree(node_dir, ignore_errors=True)
        if os.path.exists(out):
            os.unlink(out)
        pipeline.settle()
    return rows


def bench_size(size: int, a: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=f"cas-api-bench-{pipeline.fmt_size(size)}-", dir=a.dir)
    src = os.path.join(work, "source.bin")
    print(f"== {pipeline.fmt_size(size)} in {work}", file=sys.stderr)
    try:
        s = pipeline.make_source(size, src)
        pipeline.settle()
        rounds = []
        for n in range(a.repeat):
            # Alternate which side goes first, so that drift (other work, page cache) does not favour one side.
            api_first = n % 2 == 1
            if a.repeat > 1:
                print(f" round {n + 1}/{a.repeat}{' (API first)' if api_first else ''}", file=sys.stderr)
            rwork = work if not a.keep else os.path.join(work, f"r{n}")
            os.makedirs(rwork, exist_ok=True)
            rows: dict[str, dict[str, Any]] = {}
            for side in ((api_ops, pipeline_ops) if api_first else (pipeline_ops, api_ops)):
                rows.update(side(size, rwork, s, src, a))
            rounds.append(rows)
        return {"size": size, "source_blake3": s["blake3"], "source_seconds": s["seconds"], "rounds": rounds,
                "summary": summarise(rounds)}
    finally:
        pipeline.remove_work(work, a.keep)


def say(label: str, r: dict[str, Any], node_rss: float, client_rss: float | None, load: float | None) -> None:
    cpu = r.get("cpu_s_per_gib", 0.0)
    extra = ""
    if client_rss is not None:
        extra = (f"  client RSS {client_rss:5.1f} MiB (ru_maxrss {r['client_ru_maxrss_mib']:.1f}, sampled "
                 f"{r['client_vmhwm_sampled_mib'] or 0:.1f})  CPU node {r['node_cpu_s_per_gib']:.2f} + client "
                 f"{r['client_cpu_s_per_gib']:.2f} s/GiB")
    print(f"  {label:<13} {r['mib_s']:8.1f} MiB/s {r['seconds']:7.2f} s  node/process RSS {node_rss:6.1f} MiB"
          f"  CPU {cpu:5.2f} s/GiB{extra}  load {load}", file=sys.stderr)


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per operation: median MiB/s and CPU s/GiB over rounds, highest peak RSS; ratios from the medians."""
    med = pipeline._median
    out: dict[str, dict[str, Any]] = {}
    for key, _label in ROWS:
        rs = [r[key] for r in rounds]
        x: dict[str, Any] = {
            "mib_s": med([r["mib_s"] for r in rs]),
            "mib_s_min": min(r["mib_s"] for r in rs),
            "mib_s_max": max(r["mib_s"] for r in rs),
            "node_peak_rss_mib": max(r["node_peak_rss_mib" if key.startswith("api_") else "peak_rss_mib"] for r in rs),
            "cpu_s_per_gib": med([r.get("cpu_s_per_gib", 0.0) for r in rs]),
        }
        if key.startswith("api_"):
            x["client_peak_rss_mib"] = max(r["client_peak_rss_mib"] for r in rs)
            x["node_cpu_s_per_gib"] = med([r["node_cpu_s_per_gib"] for r in rs])
            x["client_cpu_s_per_gib"] = med([r["client_cpu_s_per_gib"] for r in rs])
        out[key] = x
    for op in ("put", "get"):
        p, x = out[f"pipeline_{op}"], out[f"api_{op}"]
        x["ratio_vs_pipeline"] = ratio = x["mib_s"] / p["mib_s"]
        x["ratio_per_round"] = [r[f"api_{op}"]["mib_s"] / r[f"pipeline_{op}"]["mib_s"] for r in rounds]
        x["target_speed_met"] = ratio >= TARGET_RATIO
        x["target_node_rss_met"] = x["node_peak_rss_mib"] < TARGET_NODE_RSS_MIB
        x["target_client_rss_met"] = x["client_peak_rss_mib"] < TARGET_CLIENT_RSS_MIB
    return out


ROWS = (("pipeline_put", "pipeline put (no HTTP)"), ("api_put", "API put (cas put)"),
        ("pipeline_get", "pipeline get (no HTTP)"), ("api_get", "API get (cas get -o)"))


def table(all_sizes: list[dict[str, Any]], repeat: int) -> str:
    w = 20 if repeat > 1 else 8
    head = (f"{'operation':<23} {'size':>5} {'MiB/s' + (' (min-max)' if repeat > 1 else ''):>{w}} {'node RSS MiB':>13} "
            f"{'client RSS MiB':>15} {'CPU s/GiB':>10} {'API/pipe':>9}  target")
    lines = [head, "-" * (len(head) + 58)]
    for entry in all_sizes:
        size, r = entry["size"], entry["summary"]
        for key, label in ROWS:
            x = r[key]
            client = ratio = target = ""
            if key.startswith("api_"):
                client = f"{x['client_peak_rss_mib']:.1f}"
                ratio = f"{x['ratio_vs_pipeline']:.3f}"
                ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
                target = (f">= {TARGET_RATIO:.2f}: {ok(x['target_speed_met'])}; node < {TARGET_NODE_RSS_MIB}: "
                          f"{ok(x['target_node_rss_met'])}; client < {TARGET_CLIENT_RSS_MIB}: {ok(x['target_client_rss_met'])}")
            speed = f"{x['mib_s']:.1f}"
            if repeat > 1:
                speed += f" ({x['mib_s_min']:.0f}-{x['mib_s_max']:.0f})"
            lines.append(f"{label:<23} {pipeline.fmt_size(size):>5} {speed:>{w}} {x['node_peak_rss_mib']:13.1f} "
                         f"{client:>15} {x['cpu_s_per_gib']:10.2f} {ratio:>9}  {target}".rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child-b3sum":
        child_b3sum(sys.argv[2])
        return
    p = argparse.ArgumentParser(description="cas HTTP API + CLI benchmark against the pipelines alone")
    p.add_argument("--size", type=pipeline.parse_size, action="append", help="file size, e.g. 256M, 1G, 5G (repeatable)")
    p.add_argument("--dir", default="/work/bench-tmp", help="where temporary files go (default /work/bench-tmp)")
    p.add_argument("--json", help="write all figures as JSON to this file")
    p.add_argument("--no-prefault", action="store_true",
                   help="do not touch and free SIZE bytes of memory (untimed) just before each operation")
    p.add_argument("--repeat", type=int, default=1, help="rounds per size (default 1); the table then shows the median "
                   "MiB/s with min-max and the highest peak RSS. Rounds alternate which side (pipeline or API) goes first")
    p.add_argument("--keep", action="store_true", help="keep the temporary files (and the node's log)")
    a = p.parse_args()
    if not a.size:
        p.error("give at least one --size")
    signal.signal(signal.SIGTERM, pipeline.terminate)  # so that the node is stopped and the temp dir removed
    os.makedirs(a.dir, exist_ok=True)
    # source + one store (pipeline's, then the node's) + one read-back at a time
    a.repeat = max(1, a.repeat)
    # source + one store (pipeline's, then the node's) + one read-back at a time; --keep keeps every node's store
    need = max(a.size) * (3 + (a.repeat if a.keep else 0)) + 512 * MiB
    pipeline.require_room(a.dir, need)
    env = pipeline.environment()
    results = [bench_size(size, a) for size in a.size]
    text = table(results, a.repeat)
    print()
    print(f"cas API + CLI benchmark, {env['date']}, {env['cpus']} CPUs, load {env['loadavg']} at start, {a.repeat} round(s)")
    print(f"targets: API put and get >= {TARGET_RATIO:.0%} of the pipeline alone; node peak RSS < {TARGET_NODE_RSS_MIB} MiB; "
          f"cas client peak RSS < {TARGET_CLIENT_RSS_MIB} MiB")
    print(text, end="")
    if a.json:
        env["loadavg_end"] = pipeline.loadavg()
        env["parent_peak_rss_mib"] = pipeline.mem_status().get("VmHWM")
        doc = {"environment": env, "prefault": not a.no_prefault, "repeat": a.repeat,
               "targets": {"ratio_vs_pipeline": TARGET_RATIO, "node_peak_rss_mib": TARGET_NODE_RSS_MIB,
                           "client_peak_rss_mib": TARGET_CLIENT_RSS_MIB},
               "sizes": results, "table": text}
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
