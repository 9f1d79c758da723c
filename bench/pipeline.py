#!/usr/bin/env python
"""End-to-end throughput and memory benchmark of the cas store/read pipelines against a plain loop.

    python bench/pipeline.py --size 1G [--size 5G] [--dir DIR] [--json OUT] [--threads 4] [--keep]

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
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

MiB = 1 << 20
CHUNK = 16 * MiB  # source file generation
SEG = 1 << 20  # plaintext bytes per block (cas.cipher.SEGMENT_SIZE)
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
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["ru_maxrss"] = ru / 1024 if sys.platform != "darwin" else ru / MiB
    return out


def emit(result: dict[str, Any]) -> None:
    m = mem_status()
    result["peak_rss_mib"] = m.get("VmHWM", m["ru_maxrss"])
    result["ru_maxrss_mib"] = m["ru_maxrss"]
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


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
# the segment index and last flag (as cas.cipher), BLAKE3-256 of the block, one file per block under
# blocks/<aa>/<bb>/, written to tmp/, fsynced, renamed, shard directory fsynced (and new shard directories made
# durable as cas.blockstore does). The ordered block list is written durably at the end (cas's manifest).

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

    rss0 = mem_status().get("VmRSS")
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
    emit({"op": "put", "impl": "loop", "threads": a.threads, "bytes": a.size, "seconds": dt, "rss_start_mib": rss0})


def child_loop_get(a: argparse.Namespace) -> None:
    import hmac

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    store = LoopStore(a.data)
    rss0 = mem_status().get("VmRSS")
    t0 = time.perf_counter()
    with open(os.path.join(a.data, "list.json")) as f:
        lst = json.load(f)
    aead = AESGCM(bytes.fromhex(lst["key"]))
    blocks = lst["blocks"]
    h = blake3.blake3()
    n = 0
    with open(a.out, "wb", buffering=SEG) as out:
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
    emit({"op": "get", "impl": "loop", "threads": 1, "bytes": n, "seconds": dt, "rss_start_mib": rss0, "blake3": h.hexdigest()})


# -- child: cas ----------------------------------------------------------------------------------------------


def child_cas_put(a: argparse.Namespace) -> None:
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    from cas.datadir import prepare
    from cas.node import Node

    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        node = Node(prepare(a.data), reactor)
        node.start()
        try:
            rss0 = mem_status().get("VmRSS")
            t0 = time.perf_counter()
            stored = await node.put_path(a.src)
            dt = time.perf_counter() - t0
        finally:
            node.stop()
        with open(a.key_out, "w") as f:
            f.write(str(stored.cap) + "\n")
        result.update(op="put", impl="cas", threads=node._pool.max if node._pool else None,
                      bytes=stored.size, blocks=stored.blocks, seconds=dt, rss_start_mib=rss0)

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

    from cas.capability import ReadCap
    from cas.datadir import prepare
    from cas.node import Node

    @implementer(IConsumer)
    class HashingFileConsumer:
        """Writes to a buffered file and hashes the plaintext. Writes are synchronous, so a streaming
        producer is never paused; a pull producer is asked for the next piece after each write."""

        def __init__(self, path: str, reactor: Any) -> None:
            self.f = open(path, "wb", buffering=SEG)
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
        node = Node(prepare(a.data), reactor)
        node.start()
        consumer = HashingFileConsumer(a.out, reactor)
        try:
            rss0 = mem_status().get("VmRSS")
            t0 = time.perf_counter()
            of = await node.open(ReadCap.parse(key))
            await node.download(of).start(consumer)
            consumer.close()
            dt = time.perf_counter() - t0
        finally:
            node.stop()
        if consumer.producer is not None or consumer.registered != 1:
            raise RuntimeError("download did not register/unregister itself as the consumer's producer")
        result.update(op="get", impl="cas", threads=node._pool.max if node._pool else None,
                      bytes=consumer.written, seconds=dt, rss_start_mib=rss0, blake3=consumer.h.hexdigest())

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


def run_child(mode: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode]
    for k, v in kw.items():
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
    return res


def settle() -> None:
    """Flush dirty pages left by the previous step (untimed), so its write-back is not charged to the next."""
    os.sync()


def du(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def bench_size(size: int, base: str, threads: int, inflight: int, keep: bool) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=f"cas-bench-{fmt_size(size)}-", dir=base)
    src = os.path.join(work, "source.bin")
    loop_dir = os.path.join(work, "loop-store")
    loopt_dir = os.path.join(work, "loop-threaded-store")
    cas_dir = os.path.join(work, "cas-data")
    key_file = os.path.join(work, "cas.key")
    out = os.path.join(work, "out.bin")
    print(f"== {fmt_size(size)} in {work}", file=sys.stderr)
    try:
        t = time.perf_counter()
        s = run_child("mksrc", size=size, src=src)
        print(f"  source: {fmt_size(size)} written and fsynced in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        settle()

        def step(label: str, mode: str, **kw: Any) -> dict[str, Any]:
            r = run_child(mode, size=size, **kw)
            print(f"  {label:<22} {r['mib_s']:8.1f} MiB/s  {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:6.1f} MiB",
                  file=sys.stderr)
            settle()
            return r

        rows: dict[str, dict[str, Any]] = {}
        # Order: loop put, (threaded loop put), cas put, loop get, cas get.
        rows["loop_put"] = step("loop put (1 thread)", "loop-put", src=src, data=loop_dir, threads=1, inflight=1)
        rows["loop_put_threaded"] = step(f"loop put ({threads} threads)", "loop-put", src=src, data=loopt_dir,
                                         threads=threads, inflight=inflight)
        if not keep:
            shutil.rmtree(loopt_dir)
            settle()
        rows["cas_put"] = step("cas put", "put", src=src, data=cas_dir, key_out=key_file)
        rows["cas_put"]["disk_bytes"] = du(cas_dir)
        rows["loop_get"] = step("loop get (1 thread)", "loop-get", data=loop_dir, out=out)
        check(rows["loop_get"], s, "loop get")
        os.unlink(out)
        settle()
        rows["cas_get"] = step("cas get", "get", data=cas_dir, key_in=key_file, out=out)
        check(rows["cas_get"], s, "cas get")
        os.unlink(out)
        return {"size": size, "source_blake3": s["blake3"], "results": rows}
    finally:
        if keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def check(r: dict[str, Any], s: dict[str, Any], what: str) -> None:
    if r["bytes"] != s["bytes"] or r["blake3"] != s["blake3"]:
        raise SystemExit(
            f"FAIL: {what} returned {r['bytes']} bytes with BLAKE3 {r['blake3']}, "
            f"the source has {s['bytes']} bytes with BLAKE3 {s['blake3']}"
        )


def table(all_sizes: list[dict[str, Any]], threads: int) -> str:
    head = f"{'operation':<22} {'size':>5} {'MiB/s':>8} {'peak RSS MiB':>13} {'cas/loop':>9} {'cas/thr':>8}  target"
    lines = [head, "-" * len(head)]
    for entry in all_sizes:
        size, r = entry["size"], entry["results"]
        for key, label in (
            ("loop_put", "loop put (1 thread)"),
            ("loop_put_threaded", f"loop put ({threads} threads)"),
            ("cas_put", "cas put"),
            ("loop_get", "loop get (1 thread)"),
            ("cas_get", "cas get"),
        ):
            x = r[key]
            ratio = thr = target = ""
            if key.startswith("cas_"):
                op = key[4:]
                x["ratio_vs_loop"] = x["mib_s"] / r[f"loop_{op}"]["mib_s"]
                ratio = f"{x['ratio_vs_loop']:.2f}"
                if op == "put":
                    x["ratio_vs_threaded_loop"] = x["mib_s"] / r["loop_put_threaded"]["mib_s"]
                    thr = f"{x['ratio_vs_threaded_loop']:.2f}"
                ok_speed = x["ratio_vs_loop"] >= TARGET_RATIO
                ok_rss = x["peak_rss_mib"] < TARGET_RSS_MIB
                x["target_speed_met"], x["target_rss_met"] = ok_speed, ok_rss
                target = (f"speed >= {TARGET_RATIO:.2f}: {'ok' if ok_speed else 'MISSED'}; "
                          f"RSS < {TARGET_RSS_MIB}: {'ok' if ok_rss else 'MISSED'}")
            lines.append(f"{label:<22} {fmt_size(size):>5} {x['mib_s']:8.1f} {x['peak_rss_mib']:13.1f} {ratio:>9} {thr:>8}  {target}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
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
    p.add_argument("--keep", action="store_true", help="keep the temporary files")
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
    threads = max(2, a.threads)
    inflight = a.inflight or 2 * threads
    os.makedirs(a.dir, exist_ok=True)
    need = max(a.size) * 4 + 256 * MiB  # source + loop store + cas store + one read-back at a time
    st = os.statvfs(a.dir)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise SystemExit(f"not enough room in {a.dir}: {free / (1 << 30):.1f} GiB free, {need / (1 << 30):.1f} GiB needed")
    results = []
    for size in a.size:
        results.append(bench_size(size, a.dir, threads, inflight, a.keep))
    text = table(results, threads)
    print()
    print(f"cas pipeline benchmark, {environment()['date']}, {os.cpu_count()} CPUs; "
          f"targets: cas >= {TARGET_RATIO:.0%} of the 1-thread loop both ways, cas peak RSS < {TARGET_RSS_MIB} MiB")
    print(text, end="")
    if a.json:
        doc = {"environment": environment(), "threads": threads, "inflight": inflight,
               "targets": {"ratio_vs_loop": TARGET_RATIO, "peak_rss_mib": TARGET_RSS_MIB}, "sizes": results}
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
