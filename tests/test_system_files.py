"""Four real ``twistd -n cas`` processes store a 1 GiB file with the CLI; the origin is killed; another node
returns the file with ``cas get``, byte for byte (SHA-256). ``CAS_BIG_TESTS=1`` makes it 5 GiB.

Only operator interfaces are used: twistd options, ``cas put``/``cas get``/``cas peers`` against each node's
data dir, ``kill -9``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from .test_system_peers import CLI, NodeProcess, eventually

GiB = 1 << 30
CHUNK = 8 << 20


def make_file(path: str, size: int) -> str:
    """``size`` random bytes (AES-CTR keystream: fast, incompressible); returns their SHA-256."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    h = hashlib.sha256()
    zeros = bytes(CHUNK)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            block = enc.update(zeros[:n])
            h.update(block)
            f.write(block)
            left -= n
    return h.hexdigest()


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cli(node: NodeProcess, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(CLI + ["--node", node.data_dir, *args], capture_output=True, text=True, timeout=timeout,
                         check=False)
    if out.returncode != 0:
        raise AssertionError(f"cas {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out


class FourNodesStoreAFile(SynchronousTestCase):
    def start(self, name: str, bootstrap: list[str]) -> NodeProcess:
        n = NodeProcess(os.path.join(self.base, name), bootstrap)
        self.addCleanup(n.stop)
        return n

    def test_put_kill_origin_get_elsewhere(self) -> None:
        size = 5 * GiB if os.environ.get("CAS_BIG_TESTS") == "1" else GiB
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        # Registered first, so it runs last (after every node stopped): 5 GiB of stores and copies otherwise stay
        # in _trial_temp after the run.
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        nodes = [self.start("n0", [])]
        for i in range(1, 4):
            nodes.append(self.start(f"n{i}", [f"{nodes[0].node_id}@127.0.0.1:{nodes[0].port}"]))
        ids = {n.node_id for n in nodes}
        eventually(lambda: all({k for k, p in n.peers().items() if p["member"]} == ids - {n.node_id} for n in nodes),
                   "full membership")

        source = os.path.join(self.base, "source.bin")
        digest = make_file(source, size)
        t0 = time.monotonic()
        put = json.loads(cli(nodes[0], "put", "--quiet", "--json", "--min-replicas", "3", source).stdout)
        t_put = time.monotonic() - t0
        self.assertEqual(put["replicas"], 3)
        self.assertEqual(put["size"], size)
        key = put["key"]
        os.unlink(source)  # disk space: the input is not needed any more

        origin = nodes[0]
        origin.kill()  # kill -9: the only node whose index knows the file
        reader = nodes[2]
        out = os.path.join(self.base, "out.bin")
        t0 = time.monotonic()
        cli(reader, "get", "--quiet", "-o", out, key)
        t_get = time.monotonic() - t0
        self.assertEqual(os.path.getsize(out), size)
        self.assertEqual(sha256_of(out), digest)
        for n in nodes[1:]:
            self.assertNotIn("Traceback", n.output())
        mib = size / (1 << 20)
        print(f"\n{mib:.0f} MiB: put {t_put:.1f} s ({mib / t_put:.0f} MiB/s), get after killing the origin "
              f"{t_get:.1f} s ({mib / t_get:.0f} MiB/s)")
