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


def wait_for(path: str, proc: subprocess.Popen | None, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        if proc is not None and proc.poll() is not None:
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

    def test_data_dir_locked_across_the_daemon_fork(self) -> None:
        """A daemonized node (twistd forks after the lock is taken) keeps the lock and shows its own pid; a
        second node on the same data dir is refused with one line, and starts once the first has stopped."""
        d = os.path.abspath(self.mktemp())
        pidfile = os.path.abspath(self.mktemp())
        daemon = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile", pidfile,
             "--logfile", os.path.abspath(self.mktemp()), "cas", "--port", "0", "--data-dir", d],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(daemon.returncode, 0, daemon.stdout)
        pid = int(wait_for(pidfile, None))
        self.addCleanup(lambda: _kill(pid))
        wait_for(os.path.join(d, "api.url"), None)
        with open(os.path.join(d, "lock")) as f:
            self.assertEqual(f.read().strip(), str(pid))
        second = start("--port", "0", "--data-dir", d)
        out, _ = second.communicate(timeout=60)
        self.assertEqual(second.returncode, 1, out)
        self.assertEqual(out.strip().splitlines(), [f"cas: data dir {d} is in use by pid {pid}"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(_alive(pid))
        again = start("--port", "0", "--data-dir", d)
        self.addCleanup(lambda: again.poll() is None and again.kill())
        os.unlink(os.path.join(d, "api.url"))
        wait_for(os.path.join(d, "api.url"), again)
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)

    def test_put_with_no_peers_says_it_reached_none(self) -> None:
        """The node keeps --replicas 3 but knows no peer: the put succeeds (stored here) and says so."""
        d = os.path.abspath(self.mktemp())
        proc = start("--port", "tcp:0:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1", "--data-dir", d)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        wait_for(os.path.join(d, "api.url"), proc)
        put = subprocess.run([sys.executable, "-m", "cas.cli", "--node", d, "put", "-"], input=b"hello",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(put.returncode, 0, put.stderr)
        self.assertTrue(put.stdout.startswith(b"cas1"), put.stdout)
        self.assertEqual(put.stderr, b"cas: stored here and on 0 of 3 peers; the rest will be placed when peers "
                                     b"are available; see `cas status KEY`\n")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)

    def test_port_0_without_data_dir_refused_in_one_line(self) -> None:
        proc = start("--port", "0")
        out, _ = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(out.strip().splitlines(),
                         ["cas: --port 0 picks a new port at each start, so it has no default data dir; "
                          "give --data-dir DIR"])

    def test_bad_option(self) -> None:
        proc = start("--port", "tcp6:3000")
        out, _ = proc.communicate(timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("--api and --data-dir are required", out)
        self.assertNotIn("Traceback", out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pid: int) -> None:
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
