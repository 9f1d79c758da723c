#!/usr/bin/env python
"""End-to-end throughput and memory benchmark of the cas store/read pipelines against a plain loop.

    python bench/pipeline.py --size 1G [--size 5G] [--dir DIR] [--json OUT]
                             [--repeat N] [--threads 4] [--no-prefault] [--keep]

For each size, in one run: make a random source file, then (each in a fresh child process, so memory
figures are per operation) store it with a plain single-threaded loop, with a plain threaded loop, with
cas (``Node.put_path``), read it back with the plain loop, and with cas (``Node.open`` + ``Node.download``),
checking the BLAKE3 of every read-back against the source. See bench/README.md for how to read the table.

The parent process imports nothing but the standard library, so it stays small: on Linux a child's
``ru_maxrss`` starts at the parent's peak RSS (exec keeps the old memory map's high-water mark), so the
table uses the child's own ``VmHWM`` from /proc/self/status and reports ``ru_maxrss`` beside it in the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

MiB = 1 << 20
CHUNK = 16 * MiB  # source file generation
SEG = 1 << 20  # plaintext bytes per block (cas.content.cipher.SEGMENT_SIZE)
RESULT_PREFIX = "BENCH-RESULT "

TARGET_RATIO = 0.70  # cas >= 70% of the plain loop, both ways
TARGET_RSS_MIB = 100  # cas peak RSS < 100 MiB


# -- helpers shared by parent and children (standard library only) -------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 256M, 1G, 5G (binary units)")
    n, unit = float(m.group(1)), m.group(2).upper()
    return int(n * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def fmt_size(n: int) -> str:
    for unit, k in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return f"{n}B" if n < MiB else f"{n / MiB:.1f}M"


def mem_status() -> dict[str, float]:
    """This process's current and peak RSS (MiB) from /proc, plus ru_maxrss (MiB)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) / 1024
    except OSError:
        pass
    try:
        with open("/proc/self/io") as f:  # bytes this process made the kernel fetch from / send to storage
            for line in f:
                if line.startswith(("read_bytes:", "write_bytes:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val) / MiB
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["ru_maxrss"] = ru / 1024 if sys.platform != "darwin" else ru / MiB
    return out


def cpu_now() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_split() -> tuple[float, float, int]:
    """User and system CPU seconds and minor page faults of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_minflt


def emit(result: dict[str, Any]) -> None:
    m = mem_status()
    result["peak_rss_mib"] = m.get("VmHWM", m["ru_maxrss"])
    result["ru_maxrss_mib"] = m["ru_maxrss"]
    for key in ("read_bytes", "write_bytes"):  # whole process, MiB
        if key in m:
            result[f"disk_{key}_mib"] = m[key]
    if "cpu0" in result:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_seconds"] = ru.ru_utime + ru.ru_stime - result.pop("cpu0")
    if "split0" in result:
        (u0, s0, f0), (u1, s1, f1) = result.pop("split0"), result.pop("split1", None) or cpu_split()
        result["cpu_user_seconds"], result["cpu_sys_seconds"], result["minor_faults"] = u1 - u0, s1 - s0, f1 - f0
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def prefault(a: argparse.Namespace) -> None:
    """Untimed, just before an operation: make a forked process touch and free ``a.prefault`` bytes.

    On this kind of VM, memory the guest has not used recently is expensive to touch (the host backs it
    lazily and takes freed memory back within seconds): 2 GiB of fresh pages cost ~3 s of system time, the
    same pages again right after ~1.5 s. Every operation allocates about ``size`` bytes of new page cache
    (block files or the output file), so without this the operation that happens to follow a deletion runs
    on cheap pages and the others on dear ones. The fork keeps the touched memory out of this process's
    peak RSS (VmHWM and ru_maxrss)."""
    n = getattr(a, "prefault", 0) or 0
    if n <= 0:
        return
    pid = os.fork()
    if pid == 0:
        try:
            import mmap

            m = mmap.mmap(-1, n)
            z = bytes(CHUNK)
            for off in range(0, n, CHUNK):
                m[off : off + min(CHUNK, n - off)] = z[: min(CHUNK, n - off)]
            m.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- child: source file --------------------------------------------------------------------------------------


def child_mksrc(a: argparse.Namespace) -> None:
    """Random bytes from an AES-256-CTR keystream (several GiB/s), 16 MiB at a time; fsynced so its
    write-back does not land inside the first measurement."""
    import blake3
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(CHUNK)
    h = blake3.blake3()
    left = a.size
    t0 = time.perf_counter()
    with open(a.src, "wb", buffering=0) as f:
        while left:
            n = min(CHUNK, left)
            chunk = enc.update(zeros if n == CHUNK else zeros[:n])
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[f.write(view) :]
            left -= n
        os.fsync(f.fileno())
    emit({"op": "mksrc", "bytes": a.size, "seconds": time.perf_counter() - t0, "blake3": h.hexdigest()})


# -- child: the plain loop (no Twisted) ----------------------------------------------------------------------
# Same work and durability as cas: 1 MiB segments, AES-256-GCM with the nonce and associated data derived from
# the segment index and last flag (as cas.content.cipher), BLAKE3-256 of the block, one file per block under
# blocks/<aa>/<bb>/, written to tmp/, fsynced, renamed, shard directory fsynced (and new shard directories made
# durable as cas.store.blockstore does). The ordered block list is written durably at the end (cas's manifest).

_SEGMENT_AD = b"cas/segment/v1"


def _nonce(index: int, last: bool) -> bytes:
    return struct.pack(">QB3x", index, 1 if last else 0)


def _ad(index: int, last: bool) -> bytes:
    return _SEGMENT_AD + struct.pack(">QB", index, 1 if last else 0)


class LoopStore:
    def __init__(self, root: str) -> None:
        self.blocks = os.path.join(root, "blocks")
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.blocks, exist_ok=True)
        os.makedirs(self.tmp, exist_ok=True)
        self.root = root

    def path(self, hexdigest: str) -> str:
        return os.path.join(self.blocks, hexdigest[0:2], hexdigest[2:4], hexdigest)

    def _makedirs_durably(self, shard: str) -> None:
        if os.path.isdir(shard):
            return
        parent = os.path.dirname(shard)
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            fsync_dir(self.blocks)
        os.makedirs(shard, exist_ok=True)
        fsync_dir(parent)

    def put(self, hexdigest: str, block: bytes, tag: str) -> None:
        tmp = os.path.join(self.tmp, f"{hexdigest}.{tag}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        path = self.path(hexdigest)
        shard = os.path.dirname(path)
        self._makedirs_durably(shard)
        os.rename(tmp, path)
        fsync_dir(shard)

    def write_list(self, key: bytes, digests: list[str], size: int) -> None:
        tmp = os.path.join(self.tmp, "list")
        with open(tmp, "w") as f:
            json.dump({"key": key.hex(), "size": size, "blocks": digests}, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.root, "list.json"))
        fsync_dir(self.root)


def _segments(path: str):
    """Yield (index, last, plaintext) of 1 MiB segments, reading one ahead to know the last one."""
    with open(path, "rb", buffering=0) as f:
        cur = f.read(SEG)
        i = 0
        while True:
            nxt = f.read(SEG) if len(cur) == SEG else b""
            last = not nxt
            yield i, last, cur
            if last:
                return
            cur = nxt
            i += 1


def child_loop_put(a: argparse.Namespace) -> None:
    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    store = LoopStore(a.data)
    key = os.urandom(32)
    aead = AESGCM(key)

    def seal_store(i: int, last: bool, plain: bytes) -> str:
        block = aead.encrypt(_nonce(i, last), plain, _ad(i, last))
        h = blake3.blake3(block, max_threads=1).hexdigest()
        store.put(h, block, str(i))
        return h

    prefault(a)
    rss0 = mem_status().get("VmRSS")
    cpu0, split0 = cpu_now(), cpu_split()
    t0 = time.perf_counter()
    digests: list[str] = []
    if a.threads <= 1:
        for i, last, plain in _segments(a.src):
            digests.append(seal_store(i, last, plain))
    else:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=a.threads) as ex:
            for i, last, plain in _segments(a.src):
                if len(pending) >= a.inflight:
                    digests.append(pending.popleft().result())
                pending.append(ex.submit(seal_store, i, last, plain))
            while pending:
                digests.append(pending.popleft().result())
    store.write_list(key, digests, a.size)
    dt = time.perf_counter() - t0
    emit({"op": "put", "impl": "loop", "threads": a.threads, "bytes": a.size, "seconds": dt, "rss_start_mib": rss0, "cpu0": cpu0,
          "split0": split0})


def child_loop_get(a: argparse.Namespace) -> None:
    import hmac

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    store = LoopStore(a.data)
    prefault(a)
    rss0 = mem_status().get("VmRSS")
    cpu0, split0 = cpu_now(), cpu_split()
    t0 = time.perf_counter()
    with open(os.path.join(a.data, "list.json")) as f:
        lst = json.load(f)
    aead = AESGCM(bytes.fromhex(lst["key"]))
    blocks = lst["blocks"]
    h = blake3.blake3()
    n = 0
    with open(a.out, "wb") as out:  # buffered; see HashingFileConsumer for why the default buffer size
        for i, hexdigest in enumerate(blocks):
            with open(store.path(hexdigest), "rb") as bf:
                block = bf.read()
            if not hmac.compare_digest(blake3.blake3(block, max_threads=1).hexdigest(), hexdigest):
                raise SystemExit(f"loop get: block {i} is corrupt")
            last = i == len(blocks) - 1
            plain = aead.decrypt(_nonce(i, last), block, _ad(i, last))
            h.update(plain)
            out.write(plain)
            n += len(plain)
    dt = time.perf_counter() - t0
    emit({"op": "get", "impl": "loop", "threads": 1, "bytes": n, "seconds": dt, "rss_start_mib": rss0, "cpu0": cpu0,
          "split0": split0, "blake3": h.hexdigest()})


# -- child: cas ----------------------------------------------------------------------------------------------


def node_options(a: argparse.Namespace) -> dict[str, int]:
    """Experiment knobs (default: cas's own defaults)."""
    opts = {}
    if a.cas_workers:
        opts["workers"] = a.cas_workers
    if a.cas_window:
        opts["window"] = a.cas_window
    return opts


def child_cas_put(a: argparse.Namespace) -> None:
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    from cas.node.core import Node
    from cas.store.datadir import prepare

    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        node = Node(prepare(a.data), reactor, **node_options(a))
        node.start()
        try:
            prefault(a)
            rss0 = mem_status().get("VmRSS")
            cpu0, split0 = cpu_now(), cpu_split()
            t0 = time.perf_counter()
            stored = await node.put_path(a.src)
            dt = time.perf_counter() - t0
            cpu, split1 = cpu_now() - cpu0, cpu_split()
        finally:
            node.stop()
        with open(a.key_out, "w") as f:
            f.write(str(stored.cap) + "\n")
        result.update(op="put", impl="cas", threads=node._pool.max if node._pool else None,
                      bytes=stored.size, blocks=stored.blocks, seconds=dt, rss_start_mib=rss0, cpu_seconds=cpu,
                      split0=split0, split1=split1, window=node.window)

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    if not result:
        raise SystemExit("cas put: no result")
    emit(result)


def child_cas_get(a: argparse.Namespace) -> None:
    import blake3
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.interfaces import IConsumer
    from twisted.internet.task import react
    from zope.interface import implementer

    from cas.content.capability import ReadCap
    from cas.node.core import Node
    from cas.store.datadir import prepare

    @implementer(IConsumer)
    class HashingFileConsumer:
        """Writes to a buffered file and hashes the plaintext. Writes are synchronous, so a streaming
        producer is never paused; a pull producer is asked for the next piece after each write.

        The file keeps Python's default buffer (8 KiB): pieces larger than the buffer go straight to the
        kernel, small ones are gathered. A 1 MiB buffer would first memcpy every 1 MiB piece into itself,
        holding the GIL on the reactor thread (seen in py-spy as the top reactor-thread line)."""

        def __init__(self, path: str, reactor: Any) -> None:
            self.f = open(path, "wb")
            self.h = blake3.blake3()
            self.reactor = reactor
            self.producer: Any = None
            self.streaming = True
            self.written = 0
            self.registered = 0

        def registerProducer(self, producer: Any, streaming: bool) -> None:
            if self.producer is not None:
                raise RuntimeError("a producer is already registered")
            self.producer, self.streaming = producer, streaming
            self.registered += 1
            if not streaming:
                self.reactor.callLater(0, self._pull)

        def unregisterProducer(self) -> None:
            self.producer = None

        def _pull(self) -> None:
            if self.producer is not None and not self.streaming:
                self.producer.resumeProducing()

        def write(self, data: bytes) -> None:
            self.h.update(data)
            self.f.write(data)
            self.written += len(data)
            if self.producer is not None and not self.streaming:
                self.reactor.callLater(0, self._pull)

        def close(self) -> None:
            self.f.close()

    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        with open(a.key_in) as f:
            key = f.read().strip()
        node = Node(prepare(a.data), reactor, **node_options(a))
        node.start()
        consumer = HashingFileConsumer(a.out, reactor)
        try:
            prefault(a)
            rss0 = mem_status().get("VmRSS")
            cpu0, split0 = cpu_now(), cpu_split()
            t0 = time.perf_counter()
            of = await node.open(ReadCap.parse(key))
            await node.download(of).start(consumer)
            consumer.close()
            dt = time.perf_counter() - t0
            cpu, split1 = cpu_now() - cpu0, cpu_split()
        finally:
            node.stop()
        if consumer.producer is not None or consumer.registered != 1:
            raise RuntimeError("download did not register/unregister itself as the consumer's producer")
        result.update(op="get", impl="cas", threads=node._pool.max if node._pool else None,
                      bytes=consumer.written, seconds=dt, rss_start_mib=rss0, cpu_seconds=cpu,
                      split0=split0, split1=split1, window=node.window, blake3=consumer.h.hexdigest())

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    if not result:
        raise SystemExit("cas get: no result")
    emit(result)


CHILDREN = {
    "mksrc": child_mksrc,
    "loop-put": child_loop_put,
    "loop-get": child_loop_get,
    "put": child_cas_put,
    "get": child_cas_get,
}


# -- parent ----------------------------------------------------------------------------------------------------

ROWS = (
    ("loop_put", "loop put (1 thread)"),
    ("loop_put_threaded", "loop put ({threads} threads)"),
    ("cas_put", "cas put"),
    ("loop_get", "loop get (1 thread)"),
    ("cas_get", "cas get"),
)


def run_child(mode: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    for l in proc.stdout.splitlines():
        if not l.startswith(RESULT_PREFIX):
            print(f"  [{mode}] {l}", file=sys.stderr)
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"benchmark child {mode!r} failed (exit {proc.returncode}): {' '.join(cmd)}")
    res = json.loads(lines[-1][len(RESULT_PREFIX) :])
    res["mib_s"] = res["bytes"] / MiB / res["seconds"] if res["seconds"] > 0 else float("inf")
    if "cpu_seconds" in res and res["bytes"]:
        res["cpu_s_per_gib"] = res["cpu_seconds"] / (res["bytes"] / (1 << 30))
    return res


def make_source(size: int, src: str) -> dict[str, Any]:
    """The source file (random, fsynced) of a benchmark, in a child; its result has the file's BLAKE3."""
    t = time.perf_counter()
    s = run_child("mksrc", size=size, src=src)
    print(f"  source: {fmt_size(size)} written and fsynced in {time.perf_counter() - t:.1f} s, "
          f"BLAKE3 {s['blake3'][:16]}...", file=sys.stderr)
    return s


def settle() -> None:
    """Flush dirty pages left by the previous step (untimed), so its write-back is not charged to the next."""
    os.sync()


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def du(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def check(r: dict[str, Any], s: dict[str, Any], what: str) -> None:
    if r["bytes"] != s["bytes"] or r["blake3"] != s["blake3"]:
        raise SystemExit(
            f"FAIL: {what} returned {r['bytes']} bytes with BLAKE3 {r['blake3']}, "
            f"the source has {s['bytes']} bytes with BLAKE3 {s['blake3']}"
        )


def one_round(size: int, work: str, src: str, s: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """The five operations, in order: loop put, threaded loop put, cas put, loop get, cas get."""
    loop_dir = os.path.join(work, "loop-store")
    loopt_dir = os.path.join(work, "loop-threaded-store")
    cas_dir = os.path.join(work, "cas-data")
    key_file = os.path.join(work, "cas.key")
    out = os.path.join(work, "out.bin")
    os.makedirs(work, exist_ok=True)
    cas_kw = {"cas_workers": a.cas_workers or None, "cas_window": a.cas_window or None}
    rows: dict[str, dict[str, Any]] = {}

    def step(key: str, mode: str, **kw: Any) -> dict[str, Any]:
        load = loadavg()
        r = run_child(mode, size=size, prefault=None if a.no_prefault else size + 64 * MiB, **kw)
        r["loadavg_before"] = load
        label = dict(ROWS)[key].format(threads=a.threads)
        print(f"  {label:<22} {r['mib_s']:8.1f} MiB/s {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:6.1f} MiB"
              f"  CPU {r.get('cpu_s_per_gib', 0):5.2f} s/GiB (sys {r.get('cpu_sys_seconds', 0):.2f} s)"
              f"  faults {r.get('minor_faults', 0) / (r['bytes'] / MiB):5.0f}/MiB"
              f"  disk read {r.get('disk_read_bytes_mib', 0):4.0f} MiB  load {load}", file=sys.stderr)
        settle()
        rows[key] = r
        return r

    try:
        step("loop_put", "loop-put", src=src, data=loop_dir, threads=1, inflight=1)
        step("loop_put_threaded", "loop-put", src=src, data=loopt_dir, threads=a.threads, inflight=a.inflight)
        if not a.keep:
            shutil.rmtree(loopt_dir)
            settle()
        step("cas_put", "put", src=src, data=cas_dir, key_out=key_file, **cas_kw)
        rows["cas_put"]["disk_bytes"] = du(cas_dir)
        check(step("loop_get", "loop-get", data=loop_dir, out=out), s, "loop get")
        os.unlink(out)
        settle()
        check(step("cas_get", "get", data=cas_dir, key_in=key_file, out=out, **cas_kw), s, "cas get")
        os.unlink(out)
    finally:
        if not a.keep:
            for d in (loop_dir, loopt_dir, cas_dir):
                shutil.rmtree(d, ignore_errors=True)
            for f in (key_file, out):
                if os.path.exists(f):
                    os.unlink(f)
            settle()
    return rows


def bench_size(size: int, a: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=f"cas-bench-{fmt_size(size)}-", dir=a.dir)
    src = os.path.join(work, "source.bin")
    print(f"== {fmt_size(size)} in {work}", file=sys.stderr)
    try:
        s = make_source(size, src)
        settle()
        rounds = []
        for n in range(a.repeat):
            if a.repeat > 1:
                print(f" round {n + 1}/{a.repeat}", file=sys.stderr)
            rounds.append(one_round(size, work if n == 0 or not a.keep else os.path.join(work, f"r{n}"), src, s, a))
        return {"size": size, "source_blake3": s["blake3"], "rounds": rounds, "summary": summarise(rounds)}
    finally:
        if a.keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per operation: median MiB/s and CPU s/GiB over rounds, highest peak RSS; ratios from the medians."""
    out: dict[str, dict[str, Any]] = {}
    for key, _label in ROWS:
        rs = [r[key] for r in rounds]
        out[key] = {
            "mib_s": _median([r["mib_s"] for r in rs]),
            "mib_s_min": min(r["mib_s"] for r in rs),
            "mib_s_max": max(r["mib_s"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "cpu_s_per_gib": _median([r.get("cpu_s_per_gib", 0.0) for r in rs]),
            "disk_read_mib": max(r.get("disk_read_bytes_mib", 0.0) for r in rs),
        }
    for op in ("put", "get"):
        x = out[f"cas_{op}"]
        x["ratio_vs_loop"] = x["mib_s"] / out[f"loop_{op}"]["mib_s"]
        if op == "put":
            x["ratio_vs_threaded_loop"] = x["mib_s"] / out["loop_put_threaded"]["mib_s"]
        x["target_speed_met"] = x["ratio_vs_loop"] >= TARGET_RATIO
        x["target_rss_met"] = x["peak_rss_mib"] < TARGET_RSS_MIB
    return out


def table(all_sizes: list[dict[str, Any]], threads: int, repeat: int) -> str:
    w = 20 if repeat > 1 else 8
    head = (f"{'operation':<22} {'size':>5} {'MiB/s' + (' (min-max)' if repeat > 1 else ''):>{w}} {'peak RSS MiB':>13} {'CPU s/GiB':>10} {'disk rd MiB':>11} "
            f"{'cas/loop':>9} {'cas/thr':>8}  target")
    lines = [head, "-" * (len(head) + 31)]
    for entry in all_sizes:
        size, r = entry["size"], entry["summary"]
        for key, label in ROWS:
            x = r[key]
            ratio = thr = target = ""
            if key.startswith("cas_"):
                ratio = f"{x['ratio_vs_loop']:.2f}"
                thr = f"{x['ratio_vs_threaded_loop']:.2f}" if "ratio_vs_threaded_loop" in x else ""
                target = (f"cas/loop >= {TARGET_RATIO:.2f}: {'ok' if x['target_speed_met'] else 'MISSED'}; "
                          f"RSS < {TARGET_RSS_MIB}: {'ok' if x['target_rss_met'] else 'MISSED'}")
            speed = f"{x['mib_s']:.1f}"
            if repeat > 1:
                speed += f" ({x['mib_s_min']:.0f}-{x['mib_s_max']:.0f})"
            speed = f"{speed:>{w}}"
            lines.append(f"{label.format(threads=threads):<22} {fmt_size(size):>5} {speed} {x['peak_rss_mib']:13.1f} "
                         f"{x['cpu_s_per_gib']:10.2f} {x['disk_read_mib']:11.0f} {ratio:>9} {thr:>8}  {target}".rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": loadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_mib"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return env


def main() -> None:
    p = argparse.ArgumentParser(description="cas pipeline benchmark: cas put/get against a plain loop")
    p.add_argument("--size", type=parse_size, action="append", help="file size, e.g. 256M, 1G, 5G (repeatable)")
    p.add_argument("--dir", default="/work/bench-tmp", help="where temporary files go (default /work/bench-tmp)")
    p.add_argument("--json", help="write all figures as JSON to this file")
    p.add_argument("--threads", type=int, default=4, help="threads of the threaded loop baseline (default 4)")
    p.add_argument("--inflight", type=int, default=0, help="segments in flight in the threaded loop (default 2 x threads)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the five operations per size (default 1); "
                   "the table shows the median MiB/s and the highest peak RSS")
    p.add_argument("--cas-workers", type=int, default=0, help="experiment: Node(workers=N) (default: cas's default)")
    p.add_argument("--cas-window", type=int, default=0, help="experiment: Node(window=N) (default: cas's default)")
    p.add_argument("--no-prefault", action="store_true",
                   help="do not touch and free SIZE bytes of memory (untimed) just before each operation")
    p.add_argument("--keep", action="store_true", help="keep the temporary files")
    p.add_argument("--prefault", type=int, default=0, help=argparse.SUPPRESS)
    # hidden: child modes
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for name in ("src", "data", "out", "key-out", "key-in"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        a.size = a.size[-1] if a.size else 0
        CHILDREN[a.child](a)
        return

    if not a.size:
        p.error("give at least one --size")
    a.threads = max(2, a.threads)
    a.inflight = a.inflight or 2 * a.threads
    a.repeat = max(1, a.repeat)
    os.makedirs(a.dir, exist_ok=True)
    # source + loop store + cas store + one read-back at a time (the threaded store is removed before cas put)
    need = max(a.size) * 4 * (a.repeat if a.keep else 1) + 256 * MiB
    require_room(a.dir, need)
    env = environment()
    results = [bench_size(size, a) for size in a.size]
    text = table(results, a.threads, a.repeat)
    print()
    knobs = " ".join(f"{k}={v}" for k, v in (("workers", a.cas_workers), ("window", a.cas_window)) if v)
    print(f"cas pipeline benchmark, {env['date']}, {env['cpus']} CPUs, load {env['loadavg']} at start, "
          f"{a.repeat} round(s){', cas ' + knobs if knobs else ''}")
    print(f"targets: cas >= {TARGET_RATIO:.0%} of the 1-thread loop both ways; cas peak RSS < {TARGET_RSS_MIB} MiB")
    print(text, end="")
    if a.json:
        env["loadavg_end"] = loadavg()
        doc = {"environment": env, "threads": a.threads, "inflight": a.inflight, "repeat": a.repeat,
               "cas_options": {"workers": a.cas_workers or None, "window": a.cas_window or None},
               "prefault": not a.no_prefault,
               "targets": {"ratio_vs_loop": TARGET_RATIO, "peak_rss_mib": TARGET_RSS_MIB}, "sizes": results,
               "table": text}
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


def git_state(repo: str) -> dict[str, Any]:
    """The commit measured and any uncommitted change under cas/ (the code the node and receiver ran)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", repo, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "dirty_cas_files": [line[3:] for line in git("status", "--porcelain", "--", "cas").splitlines()]}


def terminate(signum: int, frame: Any) -> None:
    """A signal handler that exits through the normal clean-up (finally blocks, atexit)."""
    raise SystemExit(128 + signum)


def end_environment(env: dict[str, Any]) -> None:
    """Stamp the end of a run on its environment record: load, the parent's own peak RSS, the time."""
    env["loadavg_end"] = loadavg()
    env["parent_peak_rss_mib"] = mem_status().get("VmHWM")
    env["date_end"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_results(path: str, doc: dict[str, Any]) -> None:
    """Every figure of a run as JSON at ``path`` (its directory created), and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"JSON: {path}", file=sys.stderr)


def require_room(path: str, need: int) -> None:
    """Stop before starting when the file system of ``path`` has less than ``need`` bytes free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise SystemExit(f"not enough room in {path}: {free / (1 << 30):.1f} GiB free, {need / (1 << 30):.1f} GiB needed")


def stop_children(children: set[subprocess.Popen]) -> None:
    """SIGTERM every live child, SIGKILL one that does not exit within 5 s; empties ``children``."""
    for proc in list(children):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except OSError:
                pass
        children.discard(proc)


def remove_work(work: str, keep: bool) -> None:
    """The end of a size's run: keep its temporary directory (--keep) or remove it, then let the disk settle."""
    if keep:
        print(f"  kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    settle()


if __name__ == "__main__":
    main()
