"""Crash safety on real ``twistd -n cas`` processes: a node killed at each named crash point (``CAS_CRASH_AT``,
cas/base/crash.py) and started again shows no partial block, no temporary file, an index that matches its
block files and its accounting, and every file it acknowledged reads back byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID
from cas.base.crash import EXIT, POINTS

from .test_system_files import CLI, cli, make_file, sha256_of
from .test_system_peers import NodeProcess, eventually
from .test_system_repair import blocks as block_files

MiB = 1 << 20
SCENARIO = {
    "put.block_stored": "put", "put.before_record": "put", "put.after_record": "put",
    "hold.block_stored": "hold", "hold.after_record": "hold", "lease.after_grant": "hold",
    "gc.after_rows": "gc", "gc.after_unlink": "gc", "repair.after_send": "drain",
}


def indexed(node: NodeProcess) -> set[str]:
    """Block ids the node's index refers to (its files, uploads and pins, and blocks held for others)."""
    db = sqlite3.connect(f"file:{os.path.join(node.data_dir, 'index.sqlite')}?mode=ro", uri=True)
    try:
        return {c for (c,) in db.execute("SELECT cid FROM refs UNION SELECT cid FROM holds")}
    finally:
        db.close()


class CrashPoints(SynchronousTestCase):
    def test_every_point_has_a_test(self) -> None:
        self.assertEqual(set(SCENARIO), set(POINTS))
        source = ""
        for root, _dirs, files in os.walk(os.path.join(os.path.dirname(os.path.dirname(__file__)), "cas")):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name)) as f:
                        source += f.read()
        for p in POINTS:  # each point is in the production code
            self.assertIn(f'crash.point("{p}")', source)

    def check(self, node: NodeProcess) -> None:
        """After a restart: no partial block, no temporary file, index rows and block files agree, ``used`` is the
        sum of the block files."""
        self.assertEqual(os.listdir(os.path.join(node.data_dir, "tmp")), [], "temporary files left")

        def agree() -> bool:  # the start-up collection removes blocks nothing refers to any more
            files = set(block_files(node))
            return files == indexed(node)

        eventually(agree, "the index and the block files to agree", 60)
        for cid, path in block_files(node).items():  # (after the start-up collection: nothing vanishes now)
            with open(path, "rb") as f:
                self.assertTrue(CID.parse(cid).verify(f.read()), f"a partial or corrupt block file {cid}")
        status = json.loads(cli(node, "status", "--json").stdout)
        self.assertEqual(status["storage"]["used"], sum(os.path.getsize(p) for p in block_files(node).values()))

    def readable(self, node: NodeProcess, key: str, digest: str, where: str) -> None:
        out = os.path.join(where, "out.bin")
        cli(node, "get", "-o", out, key)
        self.assertEqual(sha256_of(out), digest)
        os.unlink(out)

    def run_point(self, point: str) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        kind = SCENARIO[point]
        a = NodeProcess(os.path.join(base, "a"), [], ("--replicas", "1"))
        self.addCleanup(lambda: a.stop())
        boot = [f"{a.node_id}@127.0.0.1:{a.port}"]
        others = [NodeProcess(os.path.join(base, n), boot) for n in (("b", "c") if kind == "drain" else ("b",))]
        for o in others:
            self.addCleanup(o.stop)
        everyone = {a.node_id, *(o.node_id for o in others)}
        eventually(lambda: all({k for k, p in n.peers().items() if p["member"]} == everyone - {n.node_id}
                               for n in [a, *others]), "full membership")
        files = {}
        for name in ("kept", "removed"):  # acknowledged before the crash
            path = os.path.join(base, name)
            digest = make_file(path, 3 * MiB)
            files[name] = (json.loads(cli(a, "put", "--quiet", "--json", path).stdout)["key"], digest)
        holder = next(o for o in others if block_files(o))  # --replicas 1: one node holds the file's blocks
        victim = a if kind == "put" else holder
        victim.stop()
        victim = NodeProcess(victim.data_dir, boot if victim is not a else [], victim_args(victim, a),
                             env={"CAS_CRASH_AT": point})
        self.addCleanup(victim.stop)
        if victim.data_dir == a.data_dir:
            a = victim
        source = os.path.join(base, "during")
        make_file(source, 3 * MiB)
        if kind in ("put", "hold"):  # put a file: the origin or its holder dies on the way
            subprocess.run(CLI + ["--node", a.data_dir, "put", "--quiet", source], capture_output=True, timeout=120)
        elif kind == "gc":  # cas rm: the holder releases and collects the blocks, and dies on the way
            eventually(lambda: a.node_id in {k for k, p in victim.peers().items() if p["state"] == "connected"},
                       "the holder back in touch")
            cli(a, "rm", files.pop("removed")[0])
        else:  # the holder leaves: cas drain sends its blocks to the other node, and it dies after the first
            subprocess.run(CLI + ["--node", victim.data_dir, "drain"], capture_output=True, timeout=120)
        self.assertEqual(victim.proc.wait(120), EXIT, f"the node did not stop at {point}:\n{victim.output()[-3000:]}")
        victim.log.close()
        again = NodeProcess(victim.data_dir, boot if victim is not a else [], victim_args(victim, a))
        self.addCleanup(again.stop)
        if victim is a:
            a = again
        self.check(again)
        for key, digest in files.values():  # every file acknowledged before the crash reads back
            self.readable(a, key, digest, base)
        self.assertNotIn("Traceback", again.output())


def victim_args(victim: NodeProcess, a: NodeProcess) -> tuple[str, ...]:
    return ("--replicas", "1") if victim.data_dir == a.data_dir else ()


for _point in sorted(SCENARIO):
    def _test(self: CrashPoints, p: str = _point) -> None:
        self.run_point(p)

    _test.__name__ = "test_crash_at_" + _point.replace(".", "_")
    setattr(CrashPoints, _test.__name__, _test)
del _test, _point
