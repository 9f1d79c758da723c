"""Four real ``twistd -n cas`` processes on 127.0.0.1 find each other, notice a killed one, take it back.

Everything goes through the interfaces an operator uses: command-line options (``--bootstrap`` with the node
id in its human form, ``--gossip-interval``), the log line that names the peer port, and ``cas peers --json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]
CLI = [sys.executable, "-m", "cas.cli"]
LISTENING = re.compile(r"cas node (\S+) listening for peers on tcp:127\.0\.0\.1:(\d+)")


class NodeProcess:
    def __init__(self, data_dir: str, bootstrap: list[str], extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir + ".log"
        args = ["--port", "tcp:0:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1", "--data-dir", data_dir,
                "--gossip-interval", "0.3", *extra]
        for b in bootstrap:
            args += ["--bootstrap", b]
        self.log = open(self.log_path, "ab")
        self.offset = self.log.tell()  # a restart appends to the same log: look at the new lines only
        url = os.path.join(data_dir, "api.url")
        if os.path.exists(url):
            os.unlink(url)  # left by an earlier run (killed): wait for the new one
        self.proc = subprocess.Popen(TWISTD + ["cas", *args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.node_id, self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 30.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.findall(self.output())
            if found and os.path.exists(os.path.join(self.data_dir, "api.url")):
                node_id, port = found[-1]
                return node_id, int(port)
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited early:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"node did not start within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        """What this process logged (not an earlier run's lines)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def peers(self) -> dict[str, dict[str, Any]]:
        out = subprocess.run(CLI + ["--node", self.data_dir, "peers", "--json"], capture_output=True, text=True,
                             timeout=30, check=False)
        if out.returncode != 0:
            raise AssertionError(f"cas peers failed: {out.stderr}")
        return {p["node_id"]: p for p in json.loads(out.stdout)["peers"]}

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def eventually(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class FourNodes(SynchronousTestCase):
    def start(self, name: str, bootstrap: list[str]) -> NodeProcess:
        n = NodeProcess(os.path.join(self.base, name), bootstrap)
        self.addCleanup(n.stop)
        return n

    def test_converge_kill_restart(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        nodes = [self.start("n0", [])]
        for i in range(1, 4):
            prev = nodes[-1]
            # Pinned with the human form of the id for odd nodes; trust on first use for the others.
            contact = (f"{prev.node_id}@" if i % 2 else "") + f"127.0.0.1:{prev.port}"
            nodes.append(self.start(f"n{i}", [contact]))
        ids = {n.node_id for n in nodes}

        def full(n: NodeProcess) -> bool:
            peers = n.peers()
            return {k for k, p in peers.items() if p["member"]} == ids - {n.node_id}

        eventually(lambda: all(full(n) for n in nodes), "every node to list the three others as members")

        # kill -9 one node: the others lose their connections to it and suspect it. It lists the others, so it
        # has saved its table already: the first membership change is written at once, not a second later.
        victim = nodes[2]
        self.assertTrue(os.path.exists(os.path.join(victim.data_dir, "peers.json")), "the peer table is saved")
        victim.kill()
        others = [n for n in nodes if n is not victim]
        eventually(lambda: all(n.peers()[victim.node_id]["state"] in ("suspect", "dead") for n in others),
                   "the others to suspect the killed node")

        # Restarted without --bootstrap: it rejoins from its saved table.
        back = NodeProcess(victim.data_dir, [])
        self.addCleanup(back.stop)
        self.assertEqual(back.node_id, victim.node_id)
        eventually(lambda: full(back) and all(n.peers()[back.node_id]["state"] in ("connected", "alive") for n in others),
                   "the restarted node to rejoin")
        for n in others + [back]:
            self.assertNotIn("Traceback", n.output())
