#!/usr/bin/env python
"""Putting and getting files on a network of real node processes, against the same work without cas's protocol.

    python bench/replication.py --size 100M [--size 1G] [--size 5G] [--repeat N] [--dir DIR] [--json OUT] [--keep]
                                [--concurrent 8] [--concurrent-size 64M] [--baseline-tls twisted|cas]
                                [--baseline-threads 1] [--window 8] [--no-verify] [--gossip-interval S] [--only cas|base]

For each size and round, in one run (see bench/README.md, "bench/replication.py"):

- **cas put**: 4 fresh ``twistd --nodaemon cas`` processes on 127.0.0.1 (default ``--replicas 3``, so every
  node other than the origin holds every block), full membership checked with ``cas peers --json``; then
  ``cas --node n0 put --quiet --json SOURCE`` timed from the CLI's request to its exit (see Timing); the answer must say
  ``replicas`` 3 and the source's size.
- **cas get**: the 4 nodes restarted (same data dirs, same peer ports) and a 5th, fresh node n4 joining;
  full membership of the 5; then ``cas --node n4 get --quiet -o /dev/null KEY`` timed the same way (n4 holds
  no block: it fetches every one from the holders). In the first round of each size the file is read again
  on n4 (untimed) with ``cas get -o -`` into a hashing child, and its BLAKE3 and size must be the source's.
- **baseline put**: three receiver processes (TLS servers) and one sender (TLS client to all three), each
  with cas's allocator tuning (``cas.base.malloc.tune``) and its own Ed25519 identity (``cas.peer.peertls``, TLS 1.3,
  keys pinned). The sender reads the source 1 MiB at a time, seals it (AES-256-GCM, cas's nonce and
  associated data), hashes it (BLAKE3), writes it as its own block file (write, fsync, rename, directory
  fsync: bench/pipeline.py's ``LoopStore``, the same durability as cas's block store) on a worker thread, then
  writes it to the three TLS streams (a 36-byte header: length and digest), with flow control (a push
  producer on each stream, at most ``--window`` blocks in flight). Each receiver checks every block's BLAKE3,
  writes it the same durable way on a worker thread (pausing the stream when ``--window`` blocks wait) and
  answers one byte once the end marker has arrived and every block is durable. Timed in the sender from the
  first read (connections up) to the third answer.
- **baseline get**: the sender's block files (just written, untimed) streamed in order by one process over one
  TLS stream (push producer) to a receiver that checks each block's BLAKE3 against its id, decrypts it
  (AES-256-GCM) and drops the plaintext. Timed in the receiver from its request byte to the last block.
- **concurrent puts** (once per round, ``--concurrent 0`` skips): 4 fresh nodes, ``--concurrent`` (8) CLI
  processes ``cas put`` of distinct ``--concurrent-size`` (64 MiB) files on n0 at once; wall time from the
  first spawn to the last exit; every answer must say ``replicas`` 3.

Timing. The baselines are timed from their first request or read, in processes already started and connected,
to the last block: no interpreter start-up, no imports, no handshakes. A cas command is timed the same way: from
the CLI's connection to the node's API (the time of its first ``socket.connect``, written by an audit hook the
bench installs, ``CLI_TIMED``) to its exit, with the nodes already connected to each other. The ratios judged
(``cas/base``) use that span. The CLI's spawn-to-exit time, which adds the interpreter's start-up and the
CLI's imports (0.1-0.3 s here: a large part of a 100 MiB get), is reported beside it (``e2e``, ``mib_s_end_to_end``,
``seconds``) and not judged.

Memory. Every phase runs on freshly started node processes (fresh data dirs for the put and the concurrent
puts; restarted for the get), and each node's ``VmHWM`` is reset (``/proc/PID/clear_refs``) once membership is
full, just before the timed command; its peak is the larger of ``VmHWM`` read at the end of the phase and
``VmHWM`` sampled every 20 ms. The CLI's peak is the larger of ``ru_maxrss`` from ``os.wait4`` and its
``VmHWM`` sampled every 20 ms. As in bench/api.py this parent imports only the standard library (and
bench/pipeline.py, bench/api.py: standard library only at import time), because an exec'd child's
``ru_maxrss`` starts at its parent's peak.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api as apibench  # standard library only at import time
import pipeline  # standard library only at import time
from procs import LIVE, START_TIMEOUT, parse_result, read_text, reap, spawn, tail, wait_file

MiB = pipeline.MiB
SEG = pipeline.SEG  # plaintext bytes per block (cas.content.cipher.SEGMENT_SIZE)
BLOCK = SEG + 16  # a sealed segment
HDR_FORMAT = ">I32s"  # baseline put frame: block length (0 = end), BLAKE3 digest
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")

TARGET_RATIO = 0.70  # cas put and get >= 70% of the baseline
TARGET_NODE_RSS_MIB = 150.0  # every node's peak RSS
TARGET_RSS_GROWTH = 1.20  # every node's peak within +20% of its figure at the reference size
REFERENCE_SIZE = 100 * MiB
NODES = 4
REPLICAS = 3  # twistd cas's default --replicas

STOP_TIMEOUT = 30.0
MEMBERSHIP_TIMEOUT = 120.0
RUN_TIMEOUT_S_PER_GIB = 300.0  # slower than ~3.4 MiB/s is a hang: kill it
MIN_RUN_TIMEOUT = 120.0
SAMPLE_S = 0.020
TIMELINE_S = 1.0  # nodes' RSS (anonymous / file-backed) recorded in the JSON this often

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]
CLI = [sys.executable, "-m", "cas.cli"]
# The timed CLI runs: ``python -m cas.cli`` with an audit hook that writes the monotonic time of the CLI's first
# ``socket.connect`` (its connection to the node's API) to $BENCH_CONNECT_FILE, so that the time from the request
# to the exit can be told from the interpreter's start-up (see "Timing" in the module docstring).
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
CLI_TIMED = [sys.executable, "-c", _CONNECT_HOOK]
_LISTENING = re.compile(r"cas node (\S+) listening for peers on tcp:127\.0\.0\.1:(\d+)")
_LOG_PROBLEM = re.compile(r"Traceback|Unhandled|#error\]|#critical\]|#failure\]")
_LOG_WARNING = re.compile(r"#warn\]")



def cpu_ticks() -> tuple[int, int]:
    """(stolen, all) jiffies of the machine so far (/proc/stat): how much of the vCPUs' time the host gave to
    others. Recorded per timed phase as ``steal_share``, because this shared VM's speed swings with it."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int]) -> float | None:
    after = cpu_ticks()
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


DROP_CACHES = "/proc/sys/vm/drop_caches"


def cool(a: argparse.Namespace) -> str:
    """Just before each timed phase (untimed, once its processes are up): with ``--cache cold``, write back dirty
    pages and drop the page cache, so every phase starts from the same state. The gets then read their blocks
    from the disk, and a put does not pay for the files deleted before it (ext4 without a journal skips inodes
    deleted in the last minute while their inode table block is cached: bench/README.md). Returns the state."""
    if a.cache != "cold":
        return "warm"
    pipeline.settle()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")
    return "cold"


@contextmanager
def timed_phase(a: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Around a timed phase's command (its processes up): the page cache dropped first (``cool``), the host's steal
    share measured over it; both go into the dict it yields, for the phase's row."""
    row: dict[str, Any] = {"cache": cool(a)}
    ticks = cpu_ticks()
    yield row
    row["steal_share"] = steal_share(ticks)


def run_timeout(nbytes: int) -> float:
    return max(MIN_RUN_TIMEOUT, RUN_TIMEOUT_S_PER_GIB * nbytes / (1 << 30))


# == children (each imports what it needs) =====================================================================


def _tls_server(a: argparse.Namespace) -> Any:
    from twisted.internet import endpoints

    if a.baseline_tls == "cas":
        from cas.peer.peertls import wrap_server

        return wrap_server
    return endpoints.wrapServerTLS


def _tls_client(a: argparse.Namespace) -> Any:
    from twisted.internet import endpoints

    if a.baseline_tls == "cas":
        from cas.peer.peertls import wrap_client

        return wrap_client
    return endpoints.wrapClientTLS


def _identity(data: str) -> Any:
    from cas.base.identity import load_or_create

    os.makedirs(data, exist_ok=True)
    return load_or_create(os.path.join(data, "node.key"), os.path.join(data, "node.crt"))


def _listen_once(a: argparse.Namespace, ident: Any, proto_factory: Any, result: dict[str, Any]) -> None:
    """Listen on 127.0.0.1:0 (TLS 1.3, this identity) for one connection; "PORT NODEID" to --port-file."""
    from twisted.internet import endpoints, reactor
    from twisted.internet.protocol import Factory

    from cas.peer.peertls import server_creator

    class OneShot(Factory):
        served = False

        def buildProtocol(self, addr: Any) -> Any:
            if self.served:
                return None
            self.served = True
            return proto_factory()

    def listen() -> None:
        ep = _tls_server(a)(server_creator(ident), endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))

        def ready(port: Any) -> None:
            tmp = a.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{port.getHost().port} {ident}\n")
            os.replace(tmp, a.port_file)

        def failed(f: Any) -> None:
            result["error"] = f"cannot listen: {f.getErrorMessage()}"
            reactor.stop()

        ep.listen(OneShot()).addCallbacks(ready, failed)

    reactor.callWhenRunning(listen)


def child_b3sum(a: argparse.Namespace) -> None:
    """BLAKE3 and length of stdin (cas get -o - piped in)."""
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    n = 0
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    f = sys.stdin.buffer.raw
    while True:
        k = f.readinto(buf)
        if not k:
            break
        h.update(view[:k])
        n += k
    pipeline.emit({"op": "b3sum", "blake3": h.hexdigest(), "bytes": n})


def child_brecv(a: argparse.Namespace) -> None:
    """A baseline holder: one TLS connection; every frame's block checked (BLAKE3) and written durably on a
    worker thread; the stream paused while --window blocks wait; one byte back once the end marker arrived
    and every block is durable."""
    from cas.base.malloc import tune

    tuned = tune()  # the same allocator settings as a cas node

    import hmac
    import struct

    import blake3
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    ident = _identity(a.data)
    store = pipeline.LoopStore(os.path.join(a.data, "store"))
    hdr = struct.Struct(HDR_FORMAT)
    pool = ThreadPool(a.threads, a.threads, "disk")
    result: dict[str, Any] = {"op": "brecv", "blocks": 0, "bytes": 0, "tuned": tuned, "threads": a.threads}

    def write(block: bytearray, digest: bytes, seq: int) -> int:
        if not hmac.compare_digest(blake3.blake3(block, max_threads=1).digest(), digest):
            raise ValueError(f"block {seq} does not match its id")
        store.put(digest.hex(), block, str(seq))  # type: ignore[arg-type]
        return len(block)

    class Receiver(Protocol):
        def __init__(self) -> None:
            self.head = bytearray()
            self.block: bytearray | None = None
            self.digest = b""
            self.got = 0
            self.queued = 0
            self.paused = False
            self.ended = False
            self.acked = False
            self.seq = 0

        def connectionMade(self) -> None:
            result["split0"] = pipeline.cpu_split()

        def dataReceived(self, data: bytes) -> None:
            view = memoryview(data)
            while view:
                if self.block is None:
                    take = hdr.size - len(self.head)
                    self.head += view[:take]
                    view = view[take:]
                    if len(self.head) < hdr.size:
                        return
                    n, digest = hdr.unpack(self.head)
                    self.head = bytearray()
                    if n == 0:
                        self.ended = True
                        self.maybe_ack()
                        continue
                    self.block, self.digest, self.got = bytearray(n), digest, 0
                else:
                    take = min(len(view), len(self.block) - self.got)
                    self.block[self.got:self.got + take] = view[:take]
                    self.got += take
                    view = view[take:]
                    if self.got == len(self.block):
                        block, self.block = self.block, None
                        self.store_block(block, self.digest)

        def store_block(self, block: bytearray, digest: bytes) -> None:
            self.queued += 1
            if self.queued >= a.window and not self.paused:
                self.paused = True
                self.transport.pauseProducing()
            seq, self.seq = self.seq, self.seq + 1
            deferToThreadPool(reactor, pool, write, block, digest, seq).addCallbacks(self.stored, self.failed)

        def stored(self, n: int) -> None:
            self.queued -= 1
            result["blocks"] += 1
            result["bytes"] += n
            if self.paused and self.queued < a.window:
                self.paused = False
                self.transport.resumeProducing()
            self.maybe_ack()

        def failed(self, f: Any) -> None:
            self.queued -= 1
            result.setdefault("error", f"storing a block failed: {f.getErrorMessage()}")
            self.transport.abortConnection()

        def maybe_ack(self) -> None:
            if self.ended and self.queued == 0 and not self.acked:
                self.acked = True
                result["split1"] = pipeline.cpu_split()
                self.transport.write(b"A")

        def connectionLost(self, reason: Any = None) -> None:
            if not self.acked:
                result.setdefault("error", f"the connection ended before the end marker: "
                                           f"{reason.getErrorMessage() if reason else '?'}")
            result["acked"] = self.acked
            reactor.callLater(0, reactor.stop)

    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    _listen_once(a, ident, Receiver, result)
    reactor.run()
    if "error" in result:
        raise SystemExit(f"brecv: {result['error']}")
    pipeline.emit(result)


def child_bsend(a: argparse.Namespace) -> None:
    """The baseline origin: dials the receivers (TLS 1.3, keys pinned), then reads, seals, hashes and stores
    each segment on a worker thread and writes it to every stream; timed to the last receiver's answer."""
    from cas.base.malloc import tune

    tuned = tune()  # the same allocator settings as a cas node

    import struct
    from collections import deque

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from twisted.internet import endpoints, reactor
    from twisted.internet.interfaces import IHandshakeListener, IPushProducer
    from twisted.internet.protocol import Protocol
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool
    from zope.interface import implementer

    from cas.base.nodeid import parse_node_id
    from cas.peer.peertls import client_creator

    ident = _identity(a.data)
    peers = [(int(port), nid) for port, nid in (p.split("@", 1) for p in a.peers.split(","))]
    store = pipeline.LoopStore(os.path.join(a.data, "store"))
    hdr = struct.Struct(HDR_FORMAT)
    size = os.path.getsize(a.src)
    nseg = max(1, -(-size // SEG))
    fd = os.open(a.src, os.O_RDONLY)
    key = os.urandom(32)
    aead = AESGCM(key)
    pool = ThreadPool(a.threads, a.threads, "seal")
    digests: list[bytes | None] = [None] * nseg
    sizes = [0] * nseg
    links: list[Any] = []
    paused: set[Any] = set()
    ready: deque[tuple[bytes, bytes]] = deque()  # sealed and stored, not yet written to the streams
    st: dict[str, Any] = {"next": 0, "inflight": 0, "sent": 0, "acks": 0, "lost": 0, "finished": False, "pumping": False}
    result: dict[str, Any] = {"op": "bsend", "bytes": size, "blocks": nseg, "receivers": len(peers), "window": a.window,
                              "threads": a.threads, "tuned": tuned, "tls": a.baseline_tls}

    def work(i: int) -> tuple[int, bytes, bytes]:
        last = i == nseg - 1
        plain = os.pread(fd, SEG, i * SEG)
        block = aead.encrypt(pipeline._nonce(i, last), plain, pipeline._ad(i, last))
        digest = blake3.blake3(block, max_threads=1).digest()
        store.put(digest.hex(), block, str(i))
        return i, digest, block

    def fail(msg: str) -> None:
        if st["finished"]:
            return
        st["finished"] = True
        result["error"] = msg
        for link in links:
            link.transport.abortConnection()
        reactor.callLater(0, reactor.stop)

    def pump() -> None:
        """Write finished blocks while no stream is paused, then keep --window blocks in the worker stage or
        waiting to be written (so at most --window blocks, plus what one write puts in each stream's buffer)."""
        if st["pumping"]:
            return
        st["pumping"] = True
        try:
            while ready and not paused and not st["finished"]:
                digest, block = ready.popleft()
                head = hdr.pack(len(block), digest)
                for link in links:
                    link.transport.write(head)
                    link.transport.write(block)
                del block
                st["sent"] += 1
                if st["sent"] == nseg:
                    for link in links:
                        link.transport.write(hdr.pack(0, bytes(32)))
            while not st["finished"] and st["next"] < nseg and st["inflight"] + len(ready) < a.window:
                i = st["next"]
                st["next"] += 1
                st["inflight"] += 1
                deferToThreadPool(reactor, pool, work, i).addCallbacks(sealed, lambda f: fail(
                    f"sealing or storing a block failed: {f.getErrorMessage()}"))
        finally:
            st["pumping"] = False

    def sealed(r: tuple[int, bytes, bytes]) -> None:
        i, digest, block = r
        st["inflight"] -= 1
        if st["finished"]:
            return
        digests[i], sizes[i] = digest, len(block)
        ready.append((digest, block))
        pump()

    def start() -> None:
        result["split0"] = pipeline.cpu_split()
        result["rss_start_mib"] = pipeline.mem_status().get("VmRSS")
        st["t0"] = time.perf_counter()
        pump()

    def finish() -> None:
        result["seconds"] = time.perf_counter() - st["t0"]
        result["split1"] = pipeline.cpu_split()
        st["finished"] = True
        doc = {"key": key.hex(), "size": size, "blocks": [d.hex() for d in digests if d is not None], "sizes": sizes}
        tmp = a.list_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, a.list_out)
        for link in links:
            link.transport.loseConnection()
        reactor.callLater(10, lambda: reactor.running and reactor.stop())

    @implementer(IHandshakeListener, IPushProducer)
    class Link(Protocol):
        def __init__(self, name: str) -> None:
            self.name = name
            self.acked = False

        def handshakeCompleted(self) -> None:
            self.transport.registerProducer(self, True)
            links.append(self)
            if len(links) == len(peers):
                start()

        def pauseProducing(self) -> None:
            paused.add(self)

        def resumeProducing(self) -> None:
            paused.discard(self)
            pump()

        def stopProducing(self) -> None:
            paused.add(self)

        def dataReceived(self, data: bytes) -> None:
            if b"A" in data and not self.acked:
                self.acked = True
                st["acks"] += 1
                if st["acks"] == len(peers) and st["sent"] == nseg:
                    finish()

        def connectionLost(self, reason: Any = None) -> None:
            st["lost"] += 1
            if not st["finished"]:
                fail(f"the stream to {self.name} ended early: {reason.getErrorMessage() if reason else '?'}")
            elif st["lost"] == len(links):
                reactor.callLater(0, reactor.stop)

    def dial() -> None:
        for port, nid in peers:
            ep = _tls_client(a)(client_creator(ident, parse_node_id(nid)),
                                endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10))
            endpoints.connectProtocol(ep, Link(f"127.0.0.1:{port}")).addErrback(
                lambda f, port=port: fail(f"cannot connect to 127.0.0.1:{port}: {f.getErrorMessage()}"))

    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    reactor.callWhenRunning(dial)
    reactor.run()
    os.close(fd)
    if "error" in result or "seconds" not in result:
        raise SystemExit(f"bsend: {result.get('error', 'no result')}")
    pipeline.emit(result)


def child_bserve(a: argparse.Namespace) -> None:
    """The baseline holder for the get: once the client's byte arrives, streams the block files of --list in
    order (read on the reactor thread, a registered push producer, no framing), then closes."""
    from cas.base.malloc import tune

    tuned = tune()

    import tlsstream
    from twisted.internet import reactor

    ident = _identity(a.data)
    store = pipeline.LoopStore(os.path.join(a.data, "store"))
    with open(a.list) as f:
        paths = [store.path(h) for h in json.load(f)["blocks"]]
    result: dict[str, Any] = {"op": "bserve", "bytes": 0, "tuned": tuned}

    def started() -> None:
        result["split0"] = pipeline.cpu_split()
        result["read0"] = pipeline.mem_status().get("read_bytes", 0.0)

    def ended(was_started: bool) -> None:
        if was_started:
            result["split1"] = pipeline.cpu_split()
            # what the stream read from the disk (the process's start-up, before the drop, excluded)
            result["served_disk_read_mib"] = pipeline.mem_status().get("read_bytes", 0.0) - result.pop("read0")

    Streamer = tlsstream.streamer(paths, result, started, ended)

    _listen_once(a, ident, Streamer, result)
    reactor.run()
    if not result.get("complete"):
        raise SystemExit(f"bserve: the stream did not complete ({result.get('blocks_sent', 0)} blocks sent) "
                         f"{result.get('error', '')}")
    pipeline.emit(result)


def child_bfetch(a: argparse.Namespace) -> None:
    """The baseline reader: dials the block server (its key pinned), sends one byte, then checks each block's
    BLAKE3 against its id and decrypts it (AES-256-GCM at its position); the plaintext is dropped."""
    from cas.base.malloc import tune

    tuned = tune()

    import hmac

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from twisted.internet import endpoints, reactor
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.internet.protocol import Protocol
    from zope.interface import implementer

    from cas.base.nodeid import parse_node_id
    from cas.peer.peertls import client_creator

    ident = _identity(a.data)
    with open(a.list) as f:
        lst = json.load(f)
    digests = [bytes.fromhex(h) for h in lst["blocks"]]
    sizes = lst["sizes"]
    aead = AESGCM(bytes.fromhex(lst["key"]))
    n = len(digests)
    port, nid = a.peers.split("@", 1)
    result: dict[str, Any] = {"op": "bfetch", "bytes": 0, "blocks": 0, "tuned": tuned, "tls": a.baseline_tls}
    buf = bytearray(max(sizes) if sizes else 0)
    whole = memoryview(buf)

    @implementer(IHandshakeListener)
    class Reader(Protocol):
        def __init__(self) -> None:
            self.i = 0
            self.got = 0

        def handshakeCompleted(self) -> None:
            result["split0"] = pipeline.cpu_split()
            result["rss_start_mib"] = pipeline.mem_status().get("VmRSS")
            self.t0 = time.perf_counter()
            self.transport.write(b"G")

        def dataReceived(self, data: bytes) -> None:
            view = memoryview(data)
            while view and self.i < n:
                need = sizes[self.i]
                take = min(len(view), need - self.got)
                whole[self.got:self.got + take] = view[:take]
                self.got += take
                view = view[take:]
                if self.got == need:
                    self._block(whole[:need])
                    if "error" in result:
                        return
            if view:
                result["error"] = "more bytes than the blocks"
                self.transport.abortConnection()

        def _block(self, block: memoryview) -> None:
            i = self.i
            if not hmac.compare_digest(blake3.blake3(block, max_threads=1).digest(), digests[i]):
                result["error"] = f"block {i} does not match its id"
                self.transport.abortConnection()
                return
            last = i == n - 1
            plain = aead.decrypt(pipeline._nonce(i, last), block, pipeline._ad(i, last))
            result["bytes"] += len(plain)
            del plain
            self.i += 1
            self.got = 0
            result["blocks"] = self.i
            if self.i == n:
                result["seconds"] = time.perf_counter() - self.t0
                result["split1"] = pipeline.cpu_split()
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if self.i != n and "error" not in result:
                result["error"] = f"got {self.i} of {n} blocks: {reason.getErrorMessage() if reason else '?'}"
            reactor.callLater(0, reactor.stop)

    def dial() -> None:
        ep = _tls_client(a)(client_creator(ident, parse_node_id(nid)),
                            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(port), timeout=10))

        def failed(f: Any) -> None:
            result["error"] = f"cannot connect: {f.getErrorMessage()}"
            reactor.stop()

        endpoints.connectProtocol(ep, Reader()).addErrback(failed)

    reactor.callWhenRunning(dial)
    reactor.run()
    if "error" in result or "seconds" not in result:
        raise SystemExit(f"bfetch: {result.get('error', 'no result')}")
    if result["bytes"] != lst["size"]:
        raise SystemExit(f"bfetch: {result['bytes']} bytes of plaintext, the file has {lst['size']}")
    pipeline.emit(result)


CHILDREN = {"b3sum": child_b3sum, "brecv": child_brecv, "bsend": child_bsend, "bserve": child_bserve,
            "bfetch": child_bfetch}


# == parent (standard library only) ===========================================================================


def child_cmd(mode: str, a: argparse.Namespace, **kw: Any) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--baseline-tls", a.baseline_tls,
           "--window", str(a.window), "--threads", str(a.baseline_threads)]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (the nodes get fixed peer ports so that a restart keeps them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- node processes ------------------------------------------------------------------------------------------


class NodeProc:
    """One ``twistd --nodaemon cas`` process on a fixed peer port; restartable on the same data dir (its log
    is appended to; ``output()`` is this run's part)."""

    def __init__(self, name: str, data: str, port: int, a: argparse.Namespace) -> None:
        self.name, self.data, self.port, self.a = name, data, port, a
        self.log_path = data + ".log"
        self.node_id: str | None = None
        self.proc: subprocess.Popen | None = None
        self.log: Any = None
        self.offset = 0
        self.starts = 0
        self.exit_codes: list[int | None] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, bootstrap: str | None) -> None:
        url = os.path.join(self.data, "api.url")
        if os.path.exists(url):
            os.unlink(url)  # left by the previous run: wait for the new one
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.offset = self.log.tell()
        cmd = TWISTD + ["cas", "--port", f"tcp:{self.port}:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1",
                        "--data-dir", self.data]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        if self.a.gossip_interval:
            cmd += ["--gossip-interval", str(self.a.gossip_interval)]
        env = apibench.child_env()
        env["PYTHONUNBUFFERED"] = "1"  # the log line with the node id must reach the file at once
        self.t0 = time.perf_counter()
        self.proc = spawn(cmd, self.log, subprocess.STDOUT, env=env, cwd=os.path.dirname(self.data))
        self.starts += 1

    def wait_ready(self) -> None:
        url = os.path.join(self.data, "api.url")
        while True:
            m = _LISTENING.search(self.output())
            if m and os.path.exists(url):
                break
            if not self.alive():
                raise SystemExit(f"FAIL: node {self.name} exited ({self.proc.returncode if self.proc else '?'}) at "
                                 f"start-up:\n{self.tail()}")
            if time.perf_counter() - self.t0 > START_TIMEOUT:
                raise SystemExit(f"FAIL: node {self.name} did not log its peer port and write api.url within "
                                 f"{START_TIMEOUT:.0f} s:\n{self.tail()}")
            time.sleep(0.05)
        node_id, port = m.group(1), int(m.group(2))
        if port != self.port:
            raise SystemExit(f"FAIL: node {self.name} listens on {port}, not on {self.port}")
        if self.node_id is not None and node_id != self.node_id:
            raise SystemExit(f"FAIL: node {self.name} came back as {node_id}, it was {self.node_id}")
        self.node_id = node_id
        self.startup_seconds = time.perf_counter() - self.t0

    def contact(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.port}"

    def output(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def problems(self) -> tuple[list[str], int]:
        """Error lines of this run's log (tracebacks, unhandled errors, error/critical log levels), and the
        number of warning lines."""
        text = self.output()
        bad = [l for l in text.splitlines() if _LOG_PROBLEM.search(l)]
        return bad, len(_LOG_WARNING.findall(text))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  node {self.name} ({self.proc.pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f} s: killing it",
                      file=sys.stderr)
        reap(self.proc)
        if self.log is not None:
            self.log.close()
            self.log = None
        code = self.proc.returncode
        self.exit_codes.append(code)
        self.proc = None
        return code


def start_nodes(nodes: list[NodeProc], first: NodeProc) -> None:
    """``first`` started alone (or already up); the others at once with it as their bootstrap contact."""
    if not first.alive():
        first.start(None)
        first.wait_ready()
    others = [n for n in nodes if n is not first and not n.alive()]
    for n in others:
        n.start(first.contact())
    for n in others:
        n.wait_ready()


def peers_json(node: NodeProc) -> dict[str, Any] | None:
    try:
        out = subprocess.run(CLI + ["--node", node.data, "peers", "--json"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30,
                             env=apibench.child_env(), check=False)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def wait_membership(nodes: list[NodeProc]) -> float:
    """Until every node lists every other as a member that is connected or alive (``cas peers --json``)."""
    t0 = time.perf_counter()
    ids = {n.node_id for n in nodes}
    full: set[str] = set()
    last: dict[str, Any] = {}
    while True:
        for n in nodes:
            if not n.alive():
                raise SystemExit(f"FAIL: node {n.name} exited ({n.proc.returncode if n.proc else '?'}) while waiting "
                                 f"for membership:\n{n.tail()}")
        for n in nodes:
            if n.name in full:
                continue
            doc = peers_json(n)
            ok = {p.get("node_id") for p in (doc or {}).get("peers", [])
                  if p.get("member") and p.get("state") in ("connected", "alive")}
            last[n.name] = sorted(str(x) for x in ok)
            if ids - {n.node_id} <= ok:
                full.add(n.name)
        if len(full) == len(nodes):
            # once more, all of them: a node may have dropped one in the meantime
            if all(ids - {n.node_id} <= {p.get("node_id") for p in (peers_json(n) or {}).get("peers", [])
                                          if p.get("member") and p.get("state") in ("connected", "alive")}
                   for n in nodes):
                return time.perf_counter() - t0
            full.clear()
        if time.perf_counter() - t0 > MEMBERSHIP_TIMEOUT:
            missing = {n.name: last.get(n.name) for n in nodes if n.name not in full}
            raise SystemExit(f"FAIL: no full membership within {MEMBERSHIP_TIMEOUT:.0f} s; members seen by the "
                             f"nodes that lack some: {missing}")
        time.sleep(0.3)


class NodeSampler:
    """Samples the VmHWM of the given nodes every 20 ms on a thread (a cross-check of their VmHWM at the end,
    and a figure for a node that dies during the phase)."""

    def __init__(self, nodes: list[NodeProc]) -> None:
        self.pids = {n.name: n.pid for n in nodes}
        self.hwm = {name: 0.0 for name in self.pids}
        self.timeline: dict[str, list[list[float]]] = {name: [] for name in self.pids}
        self.n = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        next_t = 0.0
        while not self._done.is_set():
            for name, pid in self.pids.items():
                h = apibench.proc_status(pid).get("VmHWM")
                if h is not None and h > self.hwm[name]:
                    self.hwm[name] = h
            self.n += 1
            t = time.perf_counter() - t0
            if t >= next_t:  # every TIMELINE_S: RSS split into anonymous and file-backed, to see how it grows
                next_t += TIMELINE_S
                for name, pid in self.pids.items():
                    f = apibench._proc_fields(f"/proc/{pid}/status", ("VmRSS:", "RssAnon:", "RssFile:"), 1024)
                    if f:
                        self.timeline[name].append([round(t, 2), round(f.get("VmRSS", 0), 1),
                                                    round(f.get("RssAnon", 0), 1), round(f.get("RssFile", 0), 1)])
            self._done.wait(SAMPLE_S)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def phase_begin(nodes: list[NodeProc]) -> dict[str, dict[str, Any]]:
    """Just before the timed command: each node's start-up peak, then its VmHWM reset; CPU and disk counters."""
    before: dict[str, dict[str, Any]] = {}
    for n in nodes:
        st = apibench.proc_status(n.pid)
        reset = apibench.reset_peak_rss(n.pid)
        before[n.name] = {"startup_hwm_mib": st.get("VmHWM"), "idle_rss_mib": st.get("VmRSS"), "reset": reset,
                          "cpu": apibench.proc_cpu(n.pid), "io": apibench.proc_io(n.pid)}
    return before


def phase_end(nodes: list[NodeProc], before: dict[str, dict[str, Any]], sampler: NodeSampler,
              nbytes: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    gib = nbytes / (1 << 30) if nbytes else 1.0
    for n in nodes:
        b = before[n.name]
        st = apibench.proc_status(n.pid) if n.alive() else {}
        try:
            cpu, io = apibench.proc_cpu(n.pid), apibench.proc_io(n.pid)
        except OSError:
            cpu, io = b["cpu"], b["io"]
        sampled = sampler.hwm.get(n.name) or None
        end = st.get("VmHWM")
        cpu_s = (cpu[0] - b["cpu"][0]) + (cpu[1] - b["cpu"][1])
        out[n.name] = {
            "node_id": n.node_id, "pid": n.pid,
            "peak_rss_mib": max(end or 0.0, sampled or 0.0),
            "vmhwm_end_mib": end, "vmhwm_sampled_mib": sampled, "rss_end_mib": st.get("VmRSS"),
            "startup_hwm_mib": b["startup_hwm_mib"], "idle_rss_mib": b["idle_rss_mib"], "hwm_reset": b["reset"],
            "cpu_seconds": cpu_s, "cpu_user_seconds": cpu[0] - b["cpu"][0], "cpu_sys_seconds": cpu[1] - b["cpu"][1],
            "cpu_s_per_gib": cpu_s / gib,
            "disk_read_mib": io.get("read_bytes", 0) - b["io"].get("read_bytes", 0),
            "disk_write_mib": io.get("write_bytes", 0) - b["io"].get("write_bytes", 0),
            "rss_timeline": sampler.timeline.get(n.name, []),  # [seconds, VmRSS, RssAnon, RssFile] (MiB)
        }
    out["_samples"] = {"n": sampler.n}  # type: ignore[assignment]
    return out


def stop_nodes(nodes: list[NodeProc], phase: str) -> dict[str, Any]:
    """SIGTERM every node; their exit codes and the error lines of their logs (printed too)."""
    report: dict[str, Any] = {}
    for n in nodes:
        if n.proc is None:
            continue
        code = n.stop()
        bad, warnings = n.problems()
        report[n.name] = {"exit_code": code, "error_lines": bad[:20], "error_line_count": len(bad),
                          "warning_lines": warnings}
        if code not in (0, -signal.SIGTERM):
            print(f"  note: node {n.name} exited {code} after SIGTERM ({phase})", file=sys.stderr)
        if bad:
            print(f"  note: node {n.name} logged {len(bad)} error line(s) during {phase}, first: {bad[0][:300]}",
                  file=sys.stderr)
    return report


# -- the CLI ---------------------------------------------------------------------------------------------------


class CliRun:
    """``cas ARGS`` as a child; wall clock from just before the spawn to the reap; peak RSS from wait4's
    ru_maxrss and VmHWM sampled every 20 ms."""

    def __init__(self, args: list[str], work: str, name: str, stdout: Any = None, timed: bool = False) -> None:
        self.args, self.name = args, name
        self.out_path, self.err_path = os.path.join(work, f"{name}.stdout"), os.path.join(work, f"{name}.stderr")
        self._out = open(self.out_path, "wb") if stdout is None else None  # noqa: SIM115
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        env = apibench.child_env()
        self.connect_path: str | None = None
        if timed:  # the CLI writes the time of its connection to the node here
            self.connect_path = os.path.join(work, f"{name}.connect")
            if os.path.exists(self.connect_path):
                os.unlink(self.connect_path)
            env["BENCH_CONNECT_FILE"] = self.connect_path
        self.t0 = time.perf_counter()
        self.proc = spawn((CLI_TIMED if timed else CLI) + args, self._out if stdout is None else stdout, self._err,
                          env=env, cwd=work)

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            ru, samples, dt = apibench.wait_sampled(self.proc, self.t0, timeout)
        finally:
            LIVE.discard(self.proc)
            if self._out is not None:
                self._out.close()
            self._err.close()
        self.end = self.t0 + dt
        stderr = read_text(self.err_path).strip()
        if self.proc.returncode != 0:
            why = f"timed out after {timeout:.0f} s" if dt >= timeout else f"exited {self.proc.returncode}"
            raise SystemExit(f"FAIL: cas {' '.join(self.args)} {why}: {stderr[-3000:]}")
        ru_maxrss = ru.ru_maxrss / 1024
        timing: dict[str, float] = {}
        if self.connect_path is not None:
            try:
                connect = float(read_text(self.connect_path)) - self.t0
            except ValueError:
                raise SystemExit(f"FAIL: cas {' '.join(self.args)} did not record when it connected to the node") from None
            if not 0 <= connect <= dt:
                raise SystemExit(f"FAIL: cas {' '.join(self.args)}: connection time {connect:.3f} s outside 0-{dt:.3f} s")
            timing = {"connect_seconds": connect, "transfer_seconds": dt - connect}
        return {"seconds": dt, **timing, "cli_ru_maxrss_mib": ru_maxrss, "cli_vmhwm_sampled_mib": samples["hwm"] or None,
                "cli_vmhwm_samples": samples["n"], "cli_peak_rss_mib": max(ru_maxrss, samples["hwm"]),
                "cli_cpu_user_seconds": ru.ru_utime, "cli_cpu_sys_seconds": ru.ru_stime,
                "stdout": read_text(self.out_path) if self._out is not None else ""}


def put_answer(r: dict[str, Any], size: int, what: str) -> dict[str, Any]:
    try:
        ans = json.loads(r.pop("stdout"))
    except ValueError as e:
        raise SystemExit(f"FAIL: {what}: the answer is not JSON ({e})") from None
    if ans.get("replicas") != REPLICAS:
        raise SystemExit(f"FAIL: {what}: the node answered replicas={ans.get('replicas')!r}, expected {REPLICAS}: {ans}")
    if ans.get("size") != size:
        raise SystemExit(f"FAIL: {what}: the node answered size={ans.get('size')!r}, expected {size}")
    if not str(ans.get("key", "")).startswith("cas1"):
        raise SystemExit(f"FAIL: {what}: no key in the answer: {ans}")
    return ans


# -- one round of cas --------------------------------------------------------------------------------------------


def make_nodes(cdir: str, count: int, a: argparse.Namespace) -> list[NodeProc]:
    os.makedirs(cdir, exist_ok=True)
    ports = free_ports(count)
    return [NodeProc(f"n{i}", os.path.join(cdir, f"n{i}"), ports[i], a) for i in range(count)]


def cas_round(size: int, src: str, s: dict[str, Any], work: str, a: argparse.Namespace, verify: bool) -> dict[str, Any]:
    cdir = os.path.join(work, "cas")
    nodes = make_nodes(cdir, NODES + 1, a)
    four, reader = nodes[:NODES], nodes[NODES]
    timeout = run_timeout(size)
    rows: dict[str, Any] = {}
    try:
        # -- put: 4 fresh nodes ----------------------------------------------------------------------------
        conv, load, before = network_up(four, four[0], f"{NODES} fresh nodes up")
        with timed_phase(a) as phase, NodeSampler(four) as sampler:
            r = CliRun(["--node", four[0].data, "put", "--quiet", "--json", src], cdir, "put", timed=True).wait(timeout)
        r.update(phase)
        r["nodes"] = phase_end(four, before, sampler, size)
        ans = put_answer(r, size, "cas put")
        r.update(bytes=size, mib_s=size / MiB / r["transfer_seconds"], mib_s_end_to_end=size / MiB / r["seconds"], key=ans["key"], replicas=ans["replicas"], loadavg_before=load,
                 membership_seconds=conv)
        cas_cpu(r)
        r["logs"] = stop_nodes(four, "the put")
        rows["cas_put"] = r
        say_cas("cas put", r)
        pipeline.settle()

        # -- get: the 4 restarted (same data dirs and ports), a 5th fresh node reads -------------------------
        conv, load, before = network_up(nodes, four[0], f"{NODES} nodes restarted and a fresh n{NODES} joined")
        with timed_phase(a) as phase, NodeSampler(nodes) as sampler:
            r = CliRun(["--node", reader.data, "get", "--quiet", "-o", os.devnull, ans["key"]], cdir, "get",
                       timed=True).wait(timeout)
        r.update(phase)
        r.pop("stdout")
        r["nodes"] = phase_end(nodes, before, sampler, size)
        r.update(bytes=size, mib_s=size / MiB / r["transfer_seconds"], mib_s_end_to_end=size / MiB / r["seconds"],
                 loadavg_before=load, membership_seconds=conv)
        cas_cpu(r)
        if verify:
            r["verified"] = verify_get(reader, ans["key"], s, cdir, timeout)
        rows["cas_get"] = r
        r["logs"] = stop_nodes(nodes, "the get")
        say_cas("cas get", r, verified=r.get("verified"))
    finally:
        network_down(nodes, cdir, a.keep)
    return rows


def verify_get(reader: NodeProc, key: str, s: dict[str, Any], work: str, timeout: float) -> str:
    """Untimed: ``cas get -o - KEY`` on the reader piped into a hashing child; BLAKE3 and size must match."""
    out_path = os.path.join(work, "verify.b3")
    with open(out_path, "wb") as hout, open(os.path.join(work, "verify-b3.stderr"), "wb") as herr:
        cli = CliRun(["--node", reader.data, "get", "--quiet", "-o", "-", key], work, "verify-get",
                     stdout=subprocess.PIPE)
        hasher = spawn([sys.executable, os.path.abspath(__file__), "--child", "b3sum"], hout, herr, stdin=cli.proc.stdout)
        assert cli.proc.stdout is not None
        cli.proc.stdout.close()  # the hasher holds the read end
        try:
            cli.wait(timeout)
        finally:
            reap(hasher, 60)
    if hasher.returncode != 0:
        raise SystemExit(f"FAIL: hashing the output of cas get -o - failed (exit {hasher.returncode})")
    got = parse_result(read_text(out_path), "the hashing child")
    pipeline.check(got, s, "cas get -o - on the node without a local copy")
    return got["blake3"]


# -- one round of the baseline ---------------------------------------------------------------------------------


def run_child_sampled(cmd: list[str], work: str, name: str, timeout: float) -> dict[str, Any]:
    """A baseline child to completion; its result, with ru_maxrss (wait4) and VmHWM sampled every 20 ms."""
    out_path, err_path = os.path.join(work, f"{name}.stdout"), os.path.join(work, f"{name}.stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = spawn(cmd, out, err)
        try:
            ru, samples, wall = apibench.wait_sampled(proc, t0, timeout)
        finally:
            LIVE.discard(proc)
    if proc.returncode != 0:
        why = f"timed out after {timeout:.0f} s" if wall >= timeout else f"exited {proc.returncode}"
        raise SystemExit(f"FAIL: {name} {why}:\n{tail(err_path)}")
    r = parse_result(read_text(out_path), name)
    r.update(process_seconds=wall, ru_maxrss_mib=ru.ru_maxrss / 1024, vmhwm_sampled_mib=samples["hwm"] or None,
             peak_rss_mib=max(ru.ru_maxrss / 1024, samples["hwm"], r.get("peak_rss_mib") or 0.0))
    return r


def start_server(mode: str, a: argparse.Namespace, work: str, name: str, **kw: Any) -> tuple[subprocess.Popen, str, str, str]:
    """A baseline TLS server child; (process, 'PORT@NODEID' to dial, stdout path, stderr path) once it listens."""
    port_file = os.path.join(work, f"{name}.port")
    out_path, err_path = os.path.join(work, f"{name}.stdout"), os.path.join(work, f"{name}.stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = spawn(child_cmd(mode, a, port_file=port_file, **kw), out, err)
    wait_file(port_file, proc, f"the baseline {name}", err_path)
    with open(port_file) as f:
        port, nid = f.read().split()
    return proc, f"{port}@{nid}", out_path, err_path


def finish_server(proc: subprocess.Popen, out_path: str, err_path: str, name: str) -> dict[str, Any]:
    reap(proc, STOP_TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: the baseline {name} exited {proc.returncode}:\n{tail(err_path)}")
    return parse_result(read_text(out_path), f"the baseline {name}")


def base_round(size: int, src: str, work: str, a: argparse.Namespace) -> dict[str, Any]:
    bdir = os.path.join(work, "base")
    os.makedirs(bdir, exist_ok=True)
    sender = os.path.join(bdir, "S")
    recv_dirs = [os.path.join(bdir, f"R{i + 1}") for i in range(REPLICAS)]
    list_path = os.path.join(bdir, "blocks.json")
    timeout = run_timeout(size)
    rows: dict[str, Any] = {}
    servers: list[subprocess.Popen] = []
    try:
        # -- put: 3 receivers, 1 sender ------------------------------------------------------------------------
        started = [start_server("brecv", a, bdir, f"recv{i + 1}", data=d) for i, d in enumerate(recv_dirs)]
        servers = [p for p, *_ in started]
        pipeline.settle()
        load = pipeline.loadavg()
        with timed_phase(a) as phase:
            r = run_child_sampled(child_cmd("bsend", a, data=sender, src=src, peers=",".join(c for _, c, _, _ in started),
                                            list_out=list_path), bdir, "send", timeout)
        r.update(phase)
        recvs = [finish_server(p, o, e, f"receiver {i + 1}") for i, (p, _c, o, e) in enumerate(started)]
        nseg = r["blocks"]
        for i, x in enumerate(recvs):
            if x["blocks"] != nseg:
                raise SystemExit(f"FAIL: baseline receiver {i + 1} stored {x['blocks']} of {nseg} blocks")
        r.update(mib_s=size / MiB / r["seconds"], loadavg_before=load, receivers=recvs,
                 recv_peak_rss_mib=max(x["peak_rss_mib"] for x in recvs))
        base_cpu(r, size, [r, *recvs])
        rows["base_put"] = r
        say_base("base put", r)
        for d in recv_dirs:
            shutil.rmtree(os.path.join(d, "store"), ignore_errors=True)
        pipeline.settle()

        # -- get: the sender's blocks streamed to one reader that checks and decrypts ----------------------------
        proc, contact, o, e = start_server("bserve", a, bdir, "serve", data=sender, list=list_path)
        servers = [proc]
        load = pipeline.loadavg()
        with timed_phase(a) as phase:
            r = run_child_sampled(child_cmd("bfetch", a, data=recv_dirs[0], list=list_path, peers=contact), bdir,
                                  "fetch", timeout)
        r.update(phase)
        srv = finish_server(proc, o, e, "block server")
        r.update(mib_s=size / MiB / r["seconds"], loadavg_before=load, server=srv)
        base_cpu(r, size, [r, srv])
        rows["base_get"] = r
        say_base("base get", r)
    finally:
        for p in servers:
            if p.poll() is None:
                p.kill()
            reap(p)
        if not a.keep:
            shutil.rmtree(bdir, ignore_errors=True)
        pipeline.settle()
    return rows


# -- concurrent puts ---------------------------------------------------------------------------------------------


def network_up(nodes: list[NodeProc], seed: NodeProc, what: str) -> tuple[Any, float | None, Any]:
    """Start ``nodes`` (bootstrapped from ``seed``), wait for full membership, let the machine settle, and
    begin a phase: returns (membership wait, load average, the phase's starting state)."""
    t = time.perf_counter()
    start_nodes(nodes, seed)
    conv = wait_membership(nodes)
    print(f"  cas: {what}, full membership in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    pipeline.settle()
    return conv, pipeline.loadavg(), phase_begin(nodes)


def network_down(nodes: list[NodeProc], cdir: str, keep: bool) -> None:
    """The end of a phase, however it ended: every node stopped, its data dirs removed (unless kept), synced."""
    for n in nodes:
        n.stop()
    if not keep:
        shutil.rmtree(cdir, ignore_errors=True)
    pipeline.settle()


def concurrent_round(files: list[str], fsize: int, work: str, a: argparse.Namespace) -> dict[str, Any]:
    cdir = os.path.join(work, "cas-concurrent")
    nodes = make_nodes(cdir, NODES, a)
    total = fsize * len(files)
    try:
        conv, load, before = network_up(nodes, nodes[0], f"{NODES} fresh nodes up")
        errors: list[BaseException] = []
        results: list[dict[str, Any] | None] = [None] * len(files)
        with timed_phase(a) as phase, NodeSampler(nodes) as sampler:
            runs = [CliRun(["--node", nodes[0].data, "put", "--quiet", "--json", f], cdir, f"put{i}")
                    for i, f in enumerate(files)]

            def waiter(i: int) -> None:
                try:
                    results[i] = runs[i].wait(run_timeout(total))
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(len(runs))]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        if errors:
            raise errors[0]
        wall = max(rn.end for rn in runs) - runs[0].t0
        r: dict[str, Any] = {"nodes": phase_end(nodes, before, sampler, total), "count": len(files), "file_bytes": fsize,
                             "bytes": total, "seconds": wall, "mib_s": total / MiB / wall, "loadavg_before": load,
                             "membership_seconds": conv, **phase}
        clis = []
        for i, x in enumerate(results):
            assert x is not None
            ans = put_answer(x, fsize, f"concurrent cas put {i}")
            x["key"] = ans["key"]
            clis.append(x)
        r["clis"] = clis
        r["cli_peak_rss_mib"] = max(x["cli_peak_rss_mib"] for x in clis)
        r["cli_seconds"] = [x["seconds"] for x in clis]
        r["cli_cpu_user_seconds"] = sum(x["cli_cpu_user_seconds"] for x in clis)
        r["cli_cpu_sys_seconds"] = sum(x["cli_cpu_sys_seconds"] for x in clis)
        cas_cpu(r)
        r["logs"] = stop_nodes(nodes, "the concurrent puts")
        say_cas(f"{len(files)}x put", r)
        return r
    finally:
        network_down(nodes, cdir, a.keep)


# -- reporting -----------------------------------------------------------------------------------------------


def cas_cpu(r: dict[str, Any]) -> None:
    """CPU of the operation: every node during the phase plus the CLI(s), per GiB."""
    nodes = sum(v["cpu_seconds"] for k, v in r["nodes"].items() if not k.startswith("_"))
    cli = r["cli_cpu_user_seconds"] + r["cli_cpu_sys_seconds"]
    r.update(nodes_cpu_seconds=nodes, cpu_seconds=nodes + cli, cpu_s_per_gib=(nodes + cli) / (r["bytes"] / (1 << 30)))


def base_cpu(r: dict[str, Any], size: int, parts: list[dict[str, Any]]) -> None:
    """CPU of the baseline: every process over its working part (sender/reader: the timed part; receivers and
    server: from the connection or first byte to the end), per GiB."""
    cpu = sum(x.get("cpu_user_seconds", 0.0) + x.get("cpu_sys_seconds", 0.0) for x in parts)
    r.update(total_cpu_seconds=cpu, cpu_s_per_gib=cpu / (size / (1 << 30)))


def node_peaks(r: dict[str, Any]) -> dict[str, float]:
    return {k: v["peak_rss_mib"] for k, v in r["nodes"].items() if not k.startswith("_")}


def say_cas(label: str, r: dict[str, Any], verified: str | None = None) -> None:
    peaks = node_peaks(r)
    if "transfer_seconds" in r:
        timing = (f"{r['transfer_seconds']:7.2f} s from the request ({r['seconds']:.2f} s from the spawn, "
                  f"{r['mib_s_end_to_end']:.1f} MiB/s)")
    else:  # the concurrent puts: from the first spawn to the last exit
        timing = f"{r['seconds']:7.2f} s from the first spawn to the last exit"
    print(f"  {label:<9} {r['mib_s']:8.1f} MiB/s {timing}  node RSS "
          + " ".join(f"{k} {v:.1f}" for k, v in peaks.items())
          + f"  CLI RSS {r['cli_peak_rss_mib']:.1f} MiB  CPU nodes+CLI {r['cpu_s_per_gib']:.2f} s/GiB"
          + f"  load {r['loadavg_before']}{_steal(r)}{_disk(r)}" + (f"  verified BLAKE3 {verified[:16]}..." if verified else ""),
          file=sys.stderr)


def say_base(label: str, r: dict[str, Any]) -> None:
    extra = ""
    if "receivers" in r:
        extra = f"  receivers RSS {r['recv_peak_rss_mib']:.1f} MiB{_disk(r)}"
    if "server" in r:
        extra = f"  server RSS {r['server'].get('peak_rss_mib', 0):.1f} MiB{_disk(r)}"
    print(f"  {label:<9} {r['mib_s']:8.1f} MiB/s {r['seconds']:7.2f} s  RSS {r['peak_rss_mib']:.1f} MiB{extra}  "
          f"CPU all processes {r['cpu_s_per_gib']:.2f} s/GiB  load {r['loadavg_before']}{_steal(r)}", file=sys.stderr)


def _disk(r: dict[str, Any]) -> str:
    """The page cache state at the start; for a get, how much the serving side read from the disk."""
    if "cache" not in r:
        return ""
    if "server" in r:
        mib = r["server"].get("served_disk_read_mib", 0.0)
    elif f"n{NODES}" in r.get("nodes", {}):  # a cas get: n4 reads, n0-n3 serve
        mib = sum(v["disk_read_mib"] for k, v in r["nodes"].items() if not k.startswith("_") and k != f"n{NODES}")
    else:
        return f"  cache {r['cache']}"
    return f"  cache {r['cache']}, served {mib:.0f} MiB from disk"


def _steal(r: dict[str, Any]) -> str:
    share = r.get("steal_share")
    return "" if share is None else f"  host steal {share:.0%}"


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per operation: median MiB/s (and min, max), each node's highest peak RSS, the CLI's; ratios from medians."""
    med = pipeline._median
    out: dict[str, Any] = {}
    for key in ("cas_put", "cas_get", "base_put", "base_get"):
        rs = [r[key] for r in rounds if key in r]
        if not rs:
            continue
        x: dict[str, Any] = {"mib_s": med([r["mib_s"] for r in rs]), "mib_s_min": min(r["mib_s"] for r in rs),
                             "mib_s_max": max(r["mib_s"] for r in rs), "seconds": med([r["seconds"] for r in rs]),
                             "cpu_s_per_gib": med([r["cpu_s_per_gib"] for r in rs])}
        steals = [r["steal_share"] for r in rs if r.get("steal_share") is not None]
        if steals:
            x["steal_share"] = med(steals)
        if key.startswith("cas_"):
            x["transfer_seconds"] = med([r["transfer_seconds"] for r in rs])  # what mib_s is from; "seconds": spawn to exit
            x["mib_s_end_to_end"] = med([r["mib_s_end_to_end"] for r in rs])
            x["connect_seconds"] = med([r["connect_seconds"] for r in rs])
            peaks: dict[str, float] = {}
            for r in rs:
                for name, v in node_peaks(r).items():
                    peaks[name] = max(peaks.get(name, 0.0), v)
            x["node_peak_rss_mib"] = peaks
            x["node_peak_rss_max_mib"] = max(peaks.values())
            x["cli_peak_rss_mib"] = max(r["cli_peak_rss_mib"] for r in rs)
        else:
            x["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rs)
        out[key] = x
    for op in ("put", "get"):
        c, b = out.get(f"cas_{op}"), out.get(f"base_{op}")
        if c and b:
            c["ratio_vs_base"] = c["mib_s"] / b["mib_s"]
            c["ratio_per_round"] = [r[f"cas_{op}"]["mib_s"] / r[f"base_{op}"]["mib_s"] for r in rounds]
            c["ratio_end_to_end"] = c["mib_s_end_to_end"] / b["mib_s"]  # with the CLI's start-up: reported, not judged
            c["target_speed_met"] = c["ratio_vs_base"] >= TARGET_RATIO
    return out


def summarise_concurrent(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    med = pipeline._median
    peaks: dict[str, float] = {}
    for r in rounds:
        for name, v in node_peaks(r).items():
            peaks[name] = max(peaks.get(name, 0.0), v)
    return {"mib_s": med([r["mib_s"] for r in rounds]), "mib_s_min": min(r["mib_s"] for r in rounds),
            "mib_s_max": max(r["mib_s"] for r in rounds), "seconds": med([r["seconds"] for r in rounds]),
            "cpu_s_per_gib": med([r["cpu_s_per_gib"] for r in rounds]), "node_peak_rss_mib": peaks, "node_peak_rss_max_mib": max(peaks.values()),
            "cli_peak_rss_mib": max(r["cli_peak_rss_mib"] for r in rounds)}


def judge_rss(peaks: dict[str, float], ref: dict[str, float] | None) -> dict[str, Any]:
    """< 150 MiB for every node; and within +20% of the same node's figure at the reference size."""
    under = all(v < TARGET_NODE_RSS_MIB for v in peaks.values())
    growth: dict[str, float] = {}
    flat: bool | None = None
    if ref:
        growth = {k: v / ref[k] for k, v in peaks.items() if ref.get(k)}
        flat = all(g <= TARGET_RSS_GROWTH for g in growth.values()) if growth else None
    return {"under_limit": under, "growth_vs_ref": growth, "flat": flat}


def ok(b: bool | None) -> str:
    return "n/a" if b is None else ("MET" if b else "MISSED")


def table(sizes: list[dict[str, Any]], conc: dict[str, Any] | None, a: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The table of medians and the targets judged (also returned, for the JSON)."""
    repeat = a.repeat
    refs = [e for e in sizes if e["size"] == REFERENCE_SIZE] or sorted(sizes, key=lambda e: e["size"])[:1]
    ref_entry = refs[0] if refs else None
    ref_name = pipeline.fmt_size(ref_entry["size"]) if ref_entry else "-"
    w = 17 if repeat > 1 else 8
    head = (f"{'op':<4} {'size':>5} {'cas MiB/s':>{w}} {'base MiB/s':>{w + 1}} {'cas/base':>8} {'e2e':>5} {'CPU s/GiB cas/base':>18} "
            f"{'node peak RSS MiB: max (per node)':<46} {'CLI RSS':>7}  targets")
    lines = [head, "-" * (len(head) + 60)]
    judged: dict[str, Any] = {"reference_size": ref_entry["size"] if ref_entry else None, "sizes": {}}

    def speed(x: dict[str, Any]) -> str:
        s = f"{x['mib_s']:.1f}"
        if repeat > 1:
            s += f" ({x['mib_s_min']:.0f}-{x['mib_s_max']:.0f})"
        return s

    for e in sizes:
        sm = e["summary"]
        jz: dict[str, Any] = {}
        for op in ("put", "get"):
            c, b = sm.get(f"cas_{op}"), sm.get(f"base_{op}")
            if not c and not b:
                continue
            cs = speed(c) if c else "-"
            bs = speed(b) if b else "-"
            ratio = f"{c['ratio_vs_base']:.3f}" if c and "ratio_vs_base" in c else "-"
            e2e = f"{c['ratio_end_to_end']:.2f}" if c and "ratio_end_to_end" in c else "-"
            cpu = (f"{c['cpu_s_per_gib']:.1f}" if c else "-") + "/" + (f"{b['cpu_s_per_gib']:.1f}" if b else "-")
            rss = cli = target = ""
            if c:
                peaks = c["node_peak_rss_mib"]
                rss = f"{c['node_peak_rss_max_mib']:.1f} (" + " ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ")"
                cli = f"{c['cli_peak_rss_mib']:.1f}"
                ref = ref_entry["summary"].get(f"cas_{op}", {}).get("node_peak_rss_mib") if ref_entry else None
                j = judge_rss(peaks, ref)
                j["speed"] = c.get("target_speed_met")
                jz[op] = j
                flat = "(reference)" if e is ref_entry else ok(j["flat"])
                target = (f"speed >= {TARGET_RATIO:.2f}: {ok(c.get('target_speed_met'))}; RSS < {TARGET_NODE_RSS_MIB:.0f}: "
                          f"{ok(j['under_limit'])}; RSS <= {TARGET_RSS_GROWTH:.1f}x {ref_name}: {flat}")
            lines.append(f"{op:<4} {pipeline.fmt_size(e['size']):>5} {cs:>{w}} {bs:>{w + 1}} {ratio:>8} {e2e:>5} {cpu:>18} {rss:<46} "
                         f"{cli:>7}  {target}".rstrip())
        judged["sizes"][pipeline.fmt_size(e["size"])] = jz
    if conc:
        s = conc["summary"]
        peaks = s["node_peak_rss_mib"]
        ref = ref_entry["summary"].get("cas_put", {}).get("node_peak_rss_mib") if ref_entry else None
        j = judge_rss(peaks, ref)
        judged["concurrent"] = j
        label = f"{conc['count']}x{pipeline.fmt_size(conc['file_bytes'])}"
        rss = f"{s['node_peak_rss_max_mib']:.1f} (" + " ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ")"
        lines.append(f"{'put':<4} {label:>5} {speed(s):>{w}} {'':>{w + 1}} {'':>8} {'':>5} {s['cpu_s_per_gib']:>18.1f} {rss:<46} "
                     f"{s['cli_peak_rss_mib']:>7.1f}  "
                     f"concurrent, wall {s['seconds']:.1f} s; RSS < {TARGET_NODE_RSS_MIB:.0f}: {ok(j['under_limit'])}; "
                     f"RSS <= {TARGET_RSS_GROWTH:.1f}x {ref_name} put: {ok(j['flat'])}")
    return "\n".join(lines) + "\n", judged


# -- driver ----------------------------------------------------------------------------------------------------


def bench_size(size: int, a: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=f"cas-repl-bench-{pipeline.fmt_size(size)}-", dir=a.dir)
    src = os.path.join(work, "source.bin")
    print(f"== {pipeline.fmt_size(size)} in {work}", file=sys.stderr)
    try:
        s = pipeline.make_source(size, src)
        rounds = []
        for n in range(a.repeat):
            cas_first = n % 2 == 1
            if a.repeat > 1:
                print(f" round {n + 1}/{a.repeat}{' (cas first)' if cas_first else ''}", file=sys.stderr)
            rwork = os.path.join(work, f"r{n}")
            os.makedirs(rwork, exist_ok=True)
            rows: dict[str, Any] = {}
            for side in (("cas", "base") if cas_first else ("base", "cas")):
                if a.only and side != a.only:
                    continue
                if side == "cas":
                    rows.update(cas_round(size, src, s, rwork, a, verify=a.verify and n == 0))
                else:
                    rows.update(base_round(size, src, rwork, a))
            rounds.append(rows)
        return {"size": size, "source_blake3": s["blake3"], "source_seconds": s["seconds"], "rounds": rounds,
                "summary": summarise(rounds)}
    finally:
        pipeline.remove_work(work, a.keep)


def bench_concurrent(a: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="cas-repl-bench-concurrent-", dir=a.dir)
    print(f"== {a.concurrent} concurrent puts of {pipeline.fmt_size(a.concurrent_size)} in {work}", file=sys.stderr)
    try:
        files = []
        for i in range(a.concurrent):
            f = os.path.join(work, f"source{i}.bin")
            pipeline.run_child("mksrc", size=a.concurrent_size, src=f)
            files.append(f)
        rounds = []
        for n in range(a.repeat):
            if a.repeat > 1:
                print(f" round {n + 1}/{a.repeat}", file=sys.stderr)
            rwork = os.path.join(work, f"r{n}")
            os.makedirs(rwork, exist_ok=True)
            rounds.append(concurrent_round(files, a.concurrent_size, rwork, a))
        return {"count": a.concurrent, "file_bytes": a.concurrent_size, "rounds": rounds,
                "summary": summarise_concurrent(rounds)}
    finally:
        pipeline.remove_work(work, a.keep)


def main() -> None:
    p = argparse.ArgumentParser(description="cas put/get across 4 node processes against the same work over bare TLS")
    p.add_argument("--size", type=pipeline.parse_size, action="append",
                   help="file size, e.g. 100M, 1G, 5G (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="rounds per size (default 1); medians in the table; rounds "
                   "alternate which side (baseline or cas) goes first")
    p.add_argument("--dir", default="/work/bench-tmp", help="where temporary files go (default /work/bench-tmp)")
    p.add_argument("--json", help="write all figures as JSON here (default bench/results/replication-SIZES-rN.json)")
    p.add_argument("--keep", action="store_true", help="keep the temporary files (data dirs, node logs, children's output)")
    p.add_argument("--concurrent", type=int, default=8, help="concurrent cas put processes in the concurrent phase "
                   "(default 8; 0 skips the phase)")
    p.add_argument("--concurrent-size", type=pipeline.parse_size, default=64 * MiB,
                   help="size of each concurrently put file (default 64M)")
    p.add_argument("--baseline-tls", choices=("twisted", "cas"), default="twisted",
                   help="the baseline's TLS layer: Twisted's stock TLSMemoryBIOProtocol (default) or cas's "
                        "PeerTLSProtocol (cas.peer.peertls.wrap_server/wrap_client, what cas's peer links use)")
    p.add_argument("--baseline-threads", type=int, default=1,
                   help="worker threads per baseline process for sealing/hashing/storing (default 1)")
    p.add_argument("--window", type=int, default=8, help="blocks in flight in the baseline put (default 8, as Node.window)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the untimed read-back (cas get -o - into BLAKE3) in each size's first round")
    p.add_argument("--only", choices=("cas", "base"), default=None,
                   help="experiments: run only the cas side or only the baseline (no ratios then)")
    p.add_argument("--cache", choices=("cold", "warm"), default="cold",
                   help="page cache at the start of each timed phase: cold (default: sync and drop it, both sides; "
                        "needs root) or warm (leave it as the last phase left it)")
    p.add_argument("--gossip-interval", type=float, default=None,
                   help="pass --gossip-interval to the nodes (default: cas's own default)")
    # hidden: child modes
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for name in ("data", "src", "peers", "port-file", "list-out", "list"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        CHILDREN[a.child](a)
        return

    if not a.size:
        p.error("give at least one --size")
    a.repeat = max(1, a.repeat)
    a.window = max(1, a.window)
    a.baseline_threads = max(1, a.baseline_threads)
    a.concurrent = max(0, a.concurrent)
    signal.signal(signal.SIGTERM, pipeline.terminate)  # so that children are stopped and the temp dirs removed
    signal.signal(signal.SIGHUP, pipeline.terminate)
    atexit.register(pipeline.stop_children, LIVE)
    os.makedirs(a.dir, exist_ok=True)
    a.dir = os.path.abspath(a.dir)
    # one size at a time: the source, then 4 copies (cas: origin + 3 holders; baseline: sender + 3 receivers)
    need = max(a.size) * (1 + NODES) + a.concurrent * a.concurrent_size * (1 + NODES) + 1024 * MiB
    if a.keep:
        need = sum(a.size) * (1 + 2 * NODES * a.repeat) + a.concurrent * a.concurrent_size * (1 + NODES * a.repeat) + 1024 * MiB
    pipeline.require_room(a.dir, need)
    try:
        cool(a)  # once now: a run that cannot drop the cache stops here, not in its first timed phase
    except OSError as e:
        raise SystemExit(f"FAIL: --cache cold drops the page cache before each timed phase, which needs write access to "
                         f"{DROP_CACHES} (root): {e.strerror}; run as root or pass --cache warm") from None
    if not a.json:
        sizes = "-".join(pipeline.fmt_size(s) for s in a.size)
        a.json = os.path.join(RESULTS, f"replication-{sizes}-r{a.repeat}.json")
    env = pipeline.environment()
    env["git"] = pipeline.git_state(REPO)
    try:
        results = [bench_size(size, a) for size in a.size]
        conc = bench_concurrent(a) if a.concurrent else None
    finally:
        pipeline.stop_children(LIVE)
    text, judged = table(results, conc, a)
    print()
    print(f"cas replication benchmark, {env['date']}, {env['cpus']} CPUs, load {env['loadavg']} at start, "
          f"{a.repeat} round(s), {NODES} nodes, replicas {REPLICAS}, baseline TLS {a.baseline_tls}, "
          f"page cache at each phase's start: {a.cache}, "
          f"baseline threads {a.baseline_threads}")
    print(f"targets: cas put and get >= {TARGET_RATIO:.0%} of the baseline (cas timed from the CLI's request, as the "
          f"baselines from theirs; e2e: cas from the CLI's spawn, not judged); every node's peak RSS < "
          f"{TARGET_NODE_RSS_MIB:.0f} MiB and within +{TARGET_RSS_GROWTH - 1:.0%} of its {pipeline.fmt_size(REFERENCE_SIZE)} "
          f"figure (also with {a.concurrent} concurrent puts)")
    print("put: n0 origin, n1-n3 holders; get: n4 reads (no local copy), n0-n3 serve")
    print(text, end="")
    pipeline.end_environment(env)
    doc = {"environment": env, "repeat": a.repeat, "nodes": NODES, "replicas": REPLICAS,
           "options": {"cache": a.cache, "baseline_tls": a.baseline_tls, "baseline_threads": a.baseline_threads, "window": a.window,
                       "concurrent": a.concurrent, "concurrent_size": a.concurrent_size,
                       "gossip_interval": a.gossip_interval},
           "targets": {"ratio_vs_base": TARGET_RATIO, "node_peak_rss_mib": TARGET_NODE_RSS_MIB,
                       "rss_growth_vs_reference": TARGET_RSS_GROWTH, "reference_size": REFERENCE_SIZE},
           "judged": judged, "sizes": results, "concurrent": conc, "table": text}
    pipeline.write_results(a.json, doc)


if __name__ == "__main__":
    main()
