"""Uninitialised byte buffers for 1 MiB blocks: ``bytearray(n)`` zero-fills, and that memset cost a few per cent
of a whole core on each side of a GET_BLOCK stream (measured with py-spy, docs/performance.md).

The contents of a new buffer are whatever the allocator had there, which may be another transfer's bytes: a
caller must fill every byte before anything reads it, and must drop the buffer if it could not. Both callers
do: the frame decoder hands a frame out only once its whole body has arrived, and the block store's cached read
returns a buffer only when ``preadv`` filled it completely.
"""

from __future__ import annotations

import cffi

_ffi = cffi.FFI()
_alloc = _ffi.new_allocator(should_clear_after_alloc=False)


def uninitialized(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes with undefined contents; its memory lives as long as the view."""
    if size <= 0:
        if size < 0:
            raise ValueError("size must not be negative")
        return memoryview(bytearray())
    return memoryview(_ffi.buffer(_alloc("char[]", size)))  # the buffer object keeps the allocation alive
