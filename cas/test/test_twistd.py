"""``twistd -n cas`` as a real process: it starts, serves its status, stops on SIGTERM, and fails start-up
with a one-line error (no traceback) on a busy port or a data dir of another format version."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(TWISTD + ["cas", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        if proc.poll() is not None:
            raise AssertionError(f"node exited early:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


class TwistdProcess(SynchronousTestCase):
    def test_start_status_stop(self) -> None:
        d = os.path.abspath(self.mktemp())
        proc = start("--port", "0", "--data-dir", d)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        url = wait_for(os.path.join(d, "api.url"), proc)
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+/$")
        with open(os.path.join(d, "api.token")) as f:
            token = f.read().strip()
        req = urllib.request.Request(url + "v1/status", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            status = json.load(r)
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            urllib.request.urlopen(url + "v1/status", timeout=10)
        self.assertEqual(ctx.exception.code, 401)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        self.assertIn(proc.returncode, (0, -signal.SIGTERM))
        self.assertIn(f"cas node {status['node_id']} listening for peers on tcp:", out)
        self.assertNotIn("Traceback", out)

    def test_busy_port(self) -> None:
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = os.path.abspath(self.mktemp())
        proc = start("--port", f"tcp:{port}:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1", "--data-dir", d)
        out, _ = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1, out)
        self.assertIn(f"cas: cannot listen on peer endpoint 'tcp:{port}:interface=127.0.0.1': Address already in use", out)
        self.assertNotIn("Traceback", out)

    def test_unknown_format_version(self) -> None:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        with open(os.path.join(d, "format-version"), "w") as f:
            f.write("99\n")
        proc = start("--port", "0", "--data-dir", d)
        out, _ = proc.communicate(timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("format version '99'", out)
        self.assertNotIn("Traceback", out)

    def test_bad_option(self) -> None:
        proc = start("--port", "tcp6:3000")
        out, _ = proc.communicate(timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("--api and --data-dir are required", out)
        self.assertNotIn("Traceback", out)
