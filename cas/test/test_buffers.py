"""cas.base.buffers: uninitialised buffers are writable, sized, and outlive everything but their views."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from cas.base.buffers import uninitialized


class UninitializedTests(SynchronousTestCase):
    def test_size_and_writable(self) -> None:
        for size in (1, 4096, (1 << 20) + 16):
            buf = uninitialized(size)
            self.assertEqual(len(buf), size)
            self.assertEqual((buf.format, buf.itemsize, buf.readonly), ("B", 1, False))
            buf[:] = b"\x5a" * size
            self.assertTrue(buf == b"\x5a" * size)

    def test_memory_lives_as_long_as_a_view(self) -> None:
        """A read-only view handed out (a block payload) keeps its bytes after the writable view is gone,
        however much is allocated and written afterwards."""
        buf = uninitialized(1 << 20)
        buf[:] = b"a" * (1 << 20)
        kept = buf.toreadonly()
        del buf
        gc.collect()
        for _ in range(32):
            other = uninitialized(1 << 20)
            other[:] = b"z" * (1 << 20)
        self.assertTrue(kept.readonly)
        self.assertTrue(kept == b"a" * (1 << 20))

    def test_empty_and_negative(self) -> None:
        self.assertEqual(len(uninitialized(0)), 0)
        self.assertRaises(ValueError, uninitialized, -1)
