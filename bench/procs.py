"""Child processes of a benchmark: start them, reap them, wait until they are ready, read what they report.

Shared by bench/peers.py and bench/replication.py. Standard library only at import time (as pipeline.py and
api.py), since children are started by exec. Every child started here is in ``LIVE`` until reaped, so that
``pipeline.stop_children(LIVE)`` can kill whatever is left on the way out.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import api as apibench  # standard library only at import time
import pipeline  # standard library only at import time

START_TIMEOUT = 60.0  # seconds a child has to report that it is ready

LIVE: set[subprocess.Popen] = set()  # every live child, killed on the way out


def spawn(cmd: list[str], stdout: Any, stderr: Any, env: dict[str, str] | None = None, cwd: str | None = None,
          stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env or apibench.child_env(), cwd=cwd)
    LIVE.add(proc)
    return proc


def reap(proc: subprocess.Popen, timeout: float | None = None) -> None:
    """Wait for ``proc`` up to ``timeout`` seconds, then kill it if it is still running (its exit code then
    says so: the caller checks it)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        LIVE.discard(proc)


def parse_result(text: str, what: str) -> dict[str, Any]:
    """The last result line a child printed (``pipeline.emit``); FAIL if there is none."""
    lines = [line for line in text.splitlines() if line.startswith(pipeline.RESULT_PREFIX)]
    if not lines:
        raise SystemExit(f"FAIL: {what} gave no result")
    return json.loads(lines[-1][len(pipeline.RESULT_PREFIX):])


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: str, n: int = 30) -> str:
    return "\n".join(read_text(path).splitlines()[-n:])


def wait_file(path: str, proc: subprocess.Popen, what: str, log: str) -> None:
    """Until ``proc`` writes ``path`` (it is ready); FAIL if it exits first or takes over START_TIMEOUT."""
    t0 = time.perf_counter()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise SystemExit(f"FAIL: {what} exited ({proc.returncode}) before it was ready:\n{tail(log)}")
        if time.perf_counter() - t0 > START_TIMEOUT:
            raise SystemExit(f"FAIL: {what} not ready within {START_TIMEOUT:.0f} s:\n{tail(log)}")
        time.sleep(0.02)
