"""A stored file's life on four real ``twistd -n cas`` processes with the default lease time and collection
period: ``cas status KEY --json`` confirms 3 replicas after a put; a pin by another node keeps every copy after
the uploader's ``cas rm``, and ``cas unpin`` lets them go; ``cas rm`` empties every holder's disk of the file within two minutes; an origin killed in the middle of
a put has its orphans released from the holders within five minutes of its restart.

Only operator interfaces are used: twistd options, the ``cas`` CLI, ``kill -9``, and the holders' block
directories (what an operator's ``du`` sees).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from .test_system_files import cli, make_file
from .test_system_peers import CLI, NodeProcess, eventually

MiB = 1 << 20


def blocks_on_disk(node: NodeProcess) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(os.path.join(node.data_dir, "blocks")))


class Lifecycle(SynchronousTestCase):
    def network(self) -> list[NodeProcess]:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)  # runs last: after every node stopped
        nodes = [self.start("n0", [])]
        for i in range(1, 4):
            nodes.append(self.start(f"n{i}", [f"{nodes[0].node_id}@127.0.0.1:{nodes[0].port}"]))
        ids = {n.node_id for n in nodes}
        eventually(lambda: all({k for k, p in n.peers().items() if p["member"]} == ids - {n.node_id} for n in nodes),
                   "full membership")
        return nodes

    def start(self, name: str, bootstrap: list[str]) -> NodeProcess:
        n = NodeProcess(os.path.join(self.base, name), bootstrap)
        self.addCleanup(n.stop)
        return n

    def test_rm_frees_every_holder_within_two_minutes(self) -> None:
        nodes = self.network()
        source = os.path.join(self.base, "file.bin")
        make_file(source, 20 * MiB)
        put = json.loads(cli(nodes[0], "put", "--quiet", "--json", "--min-replicas", "3", source).stdout)
        self.assertEqual(put["replicas"], 3)
        held = [blocks_on_disk(n) for n in nodes[1:]]
        self.assertGreater(sum(held), 3 * 20)  # 20 data blocks and the manifests, 3 copies
        for asker in (nodes[0], nodes[2]):  # 3 replicas under live leases, seen from the origin and from a holder
            health = json.loads(cli(asker, "status", "--json", put["key"]).stdout)
            self.assertEqual((health["lowest_replicas"], health["replicas_wanted"]), (3, 3))
            self.assertEqual(health["blocks"], sum(held) // 3)
            self.assertEqual(health["unreachable"], [])
        answer = json.loads(cli(nodes[0], "rm", "--json", put["key"]).stdout)
        self.assertEqual(len(answer["released_on"]), 3)
        self.assertEqual(answer["pending"], [])
        t0 = time.monotonic()
        eventually(lambda: all(blocks_on_disk(n) == 0 for n in nodes[1:]), "the holders to delete every copy", 120)
        print(f"\nreleased copies gone from every holder {time.monotonic() - t0:.0f} s after cas rm answered")

    def test_a_pin_keeps_the_file_after_the_uploader_forgot_it(self) -> None:
        nodes = self.network()
        source = os.path.join(self.base, "file.bin")
        make_file(source, 8 * MiB)
        put = json.loads(cli(nodes[0], "put", "--quiet", "--json", "--min-replicas", "3", source).stdout)
        pinned = json.loads(cli(nodes[3], "pin", "--json", put["key"]).stdout)
        # 3 nodes besides the origin: each holds every block, the pinner too (it leases its copy to itself)
        self.assertEqual(pinned["lowest_holders"], 3)
        held = [blocks_on_disk(n) for n in nodes[1:]]
        cli(nodes[0], "rm", put["key"])
        time.sleep(75)  # past two collection periods (30 s): released copies would be gone by now
        self.assertEqual([blocks_on_disk(n) for n in nodes[1:]], held)
        out = os.path.join(self.base, "back.bin")
        cli(nodes[3], "get", put["key"], "-o", out)
        with open(source, "rb") as a, open(out, "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertIn(pinned["root"], cli(nodes[3], "pins").stdout)
        cli(nodes[3], "unpin", put["key"])
        eventually(lambda: all(blocks_on_disk(n) == 0 for n in nodes[1:]), "the holders to drop unpinned copies", 120)

    def test_orphans_of_a_killed_put_go_within_five_minutes_of_the_restart(self) -> None:
        nodes = self.network()
        origin = nodes[0]
        source = os.path.join(self.base, "big.bin")
        make_file(source, 400 * MiB)
        put = subprocess.Popen(CLI + ["--node", origin.data_dir, "put", "--quiet", source], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        self.addCleanup(put.wait, 60)
        eventually(lambda: sum(blocks_on_disk(n) for n in nodes[1:]) >= 30, "blocks on the holders", 120)
        origin.kill()  # kill -9 in the middle of the put
        self.assertGreater(sum(blocks_on_disk(n) for n in nodes[1:]), 0)
        back = self.start("n0", [f"{nodes[1].node_id}@127.0.0.1:{nodes[1].port}"])
        t0 = time.monotonic()
        eventually(lambda: all(blocks_on_disk(n) == 0 for n in nodes[1:]), "the holders to drop the orphans", 300)
        print(f"\norphans gone from every holder {time.monotonic() - t0:.0f} s after the origin's restart")
        self.assertNotIn("Traceback", back.output())
