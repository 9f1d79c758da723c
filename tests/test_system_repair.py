"""Repair on six real ``twistd -n cas`` processes with ``--repair-after 5``: the origin stopped for good, then a
holder killed; every block is back at 3 copies, each checked by reading the holder's block file and hashing it
against its id (what a ``GET_BLOCK`` reader checks; ``HAS`` alone would only be a claim)."""

from __future__ import annotations

import json
import os
import shutil
import time

from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID

from .test_system_files import cli, make_file
from .test_system_peers import NodeProcess, eventually

MiB = 1 << 20


def blocks(node: NodeProcess) -> dict[str, str]:
    """Block id -> path of every block file in the node's store."""
    out = {}
    for root, _dirs, files in os.walk(os.path.join(node.data_dir, "blocks")):
        for name in files:
            out[name] = os.path.join(root, name)
    return out


def good_copies(nodes: list[NodeProcess], cid: str) -> int:
    n = 0
    for node in nodes:
        path = blocks(node).get(cid)
        if path is None:
            continue
        with open(path, "rb") as f:
            n += CID.parse(cid).verify(f.read())
    return n


class Repair(SynchronousTestCase):
    def test_blocks_come_back_to_three_copies_without_the_origin(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        nodes = []
        for i in range(6):
            boot = [f"{nodes[0].node_id}@127.0.0.1:{nodes[0].port}"] if nodes else []
            n = NodeProcess(os.path.join(base, f"n{i}"), boot, ("--repair-after", "5"))
            self.addCleanup(n.stop)
            nodes.append(n)
        ids = {n.node_id for n in nodes}
        eventually(lambda: all({k for k, p in n.peers().items() if p["member"]} == ids - {n.node_id} for n in nodes),
                   "full membership")
        source = os.path.join(base, "file.bin")
        make_file(source, 20 * MiB)
        put = json.loads(cli(nodes[0], "put", "--quiet", "--json", "--min-replicas", "3", source).stdout)
        self.assertEqual(put["replicas"], 3)
        file_blocks = sorted(blocks(nodes[0]))  # the origin keeps the whole file, and nothing else
        origin, rest = nodes[0], nodes[1:]
        self.assertTrue(all(good_copies(rest, c) == 3 for c in file_blocks))
        origin.stop()  # stopped for good, before a holder dies
        victim = max(rest, key=lambda n: len(blocks(n)))
        victim.kill()
        live = [n for n in rest if n is not victim]
        t0 = time.monotonic()
        eventually(lambda: all(good_copies(live, c) >= 3 for c in file_blocks), "every block back at 3 copies", 180)
        took = time.monotonic() - t0
        print(f"\n{len(file_blocks)} blocks back at 3 checked copies {took:.0f} s after the holder was killed")
        for n in live:
            self.assertNotIn("Traceback", n.output())
