"""The allocator tuning a node process applies at start (cas/base/malloc.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from cas.base import malloc


class TuneTests(SynchronousTestCase):
    def test_applies_on_glibc_only(self) -> None:
        # In a child process, so that this test process keeps its own settings.
        out = subprocess.run([sys.executable, "-c", "from cas.base.malloc import tune; print(tune())"],
                             capture_output=True, text=True, timeout=60, check=True)
        glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
        self.assertEqual(out.stdout.strip(), str(glibc))

    def test_settings_fit_a_block(self) -> None:
        # A block (1 MiB + 16) must stay below the mmap threshold, or the tuning does nothing for it.
        self.assertGreater(malloc.MMAP_THRESHOLD, (1 << 20) + 64)
        self.assertGreaterEqual(malloc.TRIM_THRESHOLD, malloc.MMAP_THRESHOLD)

    def test_node_service_tunes_its_process(self) -> None:
        code = (
            "import cas.base.malloc, cas.tap\n"
            "calls = []\n"
            "cas.tap.tune_allocator = lambda: calls.append(1) or True\n"
            "o = cas.tap.Options(); o.parseOptions(['--port', '0', '--data-dir', sys.argv[1]])\n"
            "cas.tap.makeService(o)\n"
            "print(len(calls))\n"
        )
        out = subprocess.run([sys.executable, "-c", "import sys\n" + code, self.mktemp()],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "1")
