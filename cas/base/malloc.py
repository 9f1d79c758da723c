"""Tune the C allocator of a node process for a stream of 1 MiB blocks.

A node allocates and frees a few 1 MiB buffers per block (a block read from disk, the TLS layer's joined
write, a received frame), often in one thread and freed in another. With glibc's defaults those buffers
are handed back to the kernel and faulted in again page by page: measured at 0.5-1 million minor page
faults per GiB served, about 17% of the node's CPU (bench/peers.py). Keeping large buffers in the heap and
a few MiB of freed memory at its top removes that churn for a bounded amount of memory.

Only glibc is tuned (``mallopt`` via ctypes); elsewhere this does nothing.
"""

from __future__ import annotations

import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 4 << 20  # buffers below this come from the heap and are reused (a block is 1 MiB)
TRIM_THRESHOLD = 8 << 20  # freed memory kept at the top of a heap before it is given back
ARENA_MAX = 2  # the reactor thread and the worker threads share few heaps, so memory freed is reused


def tune() -> bool:
    """Apply the settings; True if they took effect (glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    settings = [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)]
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(opt, value) == 1 for opt, value in settings)
