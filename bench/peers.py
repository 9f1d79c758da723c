#!/usr/bin/env python
"""GET_BLOCK from a node process over the peer protocol against a bare Twisted TLS stream of the same block files
(as is, with cas's allocator settings, with BLAKE3 on receipt). See bench/README.md."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import harness
from harness import GiB, MiB

BLOCK = (1 << 20) + 16  # a sealed 1 MiB segment: the largest data block
TARGET_RATIO = 0.80  # cas GET_BLOCK >= 80% of the bare TLS stream
RUN_TIMEOUT_S_PER_GIB = 120.0  # a transfer slower than ~8.5 MiB/s is a hang: kill it
LABELS = {"bare": "bare TLS stream", "bare_tuned": "bare, cas malloc", "bare_b3": "bare TLS + BLAKE3",
          "cas": "cas GET_BLOCK"}

# == children (each imports what it needs) =========================================================================


def _cids(path: str) -> list[Any]:
    from cas.base.cid import CID

    with open(path) as f:
        return [CID.parse(line.strip()) for line in f if line.strip()]


def block_path(data: str, cid: Any) -> str:
    """Where DiskBlockStore keeps a block (its documented layout: blocks/<aa>/<bb>/<cid>)."""
    h = cid.digest.hex()
    return os.path.join(data, "blocks", h[0:2], h[2:4], str(cid))


def child_mkblocks(a: argparse.Namespace) -> None:
    """N random blocks stored with DiskBlockStore.put (durable, 8 threads) and referenced in the index as
    ``hold:bench`` (a node collects unreferenced blocks when it starts); their ids in order; the receiver's dir."""
    from concurrent.futures import ThreadPoolExecutor

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from cas.base.cid import CID
    from cas.store.blockstore import DiskBlockStore
    from cas.store.datadir import prepare
    from cas.store.index import Index

    t0, s = time.perf_counter(), prepare(a.data)
    prepare(a.recv_data)
    store = DiskBlockStore(s.path)
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()

    def put(block: bytes) -> CID:
        cid = CID.of(block)
        store.put(cid, block, verified=True)
        return cid

    cids: list[CID] = []
    with ThreadPoolExecutor(8) as pool:  # at most 64 blocks in memory
        futures = [pool.submit(put, enc.update(bytes(BLOCK))) for _ in range(min(a.blocks, 64))]
        while futures:
            cids.append(futures.pop(0).result())
            if len(cids) + len(futures) < a.blocks:
                futures.append(pool.submit(put, enc.update(bytes(BLOCK))))
    index = Index(s.join("index.sqlite"))
    index.add_refs("hold:bench", cids)
    index.close()
    with open(a.cids, "w") as f:
        f.write("\n".join(map(str, cids)) + "\n")
    for c in cids:  # the baseline reads these paths: check the layout assumption once
        if not os.path.exists(block_path(s.path, c)):
            raise SystemExit(f"block {c} is not where the store layout says")
    with open(a.paths, "w") as f:
        f.write("\n".join(block_path(s.path, c) for c in cids) + "\n")
    harness.emit({"op": "mkblocks", "blocks": a.blocks, "seconds": time.perf_counter() - t0,
                  "node_id": str(s.identity())})


def child_recv0(a: argparse.Namespace) -> None:
    """The bare receiver (R's identity, S's key pinned): sends one byte, counts and drops what arrives; with
    ``hash``, also BLAKE3s each block's bytes as they arrive (no copy) and checks it against the block id."""
    result = harness.tuned({"op": "recv0", "hash": a.hash, "bytes": 0}, a.tune)
    import hmac

    import blake3
    from twisted.internet import reactor
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.internet.protocol import Protocol
    from zope.interface import implementer

    from cas.store.datadir import prepare

    digests = [c.digest for c in _cids(a.cids)]
    total, result["blocks"] = len(digests) * BLOCK, len(digests)

    @implementer(IHandshakeListener)
    class Counter(Protocol):
        n, held, block = 0, 0, 0

        def handshakeCompleted(self) -> None:
            self.hasher = blake3.blake3(max_threads=1)
            result["split0"], result["rss_start_mib"] = harness.cpu_split(), harness.mem_status().get("VmRSS")
            self.t0 = time.perf_counter()
            self.transport.write(b"G")

        def dataReceived(self, data: bytes) -> None:
            self.n += len(data)
            if a.hash:
                view = memoryview(data)
                while view:
                    take = min(len(view), BLOCK - self.held)
                    self.hasher.update(view[:take])
                    self.held, view = self.held + take, view[take:]
                    if self.held == BLOCK:
                        if not hmac.compare_digest(self.hasher.digest(), digests[self.block]):
                            result["error"] = f"block {self.block} does not match its id"
                            return self.transport.abortConnection()
                        self.hasher, self.held, self.block = blake3.blake3(max_threads=1), 0, self.block + 1
            if self.n >= total and "seconds" not in result:
                result["seconds"], result["split1"] = time.perf_counter() - self.t0, harness.cpu_split()

        def connectionLost(self, reason: Any = None) -> None:
            result["bytes"] = self.n
            if self.n != total and "error" not in result:
                result["error"] = f"received {self.n} of {total} bytes: {reason.getErrorMessage() if reason else '?'}"
            reactor.callLater(0, reactor.stop)

    harness.dial(a.contact, prepare(a.recv_data).identity(), Counter(), result)
    harness.run_reactor(result, "recv0")


def child_recv(a: argparse.Namespace) -> None:
    """The cas receiver: Node + PeerManager on R (neither started: no worker pool, gossip or probes), dials S
    pinned, GET_BLOCK for every block with --window in flight (PeerManager.get_block checks each), drops them."""
    result = harness.tuned({"op": "recv", "window": a.window, "bytes": 0})  # the receiver stands for a node
    from twisted.internet import reactor

    from cas.base.nodeid import parse_node_id
    from cas.node.core import Node
    from cas.peer.peers import PeerManager
    from cas.peer.records import Address
    from cas.store.datadir import prepare

    cids, expected = _cids(a.cids), parse_node_id(a.node_id)
    pm = PeerManager(Node(prepare(a.recv_data), reactor), reactor)
    result["blocks"] = len(cids)
    st: dict[str, Any] = {"next": 0, "done": 0}

    def finish(error: str | None = None) -> None:
        if error:
            result.setdefault("error", error)
        if not st.get("finished"):
            st["finished"] = True
            pm.stop().addBoth(lambda _r: reactor.stop())

    def launch() -> None:
        while st["next"] - st["done"] < a.window and st["next"] < len(cids):
            cid = cids[st["next"]]
            st["next"] += 1
            pm.get_block(expected, cid).addCallbacks(got, lambda f, cid=cid: finish(
                f"GET_BLOCK {cid} failed: {f.getErrorMessage()}"))

    def got(block: bytes) -> None:
        st["done"] += 1
        result["bytes"] += len(block)
        if st["done"] < len(cids):
            return launch()
        result["seconds"], result["split1"] = time.perf_counter() - st["t0"], harness.cpu_split()
        if result["bytes"] != len(cids) * BLOCK:
            result["error"] = f"got {result['bytes']} bytes, expected {len(cids) * BLOCK}"
        conn = pm.connections.get(expected)
        if conn is not None:
            result["wire_bytes_in"], result["wire_bytes_out"] = conn.bytes_in, conn.bytes_out
        finish()

    def connected(conn: Any) -> None:
        result["split0"], result["rss_start_mib"] = harness.cpu_split(), harness.mem_status().get("VmRSS")
        st["t0"] = time.perf_counter()
        launch()

    reactor.callWhenRunning(lambda: pm.dial(Address("tcp", "127.0.0.1", a.port).endpoint(reactor, timeout=10), expected)
                            .addCallbacks(connected, lambda f: finish(f"cannot connect: {f.getErrorMessage()}")))
    harness.run_reactor(result, "recv")


CHILDREN = {"mkblocks": child_mkblocks, "recv0": child_recv0, "recv": child_recv}


def receive(mode: str, work: str, name: str, setup: dict[str, Any], a: argparse.Namespace,
            sender: dict[str, int], **kw: Any) -> dict[str, Any]:
    """A receiver child to completion (page cache as --cache, host steal), with ``sender``'s CPU, faults and disk
    reads over its whole life (from /proc) when the sender is a node."""
    with harness.timed_phase(a) as phase, harness.Watch(sender) as watch:
        r = harness.run_child(__file__, mode, work, name, setup["timeout"], recv_data=setup["recv_data"],
                              cids=setup["cids"], **kw)
    r.update(phase)
    r.update({f"recv_{k}": r.pop(k) for k in ("cpu_user_seconds", "cpu_sys_seconds", "minor_faults",
                                              "wait4_ru_maxrss_mib", "vmhwm_sampled_mib", "vmhwm_end_mib",
                                              "peak_rss_mib")})
    r.update(recv_cpu_s_per_gib=r.pop("cpu_s_per_gib"), recv_cpu_process_seconds=r.pop("process_cpu_seconds"),
             recv_ru_maxrss_mib=r["recv_wait4_ru_maxrss_mib"])
    if sender:
        s = watch.result["node"]
        r.update({f"send_{k}": s[k] for k in ("cpu_user_seconds", "cpu_sys_seconds", "cpu_seconds", "disk_read_mib",
                                              "minor_faults", "idle_rss_mib", "rss_end_mib")},
                 send_peak_rss_mib=s["vmhwm_end_mib"], send_peak_rss_reset=s["hwm_reset"])
    return r


def bare_op(setup: dict[str, Any], work: str, a: argparse.Namespace, hashing: bool,
            tune: bool = False) -> dict[str, Any]:
    """S0 (harness.py's bare TLS server streaming the block files) and R0 (bare TLS client), both fresh processes;
    with ``tune`` both apply cas's allocator settings (cas.base.malloc.tune), as a cas node does."""
    name = ("bare-b3" if hashing else "bare") + ("-tuned" if tune else "")
    server, contact = harness.start_server(harness.__file__, "serve", work, f"{name}-serve", data=setup["data"],
                                           paths=setup["paths"], tune=tune)
    try:
        r = receive("recv0", work, f"{name}-recv", setup, a, {}, contact=contact, hash=hashing, tune=tune)
    finally:
        srv = harness.finish_server(server, "the bare TLS server")
    r.update({f"send_{k}": srv[k] for k in ("cpu_seconds", "cpu_user_seconds", "cpu_sys_seconds", "minor_faults",
                                            "peak_rss_mib", "bytes")}, send_disk_read_mib=srv["served_disk_read_mib"])
    return say(name, r)


def cas_op(setup: dict[str, Any], work: str, a: argparse.Namespace) -> dict[str, Any]:
    """A real node S (twistd) on the block data dir, and the receiver R dialling it."""
    node = harness.Node("S", setup["data"], log=os.path.join(work, "node.log"))
    try:
        harness.start_nodes([node])
        if node.node_id != setup["node_id"]:
            raise SystemExit(f"FAIL: the node says it is {node.node_id}, the data dir's identity is {setup['node_id']}")
        r = receive("recv", work, "cas-recv", setup, a, {"node": node.proc.pid}, port=node.port,
                    node_id=node.node_id, window=a.window)
        r["node_startup_seconds"] = node.startup_seconds
    finally:
        r_stop = node.stop("after the transfer")
    r["node_exit_code"] = r_stop["exit_code"] if r_stop else None
    return say("cas", r)


def say(name: str, r: dict[str, Any]) -> dict[str, Any]:
    r["send_cpu_s_per_gib"] = r["send_cpu_seconds"] / (r["bytes"] / GiB)
    harness.say(name, r, "seconds", "recv_peak_rss_mib", "send_peak_rss_mib", "recv_cpu_s_per_gib",
                "send_cpu_s_per_gib", "send_disk_read_mib")
    return r


def prepare(size: int, work: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node's block store (and the receiver's data dir), untimed: ``size // MiB`` blocks, synced."""
    blocks = max(1, size // MiB)
    setup: dict[str, Any] = {k: os.path.join(work, v) for k, v in (("data", "S"), ("recv_data", "R"),
                                                                  ("cids", "cids.txt"), ("paths", "paths.txt"))}
    setup["timeout"] = max(60.0, RUN_TIMEOUT_S_PER_GIB * blocks * BLOCK / GiB)
    made = harness.run_child(__file__, "mkblocks", work, "mkblocks", data=setup["data"], recv_data=setup["recv_data"],
                             cids=setup["cids"], paths=setup["paths"], blocks=blocks)
    setup["node_id"] = made["node_id"]
    harness.settle()
    print(f"  {blocks} blocks of {BLOCK} bytes stored (DiskBlockStore.put, durable) and synced in "
          f"{made['seconds']:.1f} s; node {made['node_id']}", file=sys.stderr)
    return setup, {"blocks": blocks, "block_bytes": BLOCK, "bytes": blocks * BLOCK, "setup_seconds": made["seconds"],
                   "node_id": made["node_id"]}


def one_round(size: int, work: str, setup: dict[str, Any], n: int, a: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}  # alternate, so that drift favours neither side
    for side in (("cas", "bare") if n % 2 else ("bare", "cas")):
        if side == "cas":
            rows["cas"] = cas_op(setup, work, a)
        else:
            rows["bare"] = bare_op(setup, work, a, False)
            rows["bare_tuned"] = bare_op(setup, work, a, False, tune=True)
            if a.hash_baseline:
                rows["bare_b3"] = bare_op(setup, work, a, True)
    return rows


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out = {key: harness.summary([r[key] for r in rounds if key in r], top=("recv_peak_rss_mib", "send_peak_rss_mib"),
                                med=("recv_cpu_s_per_gib", "send_cpu_s_per_gib", "steal_share"))
           for key in LABELS if any(key in r for r in rounds)}
    x = out["cas"]
    x["ratio_per_round"] = [r["cas"]["mib_s"] / r["bare"]["mib_s"] for r in rounds]
    for k in ("bare_tuned", "bare_b3", "cas"):
        if k in out:
            out[k]["ratio_vs_bare"] = out[k]["mib_s"] / out["bare"]["mib_s"]
            if k != "cas":
                x[f"ratio_vs_{k}"] = x["mib_s"] / out[k]["mib_s"]
    # Judged against the faster bare stream: the baseline must not be handicapped by glibc defaults cas tunes away.
    x["ratio_vs_best_bare"] = min(x["ratio_vs_bare"], x["ratio_vs_bare_tuned"])
    x["target_met"] = x["ratio_vs_best_bare"] >= TARGET_RATIO
    return out


def target(x: dict[str, Any]) -> str:
    b3 = f" (vs bare+BLAKE3: {x['ratio_vs_bare_b3']:.3f})" if "ratio_vs_bare_b3" in x else ""
    return (f" >= {TARGET_RATIO:.2f} of the faster bare: {harness.ok(x['target_met'])} (vs bare with cas malloc: "
            f"{x['ratio_vs_bare_tuned']:.3f}){b3}") if "target_met" in x else ""


def run(a: argparse.Namespace) -> None:
    a.window = max(1, a.window)
    harness.require_room(a.dir, max(a.size) // MiB * BLOCK + 512 * MiB)  # one block store at a time, logs, data dirs
    env = harness.environment()
    results = harness.bench_sizes(a, "peers", lambda *x: one_round(*x, a), summarise, prepare)
    cols = [harness.speed_col(a), ("e2e MiB/s", 9, "mib_s_end_to_end:.1f"),
            ("recv RSS MiB", 13, "recv_peak_rss_mib:.1f"), ("send RSS MiB", 13, "send_peak_rss_mib:.1f"),
            ("CPU s/GiB recv", 15, "recv_cpu_s_per_gib:.2f"), ("send", 5, "send_cpu_s_per_gib:.2f"),
            ("/bare", 6, "ratio_vs_bare:.3f"), (" target", -1, target)]
    harness.finish(a, "peers", env, [
        harness.title("cas peer GET_BLOCK benchmark", env, a) + f", window {a.window}, page cache {a.cache}",
        f"target: cas GET_BLOCK >= {TARGET_RATIO:.0%} of the bare TLS stream; receiver peak RSS flat in the size; "
        "MiB/s from the receiver's first request, e2e from its spawn"],
        harness.table(results, ("transfer", -19), cols, LABELS),
        {"window": a.window, "block_bytes": BLOCK, "targets": {"ratio_vs_bare": TARGET_RATIO}, "sizes": results})


if __name__ == "__main__":
    p = harness.parser("cas GET_BLOCK streaming between two nodes against a bare Twisted TLS stream")
    p.add_argument("--window", type=int, default=8, help="GET_BLOCK requests in flight (default 8)")
    p.add_argument("--no-hash-baseline", dest="hash_baseline", action="store_false",
                   help="skip the bare TLS + BLAKE3 variant (shown for context)")
    harness.main(p, CHILDREN, run)
