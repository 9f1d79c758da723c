"""Where a node keeps its data by default. Standard library only: the CLI imports it and must stay light."""

from __future__ import annotations

import os
from typing import Mapping


def default_data_dir(port: int, environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_DATA_HOME/cas/node-PORT`` (``~/.local/share`` when XDG_DATA_HOME is unset or empty)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "cas", f"node-{port}")


def state_dir(environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_STATE_HOME/cas`` (``~/.local/state`` when unset): the CLI's resumable uploads."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "cas")
