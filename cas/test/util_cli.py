"""Helpers to run the ``cas`` command line client as a real subprocess, against any node (fake or real).

    write_node_dir(path, url, token)     a data dir holding only api.url and api.token
    run_cli(args, node_dir, stdin=b"")   -> (exit code, stdout bytes, stderr bytes)

``run_cli`` gives the CLI a clean environment (no ``CAS_NODE``/``CAS_TOKEN`` from the caller, an
``XDG_DATA_HOME`` with no node in it unless ``env`` says otherwise), so a test never reaches a node it did
not choose. stderr is not a terminal, so the progress bar is off.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping, Sequence

CLI = [sys.executable, "-m", "cas.cli"]


def write_node_dir(path: str, url: str, token: str) -> str:
    """Create ``path`` (if needed) with ``api.url`` and ``api.token`` as a node writes them; returns ``path``."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    with open(os.path.join(path, "api.url"), "w", encoding="utf-8") as f:
        f.write(url + "\n")
    fd = os.open(os.path.join(path, "api.token"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return path


def cli_env(env: Mapping[str, str] | None = None, home: str | None = None) -> dict[str, str]:
    """The environment ``run_cli`` uses: the caller's minus CAS_*, with ``XDG_DATA_HOME`` set to ``home``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
    out["XDG_DATA_HOME"] = home or os.path.abspath("xdg-data-home-without-node")
    out["XDG_STATE_HOME"] = os.path.abspath("xdg-state-home")  # cas put --resume keeps its state there
    out.setdefault("PYTHONIOENCODING", "utf-8")
    out.update(env or {})
    return out


def run_cli(
    args: Sequence[str],
    node_dir: str | None = None,
    stdin: bytes = b"",
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 120,
) -> tuple[int, bytes, bytes]:
    """Run ``cas ARGS`` (with ``--node node_dir`` first when given); returns (code, stdout, stderr)."""
    argv = list(CLI)
    if node_dir is not None:
        argv += ["--node", node_dir]
    argv += list(args)
    proc = subprocess.run(
        argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(env), cwd=cwd, timeout=timeout
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(testcase, stderr: bytes, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    """stderr is exactly one line ``cas: ...`` (no traceback) holding every fragment; returns the line."""
    text = stderr.decode("utf-8", "replace")
    testcase.assertTrue(text.startswith("cas: ") and text.endswith("\n") and text.count("\n") == 1, repr(text))
    testcase.assertNotIn("Traceback", text)
    for fragment in fragments:
        testcase.assertIn(fragment, text)
    return text
