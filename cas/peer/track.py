"""Each peer's track record as this node saw it: audits passed and failed, false corruption reports.

Private to this node and bounded (``LIMIT`` peers, the least recently noted dropped first), so a flood of
identities cannot grow it. It only reorders: a reader asks a peer with a recent failure last, an upload and
repair treat it like a dropped holder; the placement rank itself never depends on it (every node must compute
the same rank).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import attrs

LIMIT = 4096  # peers remembered
RECENT = 86400.0  # seconds a failed audit counts as recent


@attrs.define
class Record:
    audits_ok: int = 0
    audits_failed: int = 0
    false_reports: int = 0
    last_ok: float | None = None
    last_failed: float | None = None
    last_failure: str = ""


class TrackRecords:
    def __init__(self, now: Callable[[], float], limit: int = LIMIT, recent: float = RECENT) -> None:
        self._now, self._limit, self.recent = now, limit, recent
        self._records: OrderedDict[bytes, Record] = OrderedDict()

    def _touch(self, node: bytes) -> Record:
        r = self._records.pop(node, None) or Record()
        self._records[node] = r
        while len(self._records) > self._limit:
            self._records.popitem(last=False)
        return r

    def audit_ok(self, node: bytes) -> None:
        r = self._touch(node)
        r.audits_ok += 1
        r.last_ok = self._now()

    def audit_failed(self, node: bytes, why: str) -> None:
        r = self._touch(node)
        r.audits_failed += 1
        r.last_failed, r.last_failure = self._now(), why

    def false_report(self, node: bytes) -> int:
        r = self._touch(node)
        r.false_reports += 1
        return r.false_reports

    def failing(self, node: bytes) -> bool:
        """A failed audit in the last ``recent`` seconds, not followed by a passed one."""
        r = self._records.get(node)
        if r is None or r.last_failed is None:
            return False
        return self._now() - r.last_failed < self.recent and (r.last_ok is None or r.last_ok < r.last_failed)

    def get(self, node: bytes) -> Record | None:
        return self._records.get(node)

    def describe(self, node: bytes) -> dict[str, Any] | None:
        """What ``cas peers`` shows of a peer (None: nothing noted)."""
        r = self._records.get(node)
        if r is None:
            return None
        return {"audits_ok": r.audits_ok, "audits_failed": r.audits_failed, "false_reports": r.false_reports,
                "failing": self.failing(node), "last_failure": r.last_failure or None}

    def __len__(self) -> int:
        return len(self._records)
