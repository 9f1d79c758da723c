"""``pip install .`` as a user does it: a wheel built from the checkout, installed (not editable) into a fresh
venv, then ``twistd cas --help``, ``cas --help`` and ``python -m cas.cli --help`` from that venv, and every
module of the source tree imported from it. The editable install the suite runs under finds any file of the
checkout, so a package missing from ``setup.cfg`` would pass every other test and break ``pip install .``.

The fresh venv takes its dependencies from PyPI (or pip's cache), as a user's does.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from cas.test.layers import modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str], cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


class WheelInstall(SynchronousTestCase):
    def test_wheel_in_a_fresh_venv_runs_every_entry_point(self) -> None:
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)  # a venv: 100 MiB
        dist = os.path.join(work, "dist")
        # Built from a copy of the tracked files: a build in the checkout would leave build/ behind.
        src = os.path.join(work, "src")
        os.makedirs(src)
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, stdout=subprocess.PIPE, check=True).stdout
        archive = subprocess.run(["tar", "-c", "--null", "-T", "-"], cwd=ROOT, input=listed,
                                 stdout=subprocess.PIPE, check=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
        built = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, src], work)
        self.assertEqual(built.returncode, 0, built.stdout)
        wheels = glob.glob(os.path.join(dist, "*.whl"))
        self.assertEqual(len(wheels), 1, wheels)

        venv = os.path.join(work, "venv")
        made = run([sys.executable, "-m", "venv", venv], work)
        self.assertEqual(made.returncode, 0, made.stdout)
        bin_ = os.path.join(venv, "bin")
        installed = run([os.path.join(bin_, "python"), "-m", "pip", "install", "--quiet", wheels[0]], work)
        self.assertEqual(installed.returncode, 0, installed.stdout)

        # From an empty folder, so nothing of the checkout is on sys.path.
        here = os.path.join(work, "elsewhere")
        os.makedirs(here)
        py = os.path.join(bin_, "python")
        where = run([py, "-c", "import cas; print(cas.__file__)"], here)
        self.assertTrue(where.stdout.strip().startswith(venv), where.stdout)

        twistd = run([os.path.join(bin_, "twistd"), "cas", "--help"], here)
        self.assertEqual(twistd.returncode, 0, twistd.stdout)
        self.assertIn("--data-dir", twistd.stdout)
        for cmd in ([os.path.join(bin_, "cas"), "--help"], [py, "-m", "cas.cli", "--help"]):
            out = run(cmd, here)
            self.assertEqual(out.returncode, 0, out.stdout)
            self.assertIn("Store and fetch files on a cas node", out.stdout)

        # Every module of the source tree imports from the installed wheel (the tests' need the test extras; a
        # __main__ would run its program).
        names = sorted(n for n in modules(ROOT) if not n.startswith("cas.test.") and not n.endswith(".__main__"))
        self.assertIn("cas.node.core", names)
        imported = run([py, "-c", "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module(n)",
                        *names], here)
        self.assertEqual(imported.returncode, 0, imported.stdout)


class DependencyFloors(SynchronousTestCase):
    def test_psutil_floor_lists_interfaces(self) -> None:
        """``psutil >= 5.9.4`` in setup.cfg: that release (the oldest with a wheel for every CPython 3) is enough
        for ``cas.peer.interfaces``."""
        work = os.path.abspath(self.mktemp())
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        target = os.path.join(work, "site")
        got = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
                   "psutil==5.9.4"], ROOT)
        self.assertEqual(got.returncode, 0, got.stdout)
        code = ("import psutil, sys\n"
                "assert psutil.__version__ == '5.9.4', psutil.__version__\n"
                "from cas.peer.interfaces import candidates, list_interfaces\n"
                "found = list_interfaces()\n"
                "assert any('127.0.0.1' in a for a in found.values()), found\n"
                "print(candidates('0.0.0.0', 3000, {'lo': ['127.0.0.1']}))\n")
        env = {**os.environ, "PYTHONPATH": target + os.pathsep + ROOT}
        out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stdout)
        self.assertIn("127.0.0.1", out.stdout)
