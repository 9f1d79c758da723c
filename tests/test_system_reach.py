"""Reachable by default: five ``twistd -n cas --port P`` nodes, no ``--advertise``, bootstrapped in a chain.

Each node binds every interface, so it must find an address to advertise by itself. The nodes run inside a
network namespace this test creates with only ``lo`` up: they advertise 127.0.0.1 (loopback is all they have)
and can never reach or advertise the host's own interfaces. Every put, from every node, reaches 3 holders.
Needs root and ``ip`` (iproute2; ``.ci/run`` installs it): skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .test_system_peers import eventually

TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]
BASE_PORT = 3000  # a fresh namespace has every port free


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.run("ip", "link", "set", "lo", "up", check=True)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = False, timeout: float = 120, input: bytes | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*cmd), check=check, capture_output=True, timeout=timeout, input=input)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


class ReachableByDefault(SynchronousTestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root to create a network namespace")
        if shutil.which("ip") is None:
            raise SkipTest("needs ip (iproute2) to create a network namespace")
        try:
            self.ns = Namespace(f"cas-reach-{os.getpid()}")
        except subprocess.CalledProcessError as e:  # root without CAP_SYS_ADMIN (a container)
            raise SkipTest(f"cannot create a network namespace: {e.stderr.decode(errors='replace').strip()}")
        self.addCleanup(self.ns.delete)

    def start(self, i: int, bootstrap: str | None) -> tuple[subprocess.Popen, str]:
        d = os.path.abspath(os.path.join(self.base, f"n{i}"))
        args = [sys.executable, *TWISTD, "cas", "--port", str(BASE_PORT + 10 * i), "--data-dir", d,
                "--gossip-interval", "0.3"]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        log = open(d + ".log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(self.ns.argv(*args), stdout=log, stderr=subprocess.STDOUT)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        self.addCleanup(stop)
        eventually(lambda: os.path.exists(os.path.join(d, "api.url")) or proc.poll() is not None, f"node {i} to start", 30)
        self.assertIsNone(proc.poll(), open(d + ".log").read())
        return proc, d

    def cas(self, d: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return self.ns.run(sys.executable, "-m", "cas.cli", "--node", d, *args, input=input)

    def test_five_wildcard_nodes_in_a_chain_place_every_put_on_three_holders(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)  # runs after the nodes stopped
        dirs = []
        for i in range(5):
            _proc, d = self.start(i, f"127.0.0.1:{BASE_PORT + 10 * (i - 1)}" if i else None)
            dirs.append(d)

        def peers(d: str) -> dict:
            out = self.cas(d, "peers", "--json")
            return json.loads(out.stdout) if out.returncode == 0 else {}

        def members(d: str) -> int:
            return sum(1 for p in peers(d).get("peers", []) if p["member"])

        eventually(lambda: all(members(d) == 4 for d in dirs), "every node to count the four others as members", 90)
        # Each advertises 127.0.0.1 and its own port, learned from its interfaces (no --advertise was given).
        seen = {tuple(p["addresses"]) for p in peers(dirs[0])["peers"]}
        self.assertEqual(seen, {(f"tcp:127.0.0.1:{BASE_PORT + 10 * i}",) for i in range(1, 5)})
        data = os.urandom(3 << 20)
        for i, d in enumerate(dirs):
            put = self.cas(d, "put", "--json", "--quiet", "-", input=data)
            self.assertEqual(put.returncode, 0, put.stderr)
            answer = json.loads(put.stdout)
            self.assertEqual((answer["replicas"], answer["replicas_wanted"]), (3, 3), f"put from node {i}")
            self.assertEqual(put.stderr, b"")
            got = self.cas(dirs[(i + 2) % 5], "get", "-o", "-", answer["key"])
            self.assertEqual(got.stdout, data, got.stderr)
        for d in dirs:
            with open(d + ".log") as f:
                log = f.read()
            self.assertNotIn("Traceback", log)
            self.assertIn("(advertised: tcp:127.0.0.1:", log)
