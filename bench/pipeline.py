#!/usr/bin/env python
"""cas store/read pipelines (``Node.put_path``; ``Node.open`` + ``Node.download``) against a plain loop with the same
durability, each operation in a fresh child process. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import struct
import time
from typing import Any

import harness
from harness import MiB

SEG = 1 << 20  # plaintext bytes per block (cas.content.cipher.SEGMENT_SIZE)
TARGET_RATIO = 0.70  # cas >= 70% of the plain loop, both ways
TARGET_RSS_MIB = 100  # cas peak RSS < 100 MiB
ROWS = {"loop_put": "loop put (1 thread)", "loop_put_threaded": "loop put ({threads} threads)", "cas_put": "cas put",
        "loop_get": "loop get (1 thread)", "cas_get": "cas get"}

# -- the plain loop (no Twisted): 1 MiB segments, AES-256-GCM with cas's nonce and associated data, BLAKE3 of the
# block, one file per block under blocks/<aa>/<bb>/ written to tmp/, fsynced, renamed, shard directory fsynced (new
# shard directories made durable as cas.store.blockstore does); the block list written durably at the end.

def _nonce(index: int, last: bool) -> bytes:
    return struct.pack(">QB3x", index, 1 if last else 0)


def _ad(index: int, last: bool) -> bytes:
    return b"cas/segment/v1" + struct.pack(">QB", index, 1 if last else 0)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def block_path(root: str, hexdigest: str) -> str:
    return os.path.join(root, "blocks", hexdigest[0:2], hexdigest[2:4], hexdigest)


class LoopStore:
    def __init__(self, root: str) -> None:
        self.root, self.blocks, self.tmp = root, os.path.join(root, "blocks"), os.path.join(root, "tmp")
        os.makedirs(self.blocks, exist_ok=True)
        os.makedirs(self.tmp, exist_ok=True)

    def put(self, hexdigest: str, block: bytes, tag: str) -> None:
        tmp, path = os.path.join(self.tmp, f"{hexdigest}.{tag}"), block_path(self.root, hexdigest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        shard = os.path.dirname(path)
        if not os.path.isdir(shard):
            parent = os.path.dirname(shard)
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                fsync_dir(self.blocks)
            os.makedirs(shard, exist_ok=True)
            fsync_dir(parent)
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
        cur, i = f.read(SEG), 0
        while True:
            nxt = f.read(SEG) if len(cur) == SEG else b""
            yield i, not nxt, cur
            if not nxt:
                return
            cur, i = nxt, i + 1


def begin(a: argparse.Namespace) -> dict[str, Any]:
    """Just before the timed part: the memory warm-up (bench/README.md), RSS, CPU and the clock."""
    pre = harness.prefault(a.prefault)
    return {"prefault_seconds": pre, "rss_start_mib": harness.mem_status().get("VmRSS"), "split0": harness.cpu_split(),
            "t0": time.perf_counter()}


def end(st: dict[str, Any], **kw: Any) -> dict[str, Any]:
    st.update(seconds=time.perf_counter() - st.pop("t0"), split1=harness.cpu_split(), **kw)
    return st


def child_loop_put(a: argparse.Namespace) -> None:
    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    store, key = LoopStore(a.data), os.urandom(32)
    aead = AESGCM(key)

    def seal_store(i: int, last: bool, plain: bytes) -> str:
        block = aead.encrypt(_nonce(i, last), plain, _ad(i, last))
        h = blake3.blake3(block, max_threads=1).hexdigest()
        store.put(h, block, str(i))
        return h

    st, digests = begin(a), []
    if a.threads <= 1:
        digests = [seal_store(i, last, plain) for i, last, plain in _segments(a.src)]
    else:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=a.threads) as ex:
            for i, last, plain in _segments(a.src):
                if len(pending) >= a.inflight:
                    digests.append(pending.popleft().result())
                pending.append(ex.submit(seal_store, i, last, plain))
            digests += [f.result() for f in pending]
    store.write_list(key, digests, a.size)
    harness.emit(end(st, op="put", impl="loop", threads=a.threads, bytes=a.size))


def child_loop_get(a: argparse.Namespace) -> None:
    import hmac

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    st = begin(a)
    with open(os.path.join(a.data, "list.json")) as f:
        lst = json.load(f)
    aead, blocks, h, n = AESGCM(bytes.fromhex(lst["key"])), lst["blocks"], blake3.blake3(), 0
    with open(a.out, "wb") as out:  # buffered, Python's default buffer: see child_cas_get
        for i, hexdigest in enumerate(blocks):
            with open(block_path(a.data, hexdigest), "rb") as bf:
                block = bf.read()
            if not hmac.compare_digest(blake3.blake3(block, max_threads=1).hexdigest(), hexdigest):
                raise SystemExit(f"loop get: block {i} is corrupt")
            last = i == len(blocks) - 1
            plain = aead.decrypt(_nonce(i, last), block, _ad(i, last))
            h.update(plain)
            out.write(plain)
            n += len(plain)
    harness.emit(end(st, op="get", impl="loop", threads=1, bytes=n, blake3=h.hexdigest()))


def _cas_child(a: argparse.Namespace, op: Any) -> None:
    """``op(node, reactor)`` (async) on a started Node, timed; its dict is the result."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    from cas.node.core import Node
    from cas.store.datadir import prepare

    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        node = Node(prepare(a.data), reactor)
        node.start()
        try:
            st = begin(a)
            kw = await op(node, reactor)
            result.update(end(st, impl="cas", threads=node._pool.max if node._pool else None, window=node.window, **kw))
        finally:
            node.stop()

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    if not result:
        raise SystemExit("cas: no result")
    harness.emit(result)


def child_cas_put(a: argparse.Namespace) -> None:
    async def put(node: Any, reactor: Any) -> dict[str, Any]:
        stored = await node.put_path(a.src)
        with open(a.key_out, "w") as f:
            f.write(str(stored.cap) + "\n")
        return {"op": "put", "bytes": stored.size, "blocks": stored.blocks}

    _cas_child(a, put)


def child_cas_get(a: argparse.Namespace) -> None:
    import blake3
    from twisted.internet.interfaces import IConsumer
    from zope.interface import implementer

    from cas.content.capability import ReadCap

    @implementer(IConsumer)
    class HashingFileConsumer:
        """Writes to a buffered file and hashes the plaintext; writes are synchronous, so a streaming producer is
        never paused, a pull producer is asked for the next piece after each write. Python's default buffer
        (8 KiB): a 1 MiB buffer would memcpy every piece on the reactor thread first."""

        def __init__(self, path: str, reactor: Any) -> None:
            self.f, self.h, self.reactor = open(path, "wb"), blake3.blake3(), reactor  # noqa: SIM115
            self.producer: Any = None
            self.streaming, self.written, self.registered = True, 0, 0

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

    async def get(node: Any, reactor: Any) -> dict[str, Any]:
        with open(a.key_in) as f:
            key = f.read().strip()
        consumer = HashingFileConsumer(a.out, reactor)
        await node.download(await node.open(ReadCap.parse(key))).start(consumer)
        consumer.f.close()
        if consumer.producer is not None or consumer.registered != 1:
            raise RuntimeError("download did not register/unregister itself as the consumer's producer")
        return {"op": "get", "bytes": consumer.written, "blake3": consumer.h.hexdigest()}

    _cas_child(a, get)


CHILDREN = {"loop-put": child_loop_put, "loop-get": child_loop_get, "put": child_cas_put, "get": child_cas_get}


def run_op(mode: str, size: int, work: str, name: str, a: argparse.Namespace, **kw: Any) -> dict[str, Any]:
    """One operation in a fresh child (also used by bench/api.py), the page cache as ``--cache`` says."""
    kw = {"size": size, "prefault": 0 if a.no_prefault else size + 64 * MiB, **kw}
    with harness.timed_phase(a) as phase:
        r = harness.run_child(__file__, mode, work, name, **kw)
    r.update(phase)
    harness.say(name, r, "seconds", "peak_rss_mib", "cpu_s_per_gib", "cpu_sys_seconds", "disk_read_bytes_mib")
    harness.settle()
    return r


def one_round(size: int, work: str, s: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """The five operations, in order: loop put, threaded loop put, cas put, loop get, cas get."""
    loop, loopt, cas, key, out = (os.path.join(work, d) for d in ("loop-store", "loop-threaded-store", "cas-data",
                                                                  "cas.key", "out.bin"))
    thr, rows = f"loop put ({a.threads} threads)", {}
    try:
        rows["loop_put"] = run_op("loop-put", size, work, "loop put (1 thread)", a, src=s["src"], data=loop,
                                  threads=1, inflight=1)
        rows["loop_put_threaded"] = run_op("loop-put", size, work, thr, a, src=s["src"], data=loopt,
                                           threads=a.threads, inflight=a.inflight)
        harness.clean(*([] if a.keep else [loopt]))
        rows["cas_put"] = run_op("put", size, work, "cas put", a, src=s["src"], data=cas, key_out=key)
        rows["cas_put"]["disk_bytes"] = harness.du(cas)
        rows["loop_get"] = run_op("loop-get", size, work, "loop get (1 thread)", a, data=loop, out=out)
        harness.check(rows["loop_get"], s, "loop get")
        harness.clean(out)
        rows["cas_get"] = run_op("get", size, work, "cas get", a, data=cas, key_in=key, out=out)
        harness.check(rows["cas_get"], s, "cas get")
    finally:
        if not a.keep:
            harness.clean(loop, loopt, cas, key, out)
    return rows


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: harness.summary([r[k] for r in rounds], med=("cpu_s_per_gib", "steal_share"),
                              top=("peak_rss_mib", "disk_read_bytes_mib")) for k in ROWS}
    for op in ("put", "get"):
        x = out[f"cas_{op}"]
        x["ratio_vs_loop"] = x["mib_s"] / out[f"loop_{op}"]["mib_s"]
        if op == "put":
            x["ratio_vs_threaded_loop"] = x["mib_s"] / out["loop_put_threaded"]["mib_s"]
        x["target_speed_met"] = x["ratio_vs_loop"] >= TARGET_RATIO
        x["target_rss_met"] = x["peak_rss_mib"] < TARGET_RSS_MIB
    return out


def table(results: list[dict[str, Any]], a: argparse.Namespace) -> str:
    cols = [harness.speed_col(a), ("e2e MiB/s", 9, "mib_s_end_to_end:.1f"), ("peak RSS MiB", 13, "peak_rss_mib:.1f"),
            ("CPU s/GiB", 10, "cpu_s_per_gib:.2f"), ("disk rd MiB", 11, "disk_read_bytes_mib:.0f"),
            ("cas/loop", 9, "ratio_vs_loop:.2f"), ("cas/thr", 8, "ratio_vs_threaded_loop:.2f"),
            (" target", -1, harness.targets((f"cas/loop >= {TARGET_RATIO:.2f}", "target_speed_met"),
                                            (f"RSS < {TARGET_RSS_MIB}", "target_rss_met")))]
    labels = {k: v.format(threads=a.threads) for k, v in ROWS.items()}
    return harness.table(results, ("operation", -22), cols, labels)


def run(a: argparse.Namespace) -> None:
    a.threads = max(2, a.threads)
    a.inflight = a.inflight or 2 * a.threads
    # source + loop store + cas store + one read-back at a time (the threaded store is removed before cas put)
    harness.require_room(a.dir, max(a.size) * 4 * (a.repeat if a.keep else 1) + 256 * MiB)
    env = harness.environment()
    results = harness.bench_sizes(a, "pipeline", lambda size, work, s, n: one_round(size, work, s, a), summarise)
    harness.finish(a, "pipeline", env, [
        harness.title("cas pipeline benchmark", env, a) + f", page cache {a.cache}",
        f"targets: cas >= {TARGET_RATIO:.0%} of the 1-thread loop both ways; cas peak RSS < {TARGET_RSS_MIB} MiB; "
        "MiB/s from the operation's start inside its process, e2e from the process's spawn (warm-up excluded)"],
        table(results, a), {"targets": {"ratio_vs_loop": TARGET_RATIO, "peak_rss_mib": TARGET_RSS_MIB},
                            "sizes": results})


if __name__ == "__main__":
    p = harness.parser("cas pipeline benchmark: cas put/get against a plain loop")
    p.add_argument("--threads", type=int, default=4, help="threads of the threaded loop baseline (default 4)")
    p.add_argument("--inflight", type=int, default=0,
                   help="segments in flight in the threaded loop (default 2 x threads)")
    p.add_argument("--no-prefault", action="store_true", help="no memory warm-up (untimed) before each operation")
    harness.main(p, CHILDREN, run)
