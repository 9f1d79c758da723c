"""What every benchmark in bench/ shares (see bench/README.md). Standard library only at import time: a parent that
imports Twisted or cas would raise every exec'd child's ``ru_maxrss``. Children run as ``SCRIPT --child MODE JSON``."""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MiB, GiB = 1 << 20, 1 << 30
CHUNK = 16 * MiB  # source file generation and hashing
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
RESULT_PREFIX = "BENCH-RESULT "
DROP_CACHES = "/proc/sys/vm/drop_caches"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S, TIMELINE_S = 0.020, 1.0  # VmHWM sampling period; nodes' RSS (anonymous / file-backed) recorded this often
START_TIMEOUT, STOP_TIMEOUT = 60.0, 30.0  # seconds a child or node has to be ready / to exit
LIVE: set[subprocess.Popen] = set()  # every live child, stopped on the way out

# -- sizes, medians, tables ------------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 256M, 1G, 5G (binary units)")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2).upper()])


def fmt_size(n: int) -> str:
    for unit, k in (("G", GiB), ("M", MiB), ("K", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return f"{n}B" if n < MiB else f"{n / MiB:.1f}M"


def median(xs: list[float]) -> float:
    xs, n = sorted(xs), len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def summary(rs: list[dict[str, Any]], med: tuple[str, ...] = (), top: tuple[str, ...] = ()) -> dict[str, Any]:
    """Over rounds: median MiB/s (from the request, and from the start when there) with min and max, the median of
    ``med`` keys and the highest of ``top`` keys."""
    x: dict[str, Any] = {}
    for k in ("mib_s", "mib_s_end_to_end"):
        if all(k in r for r in rs):
            vals = [r[k] for r in rs]
            x.update({k: median(vals), f"{k}_min": min(vals), f"{k}_max": max(vals)})
    for k in med:
        if vals := [r[k] for r in rs if r.get(k) is not None]:
            x[k] = median(vals)
    x.update({k: max(r.get(k) or 0.0 for r in rs) for k in top})
    return x


def rates(r: dict[str, Any], nbytes: int, request_s: float, start_s: float) -> dict[str, Any]:
    """Both figures of an operation: from the request (``mib_s``) and from the command's start (what a user
    waits: process start-up and imports included, ``mib_s_end_to_end``)."""
    r.update(bytes=nbytes, request_seconds=request_s, start_seconds=start_s, mib_s=nbytes / MiB / request_s,
             mib_s_end_to_end=nbytes / MiB / start_s)
    return r


def speed(x: dict[str, Any], repeat: int, key: str = "mib_s") -> str:
    spread = f" ({x[key + '_min']:.0f}-{x[key + '_max']:.0f})" if repeat > 1 and key + "_min" in x else ""
    return f"{x[key]:.1f}{spread}"


def speed_col(a: argparse.Namespace, title: str = "MiB/s", key: str = "mib_s") -> tuple[str, int, Callable]:
    """The column of a median MiB/s, with min-max over several rounds."""
    mm, w = (" (min-max)", 20) if a.repeat > 1 else ("", 8)
    return title + mm, w, lambda x: speed(x, a.repeat, key)


def ok(b: bool | None, yes: str = "ok") -> str:
    return "n/a" if b is None else (yes if b else "MISSED")


def targets(*judged: tuple[str, str]) -> Callable[[dict[str, Any]], str]:
    """A table cell: " LABEL: ok; LABEL: MISSED" for each (label, key) of a row that has the key."""
    return lambda x: " " + "; ".join(f"{t}: {ok(x[k])}" for t, k in judged) if judged[0][1] in x else ""


def render(cols: list[tuple[str, int]], groups: list[list[list[str]]]) -> str:
    """A table: ``cols`` are (title, width), a negative width left-aligns; a blank line between groups."""
    def line(cells: list[str]) -> str:
        return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_t, w) in zip(cells, cols)).rstrip()

    out = [line([t for t, _w in cols])]
    out.append("-" * len(out[0]))
    for g in groups:
        out += [line(row) for row in g] + [""]
    return "\n".join(out).rstrip() + "\n"


def cell(spec: str | Callable[[dict[str, Any]], str], x: dict[str, Any]) -> str:
    """``spec(x)``, or "KEY:FORMAT" (blank where ``x`` has no KEY)."""
    if callable(spec):
        return spec(x)
    key, fmt = spec.split(":")
    return format(x[key], fmt) if x.get(key) is not None else ""


def table(results: list[dict[str, Any]], first: tuple[str, int], cols: list[tuple[str, int, Any]],
          labels: dict[str, str]) -> str:
    """A group of rows per size (``labels``: summary key -> row label; a key missing from a size is skipped): the
    label, the size, then a ``cell`` per column of ``cols`` (title, width, spec)."""
    return render([first, ("size", 5), *(c[:2] for c in cols)],
                  [[[label, fmt_size(e["size"]), *(cell(c[2], e["summary"][k]) for c in cols)]
                    for k, label in labels.items() if k in e["summary"]] for e in results])


def say(label: str, r: dict[str, Any], *keys: str, **extra: Any) -> None:
    """A progress line on stderr: both rates, the figures ``keys`` of ``r`` and ``extra``, load and host steal."""
    def f(v: Any) -> str:
        if isinstance(v, dict):
            return " ".join(f"{k} {x:.0f}" for k, x in v.items())
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    figs = {**{k: r.get(k) for k in keys}, **extra}
    print(f"  {label:<22} {r['mib_s']:8.1f} MiB/s (e2e {f(r.get('mib_s_end_to_end', '-'))})  "
          + "  ".join(f"{k} {f(v)}" for k, v in figs.items() if v is not None)
          + f"  load {r.get('loadavg_before')}  steal {r.get('steal_share') or 0:.0%}", file=sys.stderr)


# -- what /proc says -------------------------------------------------------------------------------------------------


def read_text(path: str, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: str, offset: int = 0) -> str:
    return "\n".join(read_text(path, offset).splitlines()[-30:])


def _fields(path: str, keys: tuple[str, ...], unit: int) -> dict[str, float]:
    """``KEY: VALUE`` lines of a /proc file, values divided by ``unit`` ({} once the process is gone)."""
    lines = (x.split(":", 1) for x in read_text(path).splitlines() if x.startswith(keys))
    return {k: int(v.split()[0]) / unit for k, v in lines}


def mem_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile (MiB) and bytes read from / written to storage (MiB) of a process."""
    return {**_fields(f"/proc/{pid}/status", ("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"), 1024),
            **_fields(f"/proc/{pid}/io", ("read_bytes:", "write_bytes:"), MiB)}


def cpu_split() -> tuple[float, float, int]:
    """User and system CPU seconds and minor page faults of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_minflt


def proc_stat(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds (all threads) and minor page faults of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return int(x[11]) / CLK_TCK, int(x[12]) / CLK_TCK, int(x[7])


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0). False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            return f.write("5") > 0
    except OSError:
        return False


def loadavg() -> float | None:
    x = read_text("/proc/loadavg").split()
    return float(x[0]) if x else None


def cpu_ticks() -> tuple[int, int]:
    """(stolen, all) jiffies of the machine so far (/proc/stat)."""
    x = [int(v) for v in read_text("/proc/stat").split("\n", 1)[0].split()[1:]]
    return (x[7] if len(x) > 7 else 0), sum(x[:8])


def emit(result: dict[str, Any]) -> None:
    """A child's result line: ``split0``/``split1`` (``cpu_split()`` around its timed part) become its CPU and
    page faults; its own peak RSS (VmHWM), ``ru_maxrss`` and disk bytes are added."""
    m, ru = mem_status(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.update(peak_rss_mib=m.get("VmHWM", ru), ru_maxrss_mib=ru, disk_read_bytes_mib=m.get("read_bytes"),
                  disk_write_bytes_mib=m.get("write_bytes"))
    if "split0" in result:
        (u0, s0, f0), (u1, s1, f1) = result.pop("split0"), result.pop("split1", None) or cpu_split()
        result.update(cpu_user_seconds=u1 - u0, cpu_sys_seconds=s1 - s0, minor_faults=f1 - f0,
                      cpu_seconds=u1 - u0 + s1 - s0)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def prefault(n: int) -> float:
    """Untimed, just before an operation: a forked process touches and frees ``n`` bytes (bench/README.md,
    "Memory warm-up"); the fork keeps them out of this process's peak RSS. Returns the seconds spent."""
    if n <= 0:
        return 0.0
    t = time.perf_counter()
    if (pid := os.fork()) == 0:
        try:
            import mmap

            m, z = mmap.mmap(-1, n), bytes(CHUNK)
            for off in range(0, n, CHUNK):
                m[off:off + min(CHUNK, n - off)] = z[:min(CHUNK, n - off)]
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - t


def settle() -> None:
    """Write back dirty pages left by the previous step (untimed), so they are not charged to the next."""
    os.sync()


def cool(a: argparse.Namespace) -> str:
    """With ``--cache cold``: write back dirty pages and drop the page cache (needs root). Returns the state."""
    if a.cache != "cold":
        return "warm"
    settle()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")
    return "cold"


@contextmanager
def timed_phase(a: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Around a timed command (its servers already up): the page cache dropped first (``--cache cold``), the load
    before it, and the host's steal share (the vCPU time given to other tenants) over it, for the phase's row."""
    row: dict[str, Any] = {"cache": cool(a), "loadavg_before": loadavg()}
    ticks = cpu_ticks()
    yield row
    after = cpu_ticks()
    row["steal_share"] = (after[0] - ticks[0]) / (after[1] - ticks[1]) if after[1] > ticks[1] else None


def du(path: str) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_blocks * 512 for d, _dirs, files in os.walk(path) for n in files)


class Watch:
    """Around a phase, for running processes: CPU, page faults and disk bytes over it, peak RSS (VmHWM at the end
    and sampled every 20 ms; reset first unless ``reset=False``) and RSS every second (``rss_timeline``)."""

    def __init__(self, procs: dict[str, int], reset: bool = True) -> None:
        self.procs, self.reset, self.n = procs, reset, 0
        self.hwm = dict.fromkeys(procs, 0.0)
        self.timeline: dict[str, list[list[float]]] = {k: [] for k in procs}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0, next_t = time.perf_counter(), 0.0
        while not self._done.is_set():
            t = time.perf_counter() - t0
            for name, pid in self.procs.items():
                m = _fields(f"/proc/{pid}/status", ("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:"), 1024)
                self.hwm[name] = max(self.hwm[name], m.get("VmHWM", 0.0))
                if t >= next_t and m:
                    rss = [round(m.get(k, 0), 1) for k in ("VmRSS", "RssAnon", "RssFile")]
                    self.timeline[name].append([round(t, 2), *rss])
            next_t += TIMELINE_S if t >= next_t else 0
            self.n += 1
            self._done.wait(SAMPLE_S)

    def __enter__(self) -> Watch:
        self.before = {name: (mem_status(pid), proc_stat(pid), reset_peak_rss(pid) if self.reset else False)
                       for name, pid in self.procs.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.result: dict[str, dict[str, Any]] = {}
        for name, pid in self.procs.items():
            (m0, st0, reset), m = self.before[name], mem_status(pid)
            try:
                st = proc_stat(pid)
            except OSError:
                st = st0
            u, s, flt = (x - x0 for x, x0 in zip(st, st0))
            self.result[name] = {
                "pid": pid, "peak_rss_mib": max(m.get("VmHWM", 0.0), self.hwm[name]), "vmhwm_end_mib": m.get("VmHWM"),
                "vmhwm_sampled_mib": self.hwm[name] or None, "rss_end_mib": m.get("VmRSS"),
                "startup_hwm_mib": m0.get("VmHWM"), "idle_rss_mib": m0.get("VmRSS"), "hwm_reset": reset,
                "cpu_user_seconds": u, "cpu_sys_seconds": s, "cpu_seconds": u + s, "minor_faults": flt,
                "disk_read_mib": m.get("read_bytes", 0) - m0.get("read_bytes", 0),
                "disk_write_mib": m.get("write_bytes", 0) - m0.get("write_bytes", 0),
                "rss_timeline": self.timeline[name],  # [seconds, VmRSS, RssAnon, RssFile] (MiB)
            }


# -- child processes -------------------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return {**env, **extra}


def child_cmd(script: str, mode: str, **kw: Any) -> list[str]:
    return [sys.executable, script, "--child", mode, json.dumps(kw)]


def reap(proc: subprocess.Popen, timeout: float | None = None, term: bool = False) -> int | None:
    """Wait for ``proc`` (after a SIGTERM with ``term``) up to ``timeout`` seconds, then kill it."""
    try:
        if term and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"  process {proc.pid} still running after {timeout:.0f} s: killing it", file=sys.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        LIVE.discard(proc)
    return proc.returncode


def wait_until(ready: Callable[[], Any], proc: subprocess.Popen, what: str, log: str, t0: float) -> Any:
    """Until ``ready()`` is true; FAIL if ``proc`` exits first or takes over START_TIMEOUT since ``t0``."""
    while not (x := ready()):
        if proc.poll() is not None:
            raise SystemExit(f"FAIL: {what} exited ({proc.returncode}) before it was ready:\n{tail(log)}")
        if time.perf_counter() - t0 > START_TIMEOUT:
            raise SystemExit(f"FAIL: {what} not ready within {START_TIMEOUT:.0f} s:\n{tail(log)}")
        time.sleep(0.02)
    return x


class Child:
    """A process with its output in WORK/NAME.stdout and .stderr (``stdout``: elsewhere), timed from just before
    its spawn; stopped on the way out if still running."""

    def __init__(self, cmd: list[str], work: str, name: str, env: dict[str, str] | None = None,
                 stdout: Any = None, stdin: Any = subprocess.DEVNULL, what: str = "") -> None:
        self.what = what or name
        self.out, self.err = (os.path.join(work, f"{name}.{x}") for x in ("stdout", "stderr"))
        with open(self.out, "wb") as fo, open(self.err, "wb") as fe:
            self.t0 = time.perf_counter()
            self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout or fo, stderr=fe, env=env or child_env(),
                                         cwd=work)
        LIVE.add(self.proc)

    def wait(self, timeout: float | None = None) -> tuple[Any, dict[str, float], float]:
        """Reaped with ``wait4`` while a ``Watch`` samples its VmHWM every 20 ms; killed past ``timeout`` seconds
        or if we are interrupted; FAIL unless it exits 0. (rusage, {"hwm": MiB, "n": samples}, seconds)."""
        proc, killer = self.proc, threading.Timer(timeout or 0, self.proc.kill)
        with Watch({"c": proc.pid}, reset=False) as w:
            if timeout:
                killer.start()
            try:
                _pid, status, ru = os.wait4(proc.pid, 0)
            except BaseException:  # interrupted (SIGINT/SIGTERM): do not leave the child running
                proc.kill()
                proc.wait()
                raise
            finally:
                killer.cancel()
                dt = time.perf_counter() - self.t0
                LIVE.discard(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        if proc.returncode != 0:
            why = f"timed out after {timeout:.0f} s" if timeout and dt >= timeout else f"exited {proc.returncode}"
            raise SystemExit(f"FAIL: {self.what} {why}:\n{tail(self.err)}")
        return ru, {"hwm": w.hwm["c"], "n": w.n}, dt

    def result(self) -> dict[str, Any]:
        """The last result line it printed (``emit``); FAIL if there is none."""
        lines = [x for x in read_text(self.out).splitlines() if x.startswith(RESULT_PREFIX)]
        if not lines:
            raise SystemExit(f"FAIL: {self.what} gave no result")
        return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_child(script: str, mode: str, work: str, name: str, timeout: float | None = None, **kw: Any) -> dict[str, Any]:
    """A child to completion: its result, ``process_seconds`` (spawn to exit), and its peak RSS: its own VmHWM at
    the end and sampled every 20 ms, and ``ru_maxrss`` from ``wait4`` (unless it forked, see ``prefault``)."""
    c = Child(child_cmd(script, mode, **kw), work, name)
    ru, samples, wall = c.wait(timeout)
    for line in read_text(c.out).splitlines():
        if not line.startswith(RESULT_PREFIX):
            print(f"  [{name}] {line}", file=sys.stderr)
    r, w4 = c.result(), ru.ru_maxrss / 1024
    r.update(process_seconds=wall, process_cpu_seconds=ru.ru_utime + ru.ru_stime, wait4_ru_maxrss_mib=w4,
             vmhwm_sampled_mib=samples["hwm"] or None, vmhwm_end_mib=r["peak_rss_mib"],
             peak_rss_mib=max(r["peak_rss_mib"], samples["hwm"], 0.0 if r.get("prefault_seconds") else w4))
    if r.get("bytes") and "seconds" in r:  # from the request (timed inside) and from the spawn (warm-up excluded)
        rates(r, r["bytes"], r["seconds"], wall - r.get("prefault_seconds", 0.0))
    if r.get("cpu_seconds") is not None and r.get("bytes"):
        r["cpu_s_per_gib"] = r["cpu_seconds"] / (r["bytes"] / GiB)
    return r


def start_server(script: str, mode: str, work: str, name: str, **kw: Any) -> tuple[Child, str]:
    """A TLS server child (``listen_once``); (it, "PORT@NODEID" to dial) once it listens."""
    port_file = os.path.join(work, f"{name}.port")
    c = Child(child_cmd(script, mode, port_file=port_file, **kw), work, name)
    port, nid = wait_until(lambda: os.path.exists(port_file) and read_text(port_file).split(), c.proc, name, c.err,
                           c.t0)
    return c, f"{port}@{nid}"


def finish_server(c: Child, what: str) -> dict[str, Any]:
    """Its result, once it has exited on its own (killed after STOP_TIMEOUT)."""
    if reap(c.proc, STOP_TIMEOUT) != 0:
        raise SystemExit(f"FAIL: {what} exited {c.proc.returncode}:\n{tail(c.err)}")
    return c.result()


def check(r: dict[str, Any], s: dict[str, Any], what: str) -> None:
    if r["bytes"] != s["bytes"] or r["blake3"] != s["blake3"]:
        raise SystemExit(f"FAIL: {what} returned {r['bytes']} bytes with BLAKE3 {r['blake3']}, "
                         f"the source has {s['bytes']} bytes with BLAKE3 {s['blake3']}")


def child_mksrc(a: argparse.Namespace) -> None:
    """Random bytes from an AES-256-CTR keystream, 16 MiB at a time, hashed (BLAKE3) as written, fsynced so its
    write-back does not land inside the first measurement."""
    import blake3
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros, h, left, t0 = bytes(CHUNK), blake3.blake3(), a.size, time.perf_counter()
    with open(a.src, "wb", buffering=0) as f:
        while left:
            n = min(CHUNK, left)
            chunk = enc.update(zeros if n == CHUNK else zeros[:n])
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[f.write(view):]
            left -= n
        os.fsync(f.fileno())
    emit({"op": "mksrc", "size": a.size, "seconds": time.perf_counter() - t0, "blake3": h.hexdigest()})


def child_b3sum(a: argparse.Namespace) -> None:
    """BLAKE3 and length of a file, or of stdin (``cas get -o -`` piped in)."""
    import blake3

    h, n, buf = blake3.blake3(max_threads=blake3.blake3.AUTO), 0, bytearray(4 * MiB)
    with open(a.path, "rb", buffering=0) if a.path else open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as f:
        while k := f.readinto(buf):
            h.update(memoryview(buf)[:k])
            n += k
    emit({"op": "b3sum", "blake3": h.hexdigest(), "bytes": n})


def make_source(size: int, src: str) -> dict[str, Any]:
    """The random source file of a benchmark (fsynced), written by a child; the result has its BLAKE3."""
    s = run_child(__file__, "mksrc", os.path.dirname(src), "mksrc", size=size, src=src)
    s.update(bytes=size, src=src)
    print(f"  source: {fmt_size(size)} written and fsynced in {s['seconds']:.1f} s, BLAKE3 {s['blake3'][:16]}...",
          file=sys.stderr)
    settle()
    return s


# -- cas node processes and the CLI ----------------------------------------------------------------------------------

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]
_LISTENING = re.compile(r"cas node (\S+) listening for peers on tcp:127\.0\.0\.1:(\d+)")
_LOG_PROBLEM = re.compile(r"Traceback|Unhandled|#error\]|#critical\]|#failure\]")


class Node:
    """One ``twistd --nodaemon cas`` process, peer port and API on 127.0.0.1 (port 0 at the first start, then the
    same port again, so that a restart on the same data dir keeps its address). Its log is appended to."""

    def __init__(self, name: str, data: str, extra: list[str] | None = None, log: str | None = None) -> None:
        self.name, self.data, self.extra = name, data, extra or []
        self.log_path, self.port, self.node_id = log or data + ".log", 0, None
        self.proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, bootstrap: str | None = None) -> None:
        self.url_path = os.path.join(self.data, "api.url")
        if os.path.exists(self.url_path):
            os.unlink(self.url_path)  # left by the previous run: wait for the new one
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.offset = self.log.tell()
        cmd = TWISTD + ["cas", "--port", f"tcp:{self.port}:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1",
                        "--data-dir", self.data] + self.extra + (["--bootstrap", bootstrap] if bootstrap else [])
        self.t0 = time.perf_counter()  # unbuffered: the log line with the node id and port must reach the file at once
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(PYTHONUNBUFFERED="1"), cwd=os.path.dirname(self.data))
        LIVE.add(self.proc)

    def wait_ready(self) -> None:
        """Until it has logged its node id and peer port and written api.url; then 0.2 s for its worker pool."""
        assert self.proc is not None
        def ready() -> Any:
            return os.path.exists(self.url_path) and _LISTENING.search(read_text(self.log_path, self.offset))

        m = wait_until(ready, self.proc, f"node {self.name}", self.log_path, self.t0)
        node_id, port = m.group(1), int(m.group(2))
        if (self.port and port != self.port) or (self.node_id and node_id != self.node_id):
            raise SystemExit(f"FAIL: node {self.name} came back as {node_id} on {port}, "
                             f"not {self.node_id} on {self.port}")
        self.node_id, self.port = node_id, port
        time.sleep(0.2)
        self.startup_seconds = time.perf_counter() - self.t0
        self.url = read_text(self.url_path).strip()

    def contact(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.port}"

    def stop(self, phase: str = "") -> dict[str, Any] | None:
        """SIGTERM; its exit code and the error lines of this run's log (both printed when not clean)."""
        if self.proc is None:
            return None
        code = reap(self.proc, STOP_TIMEOUT, term=True)
        self.log.close()
        self.proc, text = None, read_text(self.log_path, self.offset)
        bad = [line for line in text.splitlines() if _LOG_PROBLEM.search(line)]
        if code not in (0, -signal.SIGTERM):  # twistd stops cleanly, then re-raises SIGTERM to exit with it
            print(f"  note: node {self.name} exited {code} after SIGTERM {phase}:\n{tail(self.log_path, self.offset)}",
                  file=sys.stderr)
        if bad:
            print(f"  note: node {self.name} logged {len(bad)} error line(s) {phase}, first: {bad[0][:300]}",
                  file=sys.stderr)
        return {"exit_code": code, "error_lines": bad[:20], "error_line_count": len(bad),
                "warning_lines": len(re.findall(r"#warn\]", text))}


def start_nodes(nodes: list[Node]) -> None:
    """The first node started alone (unless up), the others with it as their bootstrap contact; until all ready."""
    first = nodes[0]
    if not first.alive():
        first.start()
        first.wait_ready()
    others = [n for n in nodes[1:] if not n.alive()]
    for n in others:
        n.start(first.contact())
    for n in others:
        n.wait_ready()


# ``python -m cas.cli`` with an audit hook writing the monotonic time of the CLI's first ``socket.connect`` (its
# request to the node's API) to $BENCH_CONNECT_FILE: the CLI is timed both from its spawn and from its request.
_CONNECT_HOOK = (
    "import os, sys, time\n"
    "_f = [os.environ.pop('BENCH_CONNECT_FILE')]\n"
    "def _hook(event, args):\n"
    "    if event == 'socket.connect' and _f:\n"
    "        t = time.perf_counter()\n"
    "        with open(_f.pop(), 'w') as out:\n"
    "            out.write(repr(t))\n"
    "sys.addaudithook(_hook)\n"
    "import runpy\n"
    "runpy.run_module('cas.cli', run_name='__main__', alter_sys=True)\n"
)


class Cli(Child):
    """``cas ARGS`` as a child (``python -c HOOK``, see above), timed from just before the spawn and from its
    request to its reap; peak RSS from wait4's ru_maxrss and VmHWM sampled every 20 ms."""

    def __init__(self, args: list[str], work: str, name: str, stdout: Any = None) -> None:
        self.connect_path, self.piped = os.path.join(work, f"{name}.connect"), stdout is not None
        if os.path.exists(self.connect_path):
            os.unlink(self.connect_path)
        super().__init__([sys.executable, "-c", _CONNECT_HOOK, *args], work, name,
                         child_env(BENCH_CONNECT_FILE=self.connect_path), stdout, what=f"cas {' '.join(args)}")

    def wait(self, timeout: float | None = None, nbytes: int = 0) -> dict[str, Any]:  # type: ignore[override]
        ru, samples, dt = super().wait(timeout)
        self.end, what = self.t0 + dt, self.what
        try:
            connect = float(read_text(self.connect_path)) - self.t0
        except ValueError:
            raise SystemExit(f"FAIL: {what} did not record when it connected to the node") from None
        if not 0 <= connect <= dt:
            raise SystemExit(f"FAIL: {what}: connection time {connect:.3f} s outside 0-{dt:.3f} s")
        w4 = ru.ru_maxrss / 1024
        r = {"seconds": dt, "connect_seconds": connect, "transfer_seconds": dt - connect, "cli_ru_maxrss_mib": w4,
             "cli_vmhwm_sampled_mib": samples["hwm"] or None, "cli_vmhwm_samples": samples["n"],
             "cli_peak_rss_mib": max(w4, samples["hwm"]), "cli_cpu_user_seconds": ru.ru_utime,
             "cli_cpu_sys_seconds": ru.ru_stime, "cli_minor_faults": ru.ru_minflt,
             "stdout": "" if self.piped else read_text(self.out)}
        return rates(r, nbytes, dt - connect, dt) if nbytes else r


# -- TLS pieces of the baselines (children only: these import Twisted and cas) -----------------------------------------


def identity(data: str) -> Any:
    from cas.base.identity import load_or_create

    os.makedirs(data, exist_ok=True)
    return load_or_create(os.path.join(data, "node.key"), os.path.join(data, "node.crt"))


def tuned(result: dict[str, Any], tune: bool = True) -> dict[str, Any]:
    """With ``tune``: the same allocator settings as a cas node (before Twisted is imported)."""
    if tune:
        from cas.base.malloc import tune as apply

        result["tuned"] = apply()
    return result


def listen_once(port_file: str, ident: Any, make: Callable[[], Any], result: dict[str, Any]) -> None:
    """When the reactor runs: listen on 127.0.0.1:0 (TLS 1.3 with this identity, cas.peer.peertls) for one
    connection, then write "PORT NODEID" to ``port_file``."""
    from twisted.internet import endpoints, reactor
    from twisted.internet.protocol import Factory

    from cas.peer.peertls import server_creator

    class OneShot(Factory):
        served = False

        def buildProtocol(self, addr: Any) -> Any:
            if self.served:
                return None
            self.served = True
            return make()

    def ready(port: Any) -> None:
        with open(port_file + ".tmp", "w") as f:
            f.write(f"{port.getHost().port} {ident}\n")
        os.replace(port_file + ".tmp", port_file)

    def failed(f: Any) -> None:
        result["error"] = f"cannot listen: {f.getErrorMessage()}"
        reactor.stop()

    ep = endpoints.wrapServerTLS(server_creator(ident), endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    reactor.callWhenRunning(lambda: ep.listen(OneShot()).addCallbacks(ready, failed))


def dial(contact: str, ident: Any, proto: Any, result: dict[str, Any]) -> None:
    """When the reactor runs: connect ``proto`` to "PORT@NODEID" on 127.0.0.1 over TLS (that key pinned)."""
    from twisted.internet import endpoints, reactor

    from cas.base.nodeid import parse_node_id
    from cas.peer.peertls import client_creator

    port, nid = contact.split("@", 1)

    def failed(f: Any) -> None:
        result["error"] = f"cannot connect to 127.0.0.1:{port}: {f.getErrorMessage()}"
        reactor.stop()

    ep = endpoints.wrapClientTLS(client_creator(ident, parse_node_id(nid)),
                                 endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(port), timeout=10))
    reactor.callWhenRunning(lambda: endpoints.connectProtocol(ep, proto).addErrback(failed))


def run_reactor(result: dict[str, Any], what: str, need: str | None = "seconds") -> None:
    """The reactor until it stops; then the child's result line, or SystemExit with its error."""
    from twisted.internet import reactor

    reactor.run()
    if "error" in result or (need and need not in result):
        raise SystemExit(f"{what}: {result.get('error', 'no result')}")
    emit(result)


def child_serve(a: argparse.Namespace) -> None:
    """The bare TLS sender of the baselines: once the client's first byte arrives, the files of ``a.paths`` in order
    (read on the reactor thread) through a registered push producer, no framing, then close."""
    result = tuned({"op": "serve", "bytes": 0}, a.tune)
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import Protocol
    from zope.interface import implementer

    with open(a.paths) as f:
        paths = f.read().split()

    @implementer(IPushProducer)
    class Streamer(Protocol):
        i, paused, stopped, started, pumping, finished = 0, False, False, False, False, False

        def dataReceived(self, data: bytes) -> None:
            if not self.started:
                self.started = True
                result["split0"], result["read0"] = cpu_split(), mem_status().get("read_bytes", 0.0)
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
            if self.started:  # what the stream read from the disk (the start-up, before any cache drop, excluded)
                result["split1"] = cpu_split()
                result["served_disk_read_mib"] = mem_status().get("read_bytes", 0.0) - result.pop("read0")
            result["blocks_sent"], result["complete"] = self.i, self.finished
            if not self.finished:
                result["error"] = f"the stream did not complete ({self.i} blocks sent)"
            reactor.callLater(0, reactor.stop)

    listen_once(a.port_file, identity(a.data), Streamer, result)
    run_reactor(result, "serve", "complete")


# -- options, the run, the result ------------------------------------------------------------------------------------


def parser(description: str, cache: str = "warm", files: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark takes (``files=False``: only --json and --repeat, for pure computations);
    ``cache`` is the script's default page-cache state."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", help="write every figure here (default bench/results/SCRIPT-SIZES-rN.json)")
    p.add_argument("--repeat", type=int, default=1, help="rounds (per size) (default 1); medians in the table")
    if files:
        p.add_argument("--size", type=parse_size, action="append", help="file size, e.g. 256M, 1G, 5G (repeatable)")
        p.add_argument("--dir", default=None, help="where temporary files go (default: the system's temp dir, "
                       f"{tempfile.gettempdir()} here); removed afterwards")
        p.add_argument("--cache", choices=("cold", "warm"), default=cache, help="page cache at the start of each "
                       "timed operation: cold (sync and drop it: needs root) or warm (leave it) (default %(default)s)")
        p.add_argument("--keep", action="store_true", help="keep the temporary files (data dirs, logs, output)")
    return p


def terminate(signum: int, frame: Any) -> None:
    """A signal handler that exits through the normal clean-up (finally blocks, atexit)."""
    raise SystemExit(128 + signum)


def stop_children() -> None:
    """SIGTERM every live child, SIGKILL one that does not exit within 5 s."""
    for proc in list(LIVE):
        reap(proc, 5, term=True)


def main(p: argparse.ArgumentParser, children: dict[str, Callable[[argparse.Namespace], None]],
         run: Callable[[argparse.Namespace], None]) -> None:
    """A child mode (``--child MODE JSON``, hidden), or a run: the common options checked, then ``run(a)``."""
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return children[sys.argv[2]](argparse.Namespace(**json.loads(sys.argv[3])))
    a = p.parse_args()
    a.repeat = max(1, a.repeat)
    signal.signal(signal.SIGTERM, terminate)  # so that children are stopped and the temp dirs removed
    signal.signal(signal.SIGHUP, terminate)
    atexit.register(stop_children)
    if hasattr(a, "dir"):
        if a.size is None:
            p.error("give at least one --size")
        a.dir = os.path.abspath(a.dir or tempfile.gettempdir())
        os.makedirs(a.dir, exist_ok=True)
        try:
            cool(a)  # once now: a run that cannot drop the cache stops here, not in its first timed phase
        except OSError as e:
            raise SystemExit(f"FAIL: --cache cold needs write access to {DROP_CACHES} (root): {e.strerror}; "
                             "run as root or pass --cache warm") from None
    try:
        run(a)
    finally:
        stop_children()


def require_room(path: str, need: int) -> None:
    """Stop before starting when the file system of ``path`` has less than ``need`` bytes free."""
    st = os.statvfs(path)
    if st.f_bavail * st.f_frsize < need:
        raise SystemExit(f"not enough room in {path}: {st.f_bavail * st.f_frsize / GiB:.1f} GiB free, "
                         f"{need / GiB:.1f} GiB needed")


def environment() -> dict[str, Any]:
    """The machine, the time and the code measured (the commit and any uncommitted change under cas/)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = [x.split(":", 1)[1].strip() for x in read_text("/proc/cpuinfo").splitlines() if x.startswith("model name")]
    mem = read_text("/proc/meminfo").split()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg": loadavg(), "git": {"commit": git("rev-parse", "HEAD").strip() or None,
                                                   "dirty_cas_files": [x[3:] for x in git("status", "--porcelain",
                                                                                           "--", "cas").splitlines()]},
            "cpu": cpu[0] if cpu else None, "mem_total_mib": int(mem[1]) // 1024 if mem else None}


def title(name: str, env: dict[str, Any], a: argparse.Namespace) -> str:
    """The first header line of a table."""
    return f"{name}, {env['date']}, {env['cpus']} CPUs, load {env['loadavg']} at start, {a.repeat} round(s)"


def clean(*paths: str) -> None:
    """Files and directories removed (those that are there), then synced."""
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.path.exists(p) and os.unlink(p)
    settle()


def bench_sizes(a: argparse.Namespace, script: str, one_round: Callable[..., dict[str, Any]],
                summarise: Callable[[list[dict[str, Any]]], dict[str, Any]],
                prepare: Callable[[int, str], tuple[Any, dict[str, Any]]] | None = None,
                sizes: list[int] | None = None) -> list[dict[str, Any]]:
    """Per size (``--size``): a temporary work dir under ``--dir`` (removed afterwards unless ``--keep``, then
    synced), ``prepare(size, work)`` (default: the random source), then ``--repeat`` rounds of ``one_round(size,
    WORK/rN, prepared, n)`` (its rows), summarised."""
    out = []
    for size in sizes or a.size:
        work = tempfile.mkdtemp(prefix=f"cas-{script}-{fmt_size(size)}-", dir=a.dir)
        print(f"== {script}-{fmt_size(size)} in {work}", file=sys.stderr)
        try:
            if prepare:
                s, fields = prepare(size, work)
            else:
                s = make_source(size, os.path.join(work, "source.bin"))
                fields = {"source_blake3": s["blake3"], "source_seconds": s["seconds"]}
            rounds = []
            for n in range(a.repeat):
                if a.repeat > 1:
                    print(f" round {n + 1}/{a.repeat}", file=sys.stderr)
                os.makedirs(rwork := os.path.join(work, f"r{n}"), exist_ok=True)
                rounds.append(one_round(size, rwork, s, n))
            out.append({"size": size, **fields, "rounds": rounds, "summary": summarise(rounds)})
        finally:
            if a.keep:
                print(f"  kept {work}", file=sys.stderr)
            clean(*([] if a.keep else [work]))
    return out


def finish(a: argparse.Namespace, script: str, env: dict[str, Any], header: list[str], text: str,
           doc: dict[str, Any]) -> None:
    """Print the header lines and the table; write the JSON (``--json``, or bench/results/SCRIPT-SIZES-rN.json)."""
    print("\n" + "\n".join(header))
    print(text, end="", flush=True)
    env.update(loadavg_end=loadavg(), parent_peak_rss_mib=mem_status().get("VmHWM"),
               date_end=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    sizes = "-".join(fmt_size(s) for s in getattr(a, "size", None) or [])
    path = a.json or os.path.join(RESULTS, f"{script}-{sizes or 'run'}-r{a.repeat}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"environment": env, "options": {k: v for k, v in vars(a).items() if k != "json"}, **doc,
                   "table": text}, f, indent=1)
        f.write("\n")
    print(f"JSON: {path}", file=sys.stderr)


if __name__ == "__main__":  # the children above: harness.py --child MODE JSON
    main(argparse.ArgumentParser(), {"mksrc": child_mksrc, "b3sum": child_b3sum, "serve": child_serve}, lambda a: None)
