"""What the CLI shows people: stdout that survives a closed pipe, JSON, the progress bar, sizes and
durations, and text from the network or a file name made safe for a terminal (it never drives the terminal)."""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from typing import Any

from cas.cli.exits import StdoutClosed

_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def bad_char(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control, bidi and separator characters escaped, cut to ``limit`` characters."""
    out = "".join(c.encode("unicode_escape").decode("ascii") if bad_char(c) else c for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
    except BrokenPipeError:
        raise StdoutClosed() from None


def print_out(text: str = "") -> None:
    write_stdout((text + "\n").encode("utf-8", "surrogateescape"))


def print_err(message: str) -> None:
    """One line ``cas: MESSAGE`` on stderr (errors, and warnings of a command that succeeded)."""
    line = "cas: " + " ".join(message.split()) + "\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def print_json(obj: Any) -> None:
    print_out(json.dumps(obj, sort_keys=True))


def flush_stdout() -> None:
    try:
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise StdoutClosed() from None


class Progress:
    """A tqdm bar on stderr when stderr is a terminal; nothing (and no tqdm import) otherwise."""

    def __init__(self, total: int | None, desc: str | None, enabled: bool) -> None:
        self.bar = None
        if enabled and _stderr_is_tty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=printable(desc, 40) if desc else None, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.2,
            )

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h or d) + [f"{m}m"] * bool(m or h or d) + [f"{s}s"]
    return " ".join(parts)


def human_time(unix: float) -> str:
    """A moment in UTC, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix))


def truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8", "surrogateescape")[:limit]
    return data.decode("utf-8", "ignore")


def size_or_q(v: Any) -> str:
    return human_size(v) if isinstance(v, int) else "?"
