"""Named crash points, for the crash-safety tests (tests/test_system_crash.py).

``CAS_CRASH_AT=NAME`` in a node's environment makes it exit at once (``os._exit(EXIT)``: no clean-up, no
flush, no shutdown, as if the process were killed there) the first time it reaches the point named NAME.
Unset, every point is a no-op (one comparison). The points sit where a crash leaves state half-changed: after
a block is written and before the index records it, after index rows go and before a file is unlinked, after
a message changed state and before it is answered.
"""

from __future__ import annotations

import os

EXIT = 70  # the exit code of a crash point
POINTS = frozenset({
    "put.block_stored",  # an upload stored a block here, its reference not yet committed
    "put.before_record",  # every block of a file stored and placed, the file not yet recorded
    "put.after_record",  # the file recorded, the client not yet answered
    "hold.block_stored",  # a block held for a peer is on disk, not yet in the index
    "hold.after_record",  # held blocks recorded with their leases, not yet acknowledged
    "lease.after_grant",  # leases granted in the index, the LEASE not yet answered
    "repair.after_send",  # a repair copy acknowledged by its receiver, nothing recorded here yet
    "gc.after_rows",  # a collection removed index rows, their blocks not yet unlinked
    "gc.after_unlink",  # a collection unlinked the first of a batch of blocks
})
_AT = os.environ.get("CAS_CRASH_AT") or None


def point(name: str) -> None:
    """Exit here if ``CAS_CRASH_AT`` names this point."""
    if _AT is not None and _AT == name:
        assert name in POINTS, name
        os._exit(EXIT)
