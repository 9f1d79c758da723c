"""The ``cas`` CLI against a real node on 127.0.0.1: the node runs in this process on the reactor, the CLI
is a real subprocess (run from a thread so the reactor keeps serving)."""

from __future__ import annotations

import hashlib
import json
import os
import random

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cas.base.errors import CorruptBlock
from cas.content.capability import ReadCap
from cas.node.core import Node
from cas.service import NodeService
from cas.store.datadir import prepare

from .util_cli import run_cli


class CliAgainstNode(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.node = Node(prepare(self.dir), reactor, storage_limit=64 << 20)
        self.service = NodeService(self.node, reactor, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
        self.service.startService()
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    def tearDown(self):  # type: ignore[no-untyped-def]
        return self.service.stopService()

    def cas(self, *args: str, stdin: bytes = b"", cwd: str | None = None):  # type: ignore[no-untyped-def]
        return deferToThread(run_cli, list(args), self.dir, stdin, cwd=cwd or self.work)

    async def test_put_get_round_trip(self) -> None:
        data = random.Random(7).randbytes(3 * (1 << 20) + 12345)
        src = os.path.join(self.work, "report.bin")
        with open(src, "wb") as f:
            f.write(data)
        code, out, err = await self.cas("put", src)
        self.assertEqual(code, 0, err)
        key = out.decode()
        self.assertRegex(key, r"^cas1[a-z2-7]+\n$", "stdout is the key alone")
        key = key.strip()
        out_dir = os.path.join(self.work, "out")
        os.makedirs(out_dir)
        code, out, err = await self.cas("get", key, cwd=out_dir)
        self.assertEqual(code, 0, err)
        with open(os.path.join(out_dir, "report.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
        # never overwrite without --force
        code, out, err = await self.cas("get", key, cwd=out_dir)
        self.assertEqual(code, 2)
        self.assertIn(b"--force", err)
        code, _, err = await self.cas("get", "--force", key, cwd=out_dir)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(os.listdir(out_dir)), ["report.bin"], "no partial files left behind")

    async def test_stdin_stdout_and_key_from_stdin(self) -> None:
        data = b"piped bytes\n" * 1000
        code, out, err = await self.cas("put", "-", "--name", "notes.txt", stdin=data)
        self.assertEqual(code, 0, err)
        key = out.strip()
        code, out, err = await self.cas("get", "-o", "-", stdin=key + b"\n")
        self.assertEqual((code, out), (0, data), err)
        keyfile = os.path.join(self.work, "k")
        with open(keyfile, "wb") as f:
            f.write(key + b"\n")
        code, out, err = await self.cas("get", "--key-file", keyfile, "-o", os.path.join(self.work, "copy.txt"))
        self.assertEqual(code, 0, err)
        with open(os.path.join(self.work, "copy.txt"), "rb") as f:
            self.assertEqual(f.read(), data)

    async def test_ls_status_rm_json(self) -> None:
        code, out, err = await self.cas("put", "-", "--name", "a.txt", "--json", stdin=b"abc")
        self.assertEqual(code, 0, err)
        put = json.loads(out)
        self.assertEqual((put["size"], put["name"]), (3, "a.txt"))
        code, out, _ = await self.cas("ls", "--json")
        self.assertEqual([f["key"] for f in json.loads(out)["files"]], [put["key"]])
        code, out, _ = await self.cas("ls")
        self.assertIn(b"a.txt", out)
        code, out, _ = await self.cas("status", "--json")
        self.assertEqual(json.loads(out)["node_id"], self.node.node_id)
        code, out, err = await self.cas("rm", put["key"], "--json")
        self.assertEqual(code, 0, err)
        self.assertTrue(json.loads(out)["forgotten"])
        code, out, err = await self.cas("get", put["key"], "-o", "-")
        self.assertEqual(code, 3, "not found")
        self.assertTrue(err.startswith(b"cas: ") and err.count(b"\n") == 1, err)
        code, out, err = await self.cas("rm", put["key"])
        self.assertEqual(code, 3)

    async def test_errors_and_exit_codes(self) -> None:
        code, _, err = await self.cas("get", "cas1notakey", "-o", "-")
        self.assertEqual(code, 2)
        self.assertTrue(err.startswith(b"cas: "))
        big = os.path.join(self.work, "big")
        with open(big, "wb") as f:
            f.truncate(100 << 20)  # sparse; over the 64 MiB limit
        code, _, err = await self.cas("put", big)
        self.assertEqual(code, 1)
        self.assertIn(b"storage limit", err)
        with open(os.path.join(self.dir, "api.token"), "w") as f:
            f.write("wrong-token\n")
        code, _, err = await self.cas("status")
        self.assertEqual(code, 4)
        self.assertNotIn(b"Traceback", err)

    async def test_put_resume_continues_where_the_node_stands(self) -> None:
        data = random.Random(9).randbytes(40 << 20)  # 40 MiB, past the 16 MiB limit set below
        src = os.path.join(self.work, "resumable.bin")
        with open(src, "wb") as f:
            f.write(data)
        self.node.store.limit = 16 << 20
        code, out, err = await self.cas("put", "--resume", src)
        self.assertEqual(code, 1, err)
        self.assertIn(b"run the same command again", err)
        [session] = self.node.index.db.execute("SELECT id, blocks FROM sessions").fetchall()
        self.assertGreater(session[1], 0)  # what was stored before the limit counts
        self.node.store.limit = None
        code, out, err = await self.cas("put", "--resume", "--json", src)
        self.assertEqual(code, 0, err)
        answer = json.loads(out)
        self.assertEqual((answer["size"], answer["name"]), (len(data), "resumable.bin"))
        self.assertEqual(self.node.index.db.execute("SELECT count(*) FROM sessions").fetchone()[0], 0)
        out_dir = os.path.join(self.work, "back")
        os.makedirs(out_dir)
        code, _, err = await self.cas("get", answer["key"], cwd=out_dir)
        self.assertEqual(code, 0, err)
        with open(os.path.join(out_dir, "resumable.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
        code, _, err = await self.cas("put", "--resume", "-", stdin=b"x")
        self.assertEqual(code, 2)
        self.assertIn(b"regular file", err)

    async def test_corrupt_download_leaves_no_file(self) -> None:
        data = random.Random(8).randbytes(3 << 20)
        code, out, err = await self.cas("put", "-", "--name", "victim.bin", stdin=data)
        key = out.strip().decode()
        f = await self.node.open(ReadCap.parse(key))
        with open(self.node.store._path(f.root.links[2].cid), "r+b") as fh:
            fh.write(b"\0" * 16)
        out_dir = os.path.join(self.work, "dl")
        os.makedirs(out_dir)
        code, _, err = await self.cas("get", key, cwd=out_dir)
        self.assertEqual(code, 1, err)
        # Nothing that looks like a complete file (what arrived may be kept in a hidden partial file to resume).
        self.assertEqual([n for n in os.listdir(out_dir) if ".cas-partial-" not in n], [])
        self.assertEqual(len(self.flushLoggedErrors(CorruptBlock)), 1)
