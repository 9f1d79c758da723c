"""The ``cas`` command line client: unit tests (no node), then real subprocess runs against a fake API server.

The fake server (standard library, in a thread) implements the docs/api.md contract in memory, plus modes
that cut a download short, reset it, stall it, or answer every request with an error.
"""

from __future__ import annotations

import fcntl
import glob
import http.server
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.parse
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cas import cli
from cas.base.cid import CID
from cas.base.nodeid import format_node_id
from cas.cli import client as cli_client
from cas.cli import exits, files, output
from cas.cli import parser as cli_parser
from cas.content.capability import ReadCap

from .util_cli import CLI, assert_one_line_error, cli_env, run_cli, write_node_dir

TOKEN = "test-token-0123456789"


def make_key(seed: bytes = b"") -> str:
    return str(ReadCap(CID.of(seed + os.urandom(16)), os.urandom(32)))


# ---------------------------------------------------------------------------------------------------------
# Unit tests: no node


class ParseArgsTests(SynchronousTestCase):
    def test_put_defaults(self) -> None:
        a = cli_parser.parse_args(["put", "f.txt"])
        self.assertEqual((a.command, a.path, a.name, a.type, a.json), ("put", "f.txt", None, None, False))
        self.assertEqual((a.node, a.token_file, a.timeout, a.quiet), (None, None, cli_client.DEFAULT_TIMEOUT, False))

    def test_put_options(self) -> None:
        a = cli_parser.parse_args(["put", "-", "--name", "n", "--type", "text/plain", "--json"])
        self.assertEqual((a.path, a.name, a.type, a.json), ("-", "n", "text/plain", True))

    def test_global_options_before_or_after_the_command(self) -> None:
        before = cli_parser.parse_args(["--node", "/d", "--token-file", "/t", "--timeout", "5", "-q", "ls"])
        after = cli_parser.parse_args(["ls", "--node", "/d", "--token-file", "/t", "--timeout", "5", "-q"])
        for a in (before, after):
            self.assertEqual((a.node, a.token_file, a.timeout, a.quiet), ("/d", "/t", 5.0, True))

    def test_timeout_zero_means_none(self) -> None:
        self.assertIsNone(cli_parser.parse_args(["--timeout", "0", "status"]).timeout)

    def test_get_options(self) -> None:
        a = cli_parser.parse_args(["get", "K", "-o", "-", "--force", "--json"])
        self.assertEqual((a.key, a.output, a.force, a.json, a.key_file), ("K", "-", True, True, None))
        a = cli_parser.parse_args(["get", "--key-file", "kf"])
        self.assertEqual((a.key, a.key_file, a.output, a.force), (None, "kf", None, False))

    def test_rm_and_json_flags(self) -> None:
        self.assertTrue(cli_parser.parse_args(["peers", "--json"]).json)
        self.assertFalse(cli_parser.parse_args(["peers"]).json)
        self.assertEqual(cli_parser.parse_args(["rm", "K", "--json"]).key, "K")
        self.assertTrue(cli_parser.parse_args(["ls", "--json"]).json)
        self.assertTrue(cli_parser.parse_args(["status", "--json"]).json)

    def test_usage_errors_are_one_line_exit_2(self) -> None:
        for argv in ([], ["frob"], ["put"], ["get", "a", "b"], ["--timeout", "x", "ls"], ["ls", "--bogus"]):
            e = self.assertRaises(exits.CliError, cli_parser.parse_args, argv)
            self.assertEqual(e.code, exits.EXIT_USAGE, argv)
            self.assertNotIn("\n", str(e))

    def test_help_exits_0(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(cli.main(["--help"]), 0)
        self.assertIn("put", out.getvalue())


class ResolveNodeTests(SynchronousTestCase):
    def node_dir(self, url: str = "http://127.0.0.1:3001/", token: str = "tok") -> str:
        return write_node_dir(os.path.abspath(self.mktemp()), url, token)

    def test_dir(self) -> None:
        n = cli_client.resolve_node(self.node_dir(), None, {})
        self.assertEqual((n.url, n.host, n.port, n.base, n.token), ("http://127.0.0.1:3001/", "127.0.0.1", 3001, "/", "tok"))
        self.assertEqual(n.path("v1/status"), "/v1/status")

    def test_dir_token_file_overrides(self) -> None:
        tf = self.mktemp()
        with open(tf, "w") as f:
            f.write("  other\n")
        self.assertEqual(cli_client.resolve_node(self.node_dir(), tf, {"CAS_TOKEN": "env"}).token, "other")

    def test_dir_ignores_cas_token(self) -> None:
        self.assertEqual(cli_client.resolve_node(self.node_dir(), None, {"CAS_TOKEN": "env"}).token, "tok")

    def test_cas_node_env(self) -> None:
        d = self.node_dir("http://127.0.0.1:4001")
        n = cli_client.resolve_node(None, None, {"CAS_NODE": d})
        self.assertEqual(n.url, "http://127.0.0.1:4001/")

    def test_option_beats_env(self) -> None:
        d1, d2 = self.node_dir("http://127.0.0.1:1111/"), self.node_dir("http://127.0.0.1:2222/")
        self.assertEqual(cli_client.resolve_node(d1, None, {"CAS_NODE": d2}).port, 1111)

    def test_default_is_node_3000_under_xdg(self) -> None:
        xdg = os.path.abspath(self.mktemp())
        self.node_dir_at = write_node_dir(os.path.join(xdg, "cas", "node-3000"), "http://127.0.0.1:3001/", "t")
        self.assertEqual(cli_client.resolve_node(None, None, {"XDG_DATA_HOME": xdg}).url, "http://127.0.0.1:3001/")

    def test_default_data_dir_matches_the_node(self) -> None:
        from cas import tap

        for value in ("/xdg", None):
            old = os.environ.get("XDG_DATA_HOME")
            if value is None:
                os.environ.pop("XDG_DATA_HOME", None)
            else:
                os.environ["XDG_DATA_HOME"] = value
            try:
                self.assertEqual(cli_client.default_data_dir(3000), tap.default_data_dir(3000))
                self.assertEqual(cli_client.default_data_dir(4100), tap.default_data_dir(4100))
            finally:
                if old is None:
                    os.environ.pop("XDG_DATA_HOME", None)
                else:
                    os.environ["XDG_DATA_HOME"] = old
        self.assertEqual(cli_client.default_data_dir(3000, {"XDG_DATA_HOME": "/x"}), "/x/cas/node-3000")

    def test_url_with_env_token(self) -> None:
        n = cli_client.resolve_node("http://[::1]:3001", None, {"CAS_TOKEN": " abc\n"})
        self.assertEqual((n.url, n.host, n.port, n.token), ("http://[::1]:3001/", "::1", 3001, "abc"))

    def test_url_with_token_file(self) -> None:
        tf = self.mktemp()
        with open(tf, "w") as f:
            f.write("fromfile\n")
        n = cli_client.resolve_node("http://localhost:9/prefix", tf, {"CAS_TOKEN": "env"})
        self.assertEqual((n.token, n.path("v1/files")), ("fromfile", "/prefix/v1/files"))

    def test_url_without_token(self) -> None:
        e = self.assertRaises(exits.CliError, cli_client.resolve_node, "http://127.0.0.1:3001/", None, {})
        self.assertEqual(e.code, exits.EXIT_NODE)
        self.assertIn("--token-file", str(e))
        self.assertIn("CAS_TOKEN", str(e))

    def test_url_bad_scheme_or_port(self) -> None:
        for url in ("https://h:1/", "ftp://h/", "http://h:99999/", "http:///x", "http://h:1/?q=1"):
            e = self.assertRaises(exits.CliError, cli_client.resolve_node, url, None, {"CAS_TOKEN": "t"})
            self.assertEqual(e.code, exits.EXIT_USAGE, url)

    def test_missing_dir(self) -> None:
        e = self.assertRaises(exits.CliError, cli_client.resolve_node, os.path.abspath(self.mktemp()), None, {})
        self.assertEqual(e.code, exits.EXIT_NODE)
        self.assertIn("no node data directory", str(e))

    def test_missing_or_empty_api_url(self) -> None:
        d = self.node_dir()
        os.unlink(os.path.join(d, "api.url"))
        e = self.assertRaises(exits.CliError, cli_client.resolve_node, d, None, {})
        self.assertEqual(e.code, exits.EXIT_NODE)
        self.assertIn("is the node running?", str(e))
        with open(os.path.join(d, "api.url"), "w"):
            pass
        e = self.assertRaises(exits.CliError, cli_client.resolve_node, d, None, {})
        self.assertIn("empty", str(e))

    def test_missing_empty_or_bad_token(self) -> None:
        d = self.node_dir()
        tok = os.path.join(d, "api.token")
        os.unlink(tok)
        e = self.assertRaises(exits.CliError, cli_client.resolve_node, d, None, {})
        self.assertEqual(e.code, exits.EXIT_NODE)
        self.assertIn("api.token does not exist", str(e))
        for content in ("\n", "two words\n", "evil\r\nX-Injected: 1\n"):
            with open(tok, "w") as f:
                f.write(content)
            e = self.assertRaises(exits.CliError, cli_client.resolve_node, d, None, {})
            self.assertEqual(e.code, exits.EXIT_NODE, content)


class SafeNameTests(SynchronousTestCase):
    def test_refused(self) -> None:
        hostile = [
            None, "", ".", "..", "../x", "a/b", "/etc/passwd", "x/", "C:\\x", "..\\x", "a\x00b", "\x00",
            "\x1b[31mred", "tab\there", "new\nline", "cr\r", "del\x7f", "c1\x9b", "a\u202etxt.exe", "\u2028",
            "x" * 256, "é" * 128, "\udcff",
        ]
        for name in hostile:
            self.assertRaises(files.UnsafeName, files.safe_name, name)

    def test_accepted(self) -> None:
        for name in ("notes.txt", "€ report.txt", ".hidden", "a b", "x" * 255, "é" * 127, "...", "-dash", "日本.pdf"):
            self.assertEqual(files.safe_name(name), name)

    def test_printable_escapes_controls(self) -> None:
        self.assertEqual(output.printable("a\x1b[31m\u202eb"), "a\\x1b[31m\\u202eb")
        self.assertEqual(len(output.printable("x" * 500, 50)), 50)


class ContentDispositionTests(SynchronousTestCase):
    def check(self, header: str | None, expected: str | None) -> None:
        self.assertEqual(files.content_disposition_filename(header), expected, header)

    def test_forms(self) -> None:
        self.check("attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt", "notes.txt")
        self.check("attachment; filename*=UTF-8''%e2%82%ac.txt", "€.txt")
        self.check("attachment; filename=\"EUR.txt\"; filename*=UTF-8''%e2%82%ac.txt", "€.txt")
        self.check("attachment; filename*=UTF-8''%e2%82%ac.txt; filename=\"EUR.txt\"", "€.txt")
        self.check("attachment; filename*=utf-8'en'%e2%82%ac%20rates.txt", "€ rates.txt")
        self.check("attachment; filename*=iso-8859-1''%A3%20rates", "£ rates")
        self.check("ATTACHMENT; FILENAME=plain.txt", "plain.txt")
        self.check('attachment; filename="a \\"quoted\\" \\\\ name"', 'a "quoted" \\ name')
        self.check('attachment;filename="x;y.txt"', "x;y.txt")
        self.check('inline; filename="in.txt"', "in.txt")

    def test_bad_extended_value_falls_back(self) -> None:
        self.check("attachment; filename=\"fb.txt\"; filename*=UTF-8''%ff%fe", "fb.txt")  # not UTF-8
        self.check("attachment; filename=\"fb.txt\"; filename*=KOI8-R''%c1", "fb.txt")  # unknown charset
        self.check("attachment; filename=\"fb.txt\"; filename*=no-quotes", "fb.txt")

    def test_hostile_names_come_through_for_safe_name_to_refuse(self) -> None:
        self.check("attachment; filename*=UTF-8''..%2F..%2Fx", "../../x")
        self.check("attachment; filename*=UTF-8''a%00b", "a\x00b")
        self.check('attachment; filename="fine.txt"; filename*=UTF-8\'\'%1b%5b31m', "\x1b[31m")

    def test_no_name(self) -> None:
        for header in (None, "", "attachment", "attachment; size=3", ";;;", 'attachment; filename="unterminated'):
            self.check(header, None)


class HelpersTests(SynchronousTestCase):
    def test_guess_type(self) -> None:
        self.assertEqual(files.guess_type("a.txt"), "text/plain")
        self.assertEqual(files.guess_type("dir/a.PNG"), "image/png")
        self.assertEqual(files.guess_type("a.tar.gz"), "application/gzip")
        self.assertEqual(files.guess_type("a.no-such-extension"), "application/octet-stream")
        self.assertEqual(files.guess_type("Makefile"), "application/octet-stream")

    def test_exit_code_for_status(self) -> None:
        self.assertEqual([cli_client.exit_code_for_status(s) for s in (400, 401, 403, 404, 405, 413, 416, 500, 507)],
                         [2, 4, 4, 3, 1, 1, 1, 1, 1])

    def test_human(self) -> None:
        self.assertEqual([output.human_size(n) for n in (0, 1023, 1024, 3 << 30)], ["0 B", "1023 B", "1.0 KiB", "3.0 GiB"])
        self.assertEqual(output.human_duration(3723.5), "1h 2m 3s")
        self.assertEqual(output.human_duration(5), "5s")


class InProcessExitCodeTests(SynchronousTestCase):
    """main() in this process: the key is checked locally, before any node is looked for."""

    def run_main(self, argv: list[str], stdin: bytes = b"") -> tuple[int, str]:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        return cli.main(argv), err.getvalue()

    def test_malformed_keys_exit_2(self) -> None:
        good = make_key()
        bad_checksum = good[:-1] + ("a" if good[-1] != "a" else "b")
        unreachable = ["--node", "http://127.0.0.1:9/", "--token-file", "/nonexistent"]
        for cmd in ("get", "rm"):
            for key in ("nonsense", good[:-3], bad_checksum, good.upper(), "b" + "a" * 58):
                code, err = self.run_main(unreachable + [cmd, key])
                self.assertEqual(code, exits.EXIT_USAGE, (cmd, key))
                self.assertTrue(err.startswith("cas: ") and err.count("\n") == 1, err)
                self.assertNotIn(key, err)

    def test_malformed_key_on_stdin_exit_2(self) -> None:
        code, err = self.run_main(["--node", "http://127.0.0.1:9/", "get"], stdin=b"cas1nope\n")
        self.assertEqual(code, exits.EXIT_USAGE)
        self.assertIn("wrong length", err)

    def test_no_key(self) -> None:
        code, err = self.run_main(["get"], stdin=b"")
        self.assertEqual(code, exits.EXIT_USAGE)
        self.assertIn("no key given", err)

    def test_key_twice(self) -> None:
        code, err = self.run_main(["get", make_key(), "--key-file", "f"])
        self.assertEqual(code, exits.EXIT_USAGE)
        self.assertIn("not both", err)

    def test_json_with_stdout_output_refused(self) -> None:
        code, err = self.run_main(["get", make_key(), "-o", "-", "--json"])
        self.assertEqual(code, exits.EXIT_USAGE)


class SinkWriteBehindTests(SynchronousTestCase):
    """A download file has its write-back started as it grows, so the final fsync has little left."""

    def test_write_back_started_over_contiguous_ranges(self) -> None:
        d = self.mktemp()
        os.mkdir(d)
        sink = files.Sink.open(os.path.join(d, "out"), None, False)
        self.assertIsNotNone(sink.tmp)
        calls: list[tuple[int, int]] = []
        sink.write_behind = lambda fd, offset, length: calls.append((offset, length))
        chunk = os.urandom(1 << 20)
        total = 2 * files.WRITE_BEHIND + 3 * len(chunk)
        for _ in range(total // len(chunk)):
            sink.write(memoryview(chunk))
        sink.commit()
        self.assertEqual(calls, [(0, files.WRITE_BEHIND), (files.WRITE_BEHIND, files.WRITE_BEHIND)])
        with open(os.path.join(d, "out"), "rb") as f:
            self.assertEqual(f.read(), chunk * (total // len(chunk)))

    def test_not_for_stdout_or_devices(self) -> None:
        self.assertIsNone(files.Sink.open("-", None, False).write_behind)
        dev = files.Sink.open(os.devnull, None, False)
        self.addCleanup(dev.abort)
        self.assertIsNone(dev.write_behind)

    def test_real_call_on_linux(self) -> None:
        start = files._write_behind()
        if not sys.platform.startswith("linux"):
            self.assertIsNone(start)
            return
        assert start is not None
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x" * 100000)
            f.flush()
            self.assertEqual(start(f.fileno(), 0, 100000), 0)  # accepted, and the file is unchanged
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"x" * 100000)


class NoTwistedTests(SynchronousTestCase):
    def test_cli_does_not_import_twisted(self) -> None:
        # Nor cryptography: parsing a key must stay light (start-up time and client RSS).
        code = (
            "import sys\n"
            "import cas.cli\n"
            "assert cas.cli.main(['--node', 'http://127.0.0.1:9/', 'get', 'cas1x']) == 2\n"
            "assert cas.cli.main(['--node', 'http://127.0.0.1:9/', 'get', '-o', '-', sys.argv[1]]) == 4\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope', 'OpenSSL', 'tqdm', 'cryptography')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code, make_key()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=cli_env({"CAS_TOKEN": "t"}), timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), b"[]")


class QuickExitTests(SynchronousTestCase):
    """``python -m cas.cli`` (and the ``cas`` script, ``cli.entry``) leaves without the interpreter's
    finalization, with its output flushed and its exit code kept."""

    def run_entry(self, *argv: str) -> subprocess.CompletedProcess:
        code = ("import atexit, runpy, sys\n"
                "atexit.register(lambda: sys.stderr.write('finalized\\n'))\n"
                "runpy.run_module('cas.cli', run_name='__main__', alter_sys=True)\n")
        env = cli_env({"CAS_TOKEN": "t"})
        env.pop("PYTHONUNBUFFERED", None)  # stdout buffered, as a command in a pipeline has it
        return subprocess.run([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, timeout=60)

    def test_output_flushed_finalization_skipped(self) -> None:
        out = self.run_entry("--version")  # written by argparse into a buffered pipe, never flushed by it
        self.assertEqual((out.returncode, out.stderr), (0, b""))
        self.assertTrue(out.stdout.startswith(b"cas "), out.stdout)

    def test_exit_code_and_error_kept(self) -> None:
        out = self.run_entry("--node", "http://127.0.0.1:9/", "get", "cas1x")
        self.assertEqual(out.returncode, exits.EXIT_USAGE)
        self.assertTrue(out.stderr.startswith(b"cas: ") and out.stderr.count(b"\n") == 1, out.stderr)

    def test_the_console_script_is_entry(self) -> None:
        from importlib.metadata import entry_points

        [script] = [e for e in entry_points(group="console_scripts") if e.name == "cas"]
        self.assertEqual(script.value, "cas.cli:entry")


# ---------------------------------------------------------------------------------------------------------
# The fake API server


def content_disposition(name: str) -> str:
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: expected here
            super().handle_error(request, client_address)


class FakeNode:
    """docs/api.md in memory. Knobs: ``mode`` (truncate/reset/stall), ``fail`` (status, code, message),
    ``disposition`` (a raw Content-Disposition), ``plain_error`` (a non-JSON error body), ``peer_table`` (the
    answer to ``GET /v1/peers``, any JSON value), ``ranges`` (honour ``Range: bytes=N-`` with ``If-Range``)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.files: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.answers: list[Any] = []
        self.mode: str | None = None
        self.fail: tuple[int, str, str] | None = None
        self.plain_error: int | None = None
        self.disposition: str | None = None
        self.ranges = True
        self.drained = 0
        self.release = threading.Event()
        self.started = time.time()
        self.peer_table: Any = {"node_id": "n" * 62, "members": 0, "peers": []}
        self.replicas = (3, 3)  # (acknowledged, wanted) in the answer to a put
        self.health: Any = {}  # the answer to GET /v1/files/KEY/health
        self.pins: list[Any] = []  # the answer to GET /v1/pins
        self.pin_lowest = 3
        self.drain: Any = None  # repair.drain in the answer to GET /v1/status
        fake = self

        class Handler(FakeHandler):
            node = fake

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def add(self, data: bytes, name: str | None = None, content_type: str = "application/octet-stream") -> str:
        key = make_key(data)
        self.files[key] = {"data": data, "name": name, "content_type": content_type, "created": time.time(),
                           "blocks": max(1, -(-len(data) // (1 << 20))) + 1}
        return key

    def describe(self, key: str) -> dict[str, Any]:
        f = self.files[key]
        return {"key": key, "name": f["name"], "content_type": f["content_type"], "size": len(f["data"]),
                "blocks": f["blocks"], "created": f["created"]}


class FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    node: FakeNode

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.route("GET")

    def do_HEAD(self) -> None:
        self.route("HEAD")

    def do_POST(self) -> None:
        self.route("POST")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def do_PUT(self) -> None:
        self.route("PUT")

    def send_json(self, status: int, obj: Any, head: bool = False) -> None:
        body = json.dumps(obj).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="cas"')
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str) -> None:
        self.send_json(status, {"error": code, "message": message}, head=self.command == "HEAD")

    def reject_upload(self, status: int, code: str, message: str) -> None:
        """An answer before the body, then read and discard what the client still sends, then close."""
        self.close_connection = True
        body = json.dumps({"error": code, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(5)
        try:
            while True:
                data = self.rfile.read1(1 << 16)
                if not data:
                    break
                self.node.drained += len(data)
        except OSError:
            pass

    def read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        if self.headers.get("Content-Length") is not None:
            return self.rfile.read(int(self.headers["Content-Length"]))
        return None

    def route(self, method: str) -> None:
        node = self.node
        parts = urllib.parse.urlsplit(self.path)
        record = {"method": method, "path": parts.path, "query": urllib.parse.parse_qs(parts.query),
                  "headers": dict(self.headers.items())}
        node.requests.append(record)
        auth = self.headers.get("Authorization") or ""
        if auth != f"Bearer {node.token}":
            if method == "POST":
                return self.reject_upload(401, "unauthorized", "missing or wrong API token (see api.token in the data dir)")
            return self.error(401, "unauthorized", "missing or wrong API token (see api.token in the data dir)")
        if node.plain_error:
            body = b"<html>proxy error</html>"
            self.send_response(node.plain_error)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if node.fail:
            if method == "POST":
                return self.reject_upload(*node.fail)
            return self.error(*node.fail)
        path = parts.path
        if path == "/v1/status":
            if method != "GET":
                return self.error(405, "method_not_allowed", "use GET")
            used = sum(len(f["data"]) for f in node.files.values())
            return self.send_json(200, {"node_id": "n" * 52, "version": "0.1.0", "uptime": time.time() - node.started,
                                        "storage": {"used": used, "free": 10 << 30, "limit": None,
                                                    "quota": 1 << 30, "own": used - 1024, "held": 1024,
                                                    "awaiting_collection": 0, "quarantined": 2048},
                                        "scrub": {"position": 0.25, "checked": 7, "corrupt": 1, "recovered": 1},
                                        "files": len(node.files), "leases": {"granted": 3, "releases_pending": 1},
                                        "repair": {"queued": 2, "keys_checked": 9, "blocks_sent": 4,
                                                   "bytes_sent": 4 << 20, "topped_up": 1, "short_here": 5,
                                                   "drain": node.drain}})
        if path == "/v1/drain" and method == "POST":
            return self.send_json(202, {"draining": True, "keys_done": 0, "keys": 4, "blocks_sent": 0,
                                        "short_blocks": 0, "done": False})
        if path == "/v1/peers":
            if method != "GET":
                return self.error(405, "method_not_allowed", "use GET")
            return self.send_json(200, node.peer_table)
        if path == "/v1/files":
            if method == "POST":
                body = self.read_body()
                if body is None:
                    return self.error(400, "bad_request", "a body needs Content-Length or chunked encoding")
                record["body_size"] = len(body)
                names = record["query"].get("name")
                key = node.add(body, names[0] if names else None,
                               self.headers.get("Content-Type") or "application/octet-stream")
                d = node.describe(key)
                answer = {k: d[k] for k in ("key", "size", "blocks", "name", "content_type")}
                answer["replicas"], answer["replicas_wanted"] = node.replicas
                node.answers.append(answer)
                return self.send_json(201, answer)
            if method == "GET":
                files = sorted(node.files, key=lambda k: node.files[k]["created"])
                answer = {"files": [node.describe(k) for k in files]}
                node.answers.append(answer)
                return self.send_json(200, answer)
            return self.error(405, "method_not_allowed", "use GET or POST")
        if path == "/v1/pins":
            return self.send_json(200, {"pins": node.pins})
        m = re.fullmatch(r"/v1/pins/([^/]+)", path)
        if m:
            record["pin_of"] = m.group(1)
            if method == "POST":
                return self.send_json(201, {"root": m.group(1), "pinned": True, "local": record["query"] == {
                    "local": ["1"]}, "blocks": 6, "keys": 2, "lowest_holders": node.pin_lowest, "holders": 3})
            return self.send_json(200, {"unpinned": True, "blocks_freed": 0, "bytes_freed": 0, "local_bytes_freed": 0,
                                        "released_on": ["a", "b"], "pending": ["c"]})
        m = re.fullmatch(r"/v1/files/([^/]+)/health", path)
        if m:
            record["health_of"] = m.group(1)
            return self.send_json(200, node.health)
        m = re.fullmatch(r"/v1/files/([^/]+)", path)
        if not m:
            return self.error(404, "not_found", "no such route")
        key = m.group(1)
        try:
            ReadCap.parse(key)
        except Exception as e:
            return self.error(400, "malformed_key", str(e))
        if key not in node.files:
            return self.error(404, "not_found", "no such file on this node")
        f = node.files[key]
        if method == "DELETE":
            del node.files[key]
            answer = {"forgotten": True, "blocks_freed": f["blocks"], "bytes_freed": len(f["data"]) + 100}
            node.answers.append(answer)
            return self.send_json(200, answer)
        if method not in ("GET", "HEAD"):
            return self.error(405, "method_not_allowed", "use GET, HEAD or DELETE")
        data = f["data"]
        total = len(data)
        start = 0
        rng = self.headers.get("Range")
        if rng and node.ranges and self.headers.get("If-Range", '"broot"') == '"broot"':
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            if m and int(m.group(1)) < total:
                start = int(m.group(1))
        if start:
            data = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", f["content_type"])
        self.send_header("Content-Length", str(len(data)))
        disposition = node.disposition if node.disposition is not None else (
            content_disposition(f["name"]) if f["name"] else "attachment")
        self.send_header("Content-Disposition", disposition)
        self.send_header("ETag", '"broot"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "sandbox; default-src 'none'")
        self.send_header("Last-Modified", self.date_time_string(int(f["created"])))
        self.end_headers()
        if method == "HEAD":
            return
        if node.mode in ("truncate", "reset", "stall"):
            self.close_connection = True
            self.wfile.write(data[: len(data) // 2])
            if node.mode == "stall":
                node.release.wait(60)
            elif node.mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()  # with SO_LINGER 0: a reset, as the node does for a corrupt block
            return
        for i in range(0, len(data), 1 << 20):
            self.wfile.write(data[i: i + (1 << 20)])


# ---------------------------------------------------------------------------------------------------------
# Round trips: the CLI as a subprocess against the fake server


class RoundTripTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = FakeNode()
        self.addCleanup(self.node.stop)
        self.node_dir = write_node_dir(os.path.abspath(self.mktemp()), self.node.url, TOKEN)
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)

    def cas(self, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None,
            node_dir: str | None = "default") -> tuple[int, bytes, bytes]:
        return run_cli(list(args), self.node_dir if node_dir == "default" else node_dir, stdin, env=env, cwd=self.cwd)

    def ok(self, *args: str, stdin: bytes = b"") -> bytes:
        code, out, err = self.cas(*args, stdin=stdin)
        self.assertEqual((code, err), (0, b""), out)
        return out

    def fails(self, code: int, *args: str, stdin: bytes = b"", fragments: tuple[str, ...] = ()) -> str:
        got, out, err = self.cas(*args, stdin=stdin)
        self.assertEqual(got, code, err)
        self.assertEqual(out, b"")
        return assert_one_line_error(self, err, *fragments)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.cwd, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.cwd, name), "rb") as f:
            return f.read()

    def assert_cwd(self, names: list[str]) -> None:
        self.assertEqual(sorted(os.listdir(self.cwd)), sorted(names))

    # -- put

    def test_put_path_prints_only_the_key(self) -> None:
        path = self.write("notes.txt", b"hello\n")
        out = self.ok("put", path)
        self.assertRegex(out.decode(), r"\Acas1[a-z2-7]+\n\Z")
        key = out.decode().strip()
        ReadCap.parse(key)
        f = self.node.files[key]
        self.assertEqual((f["data"], f["name"], f["content_type"]), (b"hello\n", "notes.txt", "text/plain"))
        headers = self.node.requests[-1]["headers"]
        self.assertEqual(headers["Content-Length"], "6")
        self.assertNotIn("Transfer-Encoding", headers)

    def test_put_shell_substitution(self) -> None:
        self.write("f.bin", b"\x00\x01")
        env = cli_env()
        script = 'KEY=$("$@" put f.bin) && printf "%s" "$KEY" > key.out'
        proc = subprocess.run(["sh", "-c", script, "sh", *CLI, "--node", self.node_dir], cwd=self.cwd, env=env,
                              stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((proc.returncode, proc.stderr), (0, b""))
        key = self.read("key.out").decode()
        self.assertEqual(self.node.files[key]["data"], b"\x00\x01")

    def test_put_stdin_is_chunked_without_name(self) -> None:
        data = os.urandom((2 << 20) + 12345)
        key = self.ok("put", "-", stdin=data).decode().strip()
        f = self.node.files[key]
        self.assertEqual((f["data"], f["name"], f["content_type"]), (data, None, "application/octet-stream"))
        req = self.node.requests[-1]
        self.assertEqual(req["headers"].get("Transfer-Encoding"), "chunked")
        self.assertNotIn("Content-Length", req["headers"])
        self.assertEqual(req["query"], {})

    def test_put_pipe_path_is_chunked_without_name(self) -> None:
        fifo = os.path.join(self.cwd, "fifo")
        os.mkfifo(fifo)
        writer = subprocess.Popen(["sh", "-c", 'printf piped > "$1"', "sh", fifo])
        self.addCleanup(writer.wait)
        key = self.ok("put", fifo).decode().strip()
        self.assertEqual((self.node.files[key]["data"], self.node.files[key]["name"]), (b"piped", None))
        self.assertEqual(self.node.requests[-1]["headers"].get("Transfer-Encoding"), "chunked")

    def test_put_stdin_empty(self) -> None:
        key = self.ok("put", "-").decode().strip()
        self.assertEqual(self.node.files[key]["data"], b"")

    def test_put_name_and_type(self) -> None:
        key = self.ok("put", "-", "--name", "a b&c=€.txt", "--type", "text/x-thing; charset=utf-8",
                      stdin=b"x").decode().strip()
        f = self.node.files[key]
        self.assertEqual((f["name"], f["content_type"]), ("a b&c=€.txt", "text/x-thing; charset=utf-8"))
        path = self.write("data.json", b"{}")
        key = self.ok("put", path, "--name", "other").decode().strip()
        self.assertEqual((self.node.files[key]["name"], self.node.files[key]["content_type"]), ("other", "application/json"))

    def test_put_min_replicas(self) -> None:
        self.ok("put", "-", "--name", "r.txt", "--min-replicas", "2", stdin=b"x")
        self.assertEqual(self.node.requests[-1]["query"], {"name": ["r.txt"], "min_replicas": ["2"]})
        self.ok("put", "-", stdin=b"y")
        self.assertEqual(self.node.requests[-1]["query"], {})
        self.fails(2, "put", "-", "--min-replicas", "65", stdin=b"z", fragments=("--min-replicas",))

    SHORT = (b"cas: stored here and on 1 of 3 peers; the rest will be placed when peers are available; "
             b"see `cas status KEY`\n")

    def test_put_short_of_replicas_says_so_on_stderr(self) -> None:
        self.node.replicas = (1, 3)
        code, out, err = self.cas("put", "-", stdin=b"x")
        self.assertEqual((code, err), (0, self.SHORT))
        self.assertEqual(out.decode().strip(), self.node.answers[-1]["key"])  # stdout still holds the key only
        code, out, err = self.cas("put", "-", "--json", "--quiet", stdin=b"y")
        self.assertEqual((code, err), (0, self.SHORT))
        self.assertEqual(json.loads(out), self.node.answers[-1])
        for enough in ((3, 3), (4, 3), (0, 0)):
            self.node.replicas = enough
            self.ok("put", "-", stdin=b"z")  # nothing on stderr

    def test_put_short_of_replicas_on_a_terminal(self) -> None:
        self.node.replicas = (1, 3)
        code, out, tty = self.run_with_tty_stderr("put", "-q", self.write("t.bin", b"data"))
        self.assertEqual(code, 0)
        self.assertEqual(tty.replace(b"\r\n", b"\n"), self.SHORT)
        self.assertEqual(out.decode().strip(), self.node.answers[-1]["key"])

    def test_put_large_file_streams_exactly(self) -> None:
        data = os.urandom(3 * (1 << 20) + 1)
        key = self.ok("put", self.write("big.bin", data)).decode().strip()
        self.assertEqual(self.node.files[key]["data"], data)
        self.assertEqual(self.node.requests[-1]["headers"]["Content-Length"], str(len(data)))

    def test_put_json(self) -> None:
        out = self.ok("put", self.write("n.txt", b"abc"), "--json")
        self.assertEqual(json.loads(out), self.node.answers[-1])
        self.assertEqual(out.count(b"\n"), 1)

    def test_put_bad_type_and_missing_file(self) -> None:
        self.fails(2, "put", "-", "--type", "text/plain\r\nX: y", fragments=("--type",))
        self.fails(2, "put", os.path.join(self.cwd, "nope"), fragments=("no such file",))
        self.fails(2, "put", self.cwd, fragments=("is a directory",))
        self.assertEqual(self.node.requests, [])

    def test_put_refused_at_once_reads_the_answer(self) -> None:
        """A 401 or 507 before the body: the CLI stops sending and shows the node's message."""
        path = self.write("big.bin", os.urandom(32 << 20))
        self.node.fail = (507, "disk_full", "the disk is full")
        self.fails(1, "put", path, fragments=("the disk is full", "disk_full"))
        self.assertLess(self.node.drained, 16 << 20)
        self.node.fail = None
        self.node.drained = 0
        with open(os.path.join(self.node_dir, "api.token"), "w") as f:
            f.write("wrong\n")
        self.fails(4, "put", path, fragments=("wrong API token",))
        self.assertLess(self.node.drained, 16 << 20)

    # -- get

    def test_get_restores_the_name(self) -> None:
        key = self.node.add(b"content", "report.txt", "text/plain")
        self.assertEqual(self.ok("get", key), b"")
        self.assertEqual(self.read("report.txt"), b"content")
        self.assert_cwd(["report.txt"])
        mode = os.stat(os.path.join(self.cwd, "report.txt")).st_mode & 0o777
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(mode, 0o666 & ~umask)

    def test_get_unicode_name(self) -> None:
        key = self.node.add(b"e", "€ rates.txt")
        self.ok("get", key)
        self.assertEqual(self.read("€ rates.txt"), b"e")

    def test_get_plain_filename_parameter(self) -> None:
        key = self.node.add(b"p", "ignored")
        self.node.disposition = 'attachment; filename="plain.txt"'
        self.ok("get", key)
        self.assert_cwd(["plain.txt"])

    def test_get_to_path_and_into_directory(self) -> None:
        key = self.node.add(b"data", "orig.txt")
        self.ok("get", key, "-o", "renamed.bin")
        self.assertEqual(self.read("renamed.bin"), b"data")
        os.mkdir(os.path.join(self.cwd, "sub"))
        self.ok("get", key, "-o", "sub")
        self.assertEqual(self.read("sub/orig.txt"), b"data")

    def test_get_to_stdout(self) -> None:
        data = os.urandom((1 << 20) * 2 + 7)
        key = self.node.add(data, "x.bin")
        self.assertEqual(self.ok("get", key, "-o", "-"), data)
        self.assert_cwd([])

    def test_get_to_dev_null(self) -> None:
        key = self.node.add(b"data", "x.bin")
        self.ok("get", key, "-o", os.devnull)

    def test_get_key_from_stdin_and_key_file(self) -> None:
        key = self.node.add(b"secret", "s.txt")
        self.assertEqual(self.ok("get", "-o", "-", stdin=(key + "\nsecond line\n").encode()), b"secret")
        self.assertEqual(self.ok("get", "-", "-o", "-", stdin=key.encode()), b"secret")
        kf = self.write("keyfile", f"  {key}  \n".encode())
        self.assertEqual(self.ok("get", "--key-file", kf, "-o", "-"), b"secret")
        self.assertEqual(self.ok("get", "--key-file", "-", "-o", "-", stdin=key.encode()), b"secret")
        for req in self.node.requests:
            self.assertEqual(req["path"], "/v1/files/" + key)
        self.fails(2, "get", "--key-file", os.path.join(self.cwd, "missing"), fragments=("key file",))

    def test_get_never_overwrites_without_force(self) -> None:
        key = self.node.add(b"new", "f.txt")
        self.write("f.txt", b"old")
        self.write("out.bin", b"old")
        self.fails(2, "get", key, fragments=("already exists", "--force"))
        self.fails(2, "get", key, "-o", "out.bin", fragments=("already exists",))
        self.assertEqual((self.read("f.txt"), self.read("out.bin")), (b"old", b"old"))
        self.assert_cwd(["f.txt", "out.bin"])
        self.ok("get", key, "--force")
        self.ok("get", key, "-o", "out.bin", "-f")
        self.assertEqual((self.read("f.txt"), self.read("out.bin")), (b"new", b"new"))
        self.assert_cwd(["f.txt", "out.bin"])

    def test_symlinks_are_not_written_through(self) -> None:
        key = self.node.add(b"new", "f.txt")
        victim = self.write("victim", b"keep")
        os.symlink(victim, os.path.join(self.cwd, "f.txt"))
        os.symlink(os.path.join(self.cwd, "nowhere"), os.path.join(self.cwd, "dangling"))
        self.fails(2, "get", key, fragments=("already exists",))
        self.fails(2, "get", key, "-o", "dangling", fragments=("already exists",))
        self.ok("get", key, "--force")
        self.assertEqual(self.read("victim"), b"keep")
        self.assertFalse(os.path.islink(os.path.join(self.cwd, "f.txt")))
        self.assertEqual(self.read("f.txt"), b"new")
        self.assert_cwd(["dangling", "f.txt", "victim"])

    def test_output_directory_must_exist(self) -> None:
        key = self.node.add(b"x", "f.txt")
        self.fails(2, "get", key, "-o", "nodir/", fragments=("no such directory",))
        self.fails(1, "get", key, "-o", "nodir/file", fragments=("cannot write in",))
        self.assert_cwd([])

    def test_hostile_names_refused(self) -> None:
        parent = os.path.dirname(self.cwd)
        before = sorted(os.listdir(parent))
        for name in ["../x", "a/b", ".", "..", "a\x00b", "\x1b[31mred", "C:\\x", "x" * 300, "/etc/passwd",
                     "\u202etxt.exe", "..\\..\\x", "line\nbreak"]:
            key = self.node.add(b"evil", name)
            err = self.fails(2, "get", key, fragments=("refusing the file name", "-o PATH"))
            self.assertNotIn("\x1b", err)
            self.assert_cwd([])
            self.assertEqual(sorted(os.listdir(parent)), before)
        key = self.node.add(b"evil", "../x")
        self.ok("get", key, "-o", "chosen")  # a name the user chose is fine
        self.assertEqual(self.read("chosen"), b"evil")

    def test_hostile_extended_name_beats_benign_fallback(self) -> None:
        key = self.node.add(b"evil", "x")
        self.node.disposition = "attachment; filename=\"fine.txt\"; filename*=UTF-8''..%2F..%2Fx"
        self.fails(2, "get", key, fragments=("path separator",))
        self.assert_cwd([])

    def test_no_name_needs_output(self) -> None:
        key = self.node.add(b"anon", None)
        self.fails(2, "get", key, fragments=("has no name", "-o PATH"))
        self.ok("get", key, "-o", "anon.bin")
        self.assertEqual(self.read("anon.bin"), b"anon")

    def test_get_json(self) -> None:
        key = self.node.add(b"12345", "j.txt", "text/plain")
        out = json.loads(self.ok("get", key, "--json"))
        self.assertEqual(out, {"path": os.path.join(self.cwd, "j.txt"), "size": 5, "name": "j.txt",
                               "content_type": "text/plain"})

    def partials(self) -> list[str]:
        return sorted(n for n in os.listdir(self.cwd) if ".cas-partial-" in n)

    def test_reset_download_resumes_from_what_arrived(self) -> None:
        self.node.mode = "reset"  # what arrived before the reset depends on timing: nothing, or a part
        data = os.urandom(3 << 20)
        key = self.node.add(data, "r.bin")
        err = self.fails(1, "get", key)
        self.assertIn("download aborted", err)
        self.node.mode = None
        self.ok("get", key)
        self.assertEqual(self.read("r.bin"), data)
        self.assert_cwd(["r.bin"])

    def test_truncated_download_keeps_a_partial_and_resumes(self) -> None:
        for mode in ("truncate",):
            self.node.mode = mode
            data = os.urandom(3 << 20)
            key = self.node.add(data, f"{mode}.bin")
            err = self.fails(1, "get", key)
            self.assertRegex(err, "incomplete download|download aborted")
            self.assertIn("run the same command again to resume", err)
            [partial] = self.partials()
            self.assertTrue(partial.startswith(f".{mode}.bin.cas-partial-"))
            self.assertNotIn(key[4:20], partial)  # the name does not give the key away
            kept = os.path.getsize(os.path.join(self.cwd, partial))
            self.assertGreater(kept, 0)
            self.assertEqual(os.stat(os.path.join(self.cwd, partial)).st_mode & 0o777, 0o600)
            self.assertFalse(os.path.exists(os.path.join(self.cwd, f"{mode}.bin")))
            # Again, the node whole: only the rest is asked for (Range + If-Range), and the file is complete.
            self.node.mode = None
            before = len(self.node.requests)
            out = json.loads(self.ok("get", key, "--json"))
            self.assertEqual((out["size"], out["resumed_from"]), (len(data), kept))
            # HEAD first (the node streams nothing the resume does not need), then the rest only.
            head, req = self.node.requests[before:]
            self.assertEqual((head["method"], req["method"]), ("HEAD", "GET"))
            self.assertNotIn("Range", head["headers"])
            self.assertEqual((req["headers"]["Range"], req["headers"]["If-Range"]), (f"bytes={kept}-", '"broot"'))
            self.assertEqual(self.read(f"{mode}.bin"), data)
            self.assertEqual(self.partials(), [])

    def test_resume_falls_back_to_the_whole_file(self) -> None:
        self.node.mode = "truncate"
        data = os.urandom(2 << 20)
        key = self.node.add(data, "w.bin")
        self.fails(1, "get", key, "-o", "named.bin")
        self.assertEqual(len(self.partials()), 1)
        self.node.mode = None
        self.node.ranges = False  # answers 200 with the whole file: the partial is dropped, not appended to
        out = json.loads(self.ok("get", key, "-o", "named.bin", "--json"))
        self.assertNotIn("resumed_from", out)
        self.assertEqual(self.read("named.bin"), data)
        self.assertEqual(self.partials(), [])

    def test_partial_of_another_key_is_not_used(self) -> None:
        self.node.mode = "truncate"
        key1 = self.node.add(os.urandom(2 << 20), "same.bin")
        self.fails(1, "get", key1)
        self.node.mode = None
        data2 = os.urandom(1 << 20)
        key2 = self.node.add(data2, "same.bin")
        before = len(self.node.requests)
        out = json.loads(self.ok("get", key2, "--json"))
        self.assertNotIn("resumed_from", out)
        self.assertEqual(self.read("same.bin"), data2)
        self.assertEqual(len(self.partials()), 1)  # key1's partial is still there, untouched
        self.assertEqual([r["method"] for r in self.node.requests[before:]], ["GET"])  # no probe for key2
        # A partial file of key1 in another directory: probed (HEAD), nothing to resume there, then one GET.
        os.mkdir(os.path.join(self.cwd, "elsewhere"))
        self.node.mode = None
        before = len(self.node.requests)
        out = json.loads(self.ok("get", key1, "-o", "elsewhere", "--json"))
        self.assertNotIn("resumed_from", out)
        self.assertEqual([r["method"] for r in self.node.requests[before:]], ["GET"])
        before = len(self.node.requests)
        out = json.loads(self.ok("get", key1, "-o", "other.bin", "--json"))
        self.assertNotIn("resumed_from", out)
        self.assertEqual([r["method"] for r in self.node.requests[before:]], ["HEAD", "GET"])
        self.assertEqual(len(self.partials()), 1)

    def test_truncated_download_keeps_the_old_file(self) -> None:
        self.node.mode = "truncate"
        key = self.node.add(os.urandom(2 << 20), "t.bin")
        self.write("t.bin", b"previous")
        self.fails(1, "get", key, "--force")
        self.assertEqual(self.read("t.bin"), b"previous")
        self.assertEqual([n for n in os.listdir(self.cwd) if ".cas-partial-" not in n], ["t.bin"])

    def test_truncated_download_to_stdout_exits_1(self) -> None:
        self.node.mode = "reset"
        key = self.node.add(os.urandom(2 << 20), "t.bin")
        code, out, err = self.cas("get", key, "-o", "-")
        self.assertEqual(code, 1)
        self.assertLess(len(out), 2 << 20)
        assert_one_line_error(self, err, "incomplete")

    def interrupted(self, sig: int) -> tuple[int, bytes]:
        self.node.mode = "stall"
        key = self.node.add(os.urandom(4 << 20), "slow.bin")
        # SIGINT handled as Python does by default, even when this test runs with it ignored: a shell starts
        # background jobs (``trial cas &``) so, and a command started that way rightly keeps ignoring it. (Set in
        # the child's own code: preexec_fn is unsafe while the fake node's thread runs.)
        cli = [sys.executable, "-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('cas.cli', run_name='__main__', alter_sys=True)"]
        proc = subprocess.Popen([*cli, "--node", self.node_dir, "get", key], cwd=self.cwd, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while not glob.glob(os.path.join(self.cwd, ".slow.bin.cas-partial-*")):
            self.assertLess(time.time(), deadline, "no partial file appeared")
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(out, b"")
        return proc.returncode, err

    def test_interrupt_keeps_the_partial_file_for_a_resume(self) -> None:
        code, err = self.interrupted(signal.SIGINT)
        self.assertEqual((code, err), (130, b""))
        [partial] = self.partials()
        self.assertEqual(os.listdir(self.cwd), [partial])
        self.node.mode = None
        self.node.release.set()
        key = next(iter(self.node.files))
        out = json.loads(self.ok("get", key, "--json"))
        self.assertGreater(out["resumed_from"], 0)
        self.assertEqual(self.read("slow.bin"), self.node.files[key]["data"])
        self.assert_cwd(["slow.bin"])

    def test_sigterm_keeps_the_partial_file(self) -> None:
        code, err = self.interrupted(signal.SIGTERM)
        self.assertEqual((code, err), (143, b""))
        self.assertEqual(len(self.partials()), 1)

    def test_closed_stdout_exits_quietly(self) -> None:
        key = self.node.add(os.urandom(8 << 20), "big.bin")
        proc = subprocess.Popen([*CLI, "--node", self.node_dir, "get", key, "-o", "-"], cwd=self.cwd, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        self.assertEqual(len(proc.stdout.read(100)), 100)
        proc.stdout.close()
        err = proc.stderr.read()
        self.assertEqual((proc.wait(timeout=30), err), (141, b""))

    # -- ls, status, rm

    def test_ls(self) -> None:
        self.assertEqual(self.ok("ls"), b"")
        k1 = self.node.add(b"a" * 10, "one.txt")
        k2 = self.node.add(b"b" * 1234, None)
        k3 = self.node.add(b"", "evil\x1b[2J")
        lines = self.ok("ls").decode().splitlines()
        self.assertEqual(lines, [f"{k1}    10  one.txt", f"{k2}  1234  -", f"{k3}     0  evil\\x1b[2J"])
        self.assertEqual(json.loads(self.ok("ls", "--json")), self.node.answers[-1])

    def test_status(self) -> None:
        self.node.add(b"x" * 2048, "a")
        out = self.ok("status").decode()
        self.assertIn("node:      " + "n" * 52, out)
        self.assertIn("api:       " + self.node.url, out)
        self.assertIn("files:     1", out)
        self.assertIn("used:      2.0 KiB\n  own:     1.0 KiB this node's files and uploads\n"
                      "  held:    1.0 KiB for other nodes, under live leases\n"
                      "  to free: 0 B held for others, leases ended\n"
                      "  corrupt: 2.0 KiB quarantined copies (replaced from other nodes)\nfree:", out)
        self.assertIn("scrub:     25% through the pass, 7 block(s) checked since start, 1 corrupt (1 replaced)", out)
        self.assertIn("limit:     none\nquota:     1.0 GiB\n", out)
        self.assertIn("leases:    3 granted to other nodes here, 1 release waiting for delivery", out)
        self.assertIn("repair:    2 key(s) queued, 4 block(s) (4.0 MiB) sent to other nodes since start; 5 block(s) "
                      "of files stored here short of copies", out)
        status = json.loads(self.ok("status", "--json"))
        self.assertEqual((status["files"], status["storage"]["used"]), (1, 2048))

    ROOT = str(CID.of(b"root"))
    HEALTH = {"root": ROOT, "blocks": 3, "local_blocks": 3, "replicas_wanted": 3, "lowest_replicas": 2,
              "asked": 7, "unreachable": ["u" * 62], "checked_at": 1_800_000_000, "keys": [
                  {"kind": "manifest", "stripe": None, "cid": ROOT, "blocks": 1, "replicas": 3, "holders": [
                      {"node_id": "h1", "blocks": 1, "leased": 1, "our_lease_expires": 1_800_000_000}]},
                  {"kind": "stripe", "stripe": 0, "cid": None, "blocks": 2, "replicas": 2, "holders": [
                      {"node_id": "h2", "blocks": 2, "leased": 2, "our_lease_expires": None}]}]}

    def test_status_of_a_file(self) -> None:
        self.node.health = self.HEALTH
        key = self.node.add(b"x" * 10, "a")
        out = self.ok("status", key).decode()
        self.assertEqual(self.node.requests[-1]["health_of"], key)
        self.assertEqual(out, (
            "root:     " + self.ROOT + "\n"
            "blocks:   3 (3 on this node)\n"
            "replicas: 2 at the lowest, 3 wanted (nodes holding a block under a live lease)\n"
            "asked:    7 node(s), 1 did not answer\n"
            "manifest " + self.ROOT + ": 1 block(s), 3 replica(s) under lease\n"
            "  h1  1 of 1, 1 under lease, our lease until 2027-01-15 08:00 UTC\n"
            "stripe 0: 2 block(s), 2 replica(s) under lease\n"
            "  h2  2 of 2, 2 under lease\n"))
        self.assertEqual(json.loads(self.ok("status", "--json", "-", stdin=key.encode() + b"\n")), self.HEALTH)
        root = self.ROOT
        self.ok("status", root)
        self.assertEqual(self.node.requests[-1]["health_of"], root)
        self.fails(2, "status", "cas1nope", fragments=("wrong length",))
        self.fails(2, "status", "b" + "a" * 58, fragments=("not a root id",))

    def test_pin_unpin_pins(self) -> None:
        root = str(CID.of(b"root"))
        self.assertEqual(self.ok("pin", root), b"pinned: 6 blocks under 2 placement key(s), leases on 3 node(s), "
                                               b"3 at the lowest per key\n")
        self.assertEqual(self.node.requests[-1]["pin_of"], root)
        self.assertEqual(self.node.requests[-1]["query"], {"local": ["0"]})
        self.assertIn(b"a copy is kept on this node", self.ok("pin", "--local", root))
        self.node.pin_lowest = 0
        code, out, err = self.cas("pin", root)
        self.assertEqual(code, 0)
        self.assertIn(b"cas: no node granted a lease on some of the file's blocks", err)
        code, out, err = self.cas("unpin", root)
        self.assertEqual((code, out), (0, b"unpinned: 0 B freed here; released on 2 holder(s)\n"))
        self.assertIn(b"1 holder(s) did not answer", err)
        self.node.pins = [{"root": root, "local": True, "created": 1_800_000_000, "keys": 2, "holders": 3}]
        self.assertEqual(self.ok("pins"), f"{root}  local  2027-01-15 08:00 UTC  2  3\n".encode())
        self.assertEqual(json.loads(self.ok("pins", "--json")), {"pins": self.node.pins})

    def test_drain(self) -> None:
        self.node.drain = {"keys_done": 4, "keys": 4, "blocks_sent": 9, "short_blocks": 0, "done": True}
        self.assertEqual(self.ok("drain", "--interval", "0.01"), b"drained: 4 placement keys, 9 blocks sent\n")
        self.assertEqual([r["path"] for r in self.node.requests[-2:]], ["/v1/drain", "/v1/status"])
        self.node.drain = dict(self.node.drain, short_blocks=2)
        code, out, err = self.cas("drain", "--interval", "0.01", "--json")
        self.assertEqual((code, json.loads(out)["short_blocks"]), (1, 2))
        self.assertIn(b"2 block(s) could not reach their copies", err)

    def test_rm(self) -> None:
        k1 = self.node.add(b"x" * 5000, "a")
        self.assertEqual(self.ok("rm", k1), b"forgotten: 2 blocks, 5.0 KiB freed here\n")
        self.assertNotIn(k1, self.node.files)
        k2 = self.node.add(b"y", "b")
        self.assertEqual(json.loads(self.ok("rm", "--json", stdin=k2.encode() + b"\n")), self.node.answers[-1])
        self.assertEqual(self.node.files, {})
        self.fails(3, "rm", k1, fragments=("no such file",))

    # -- peers

    ID1, ID2 = format_node_id(bytes(range(32))), format_node_id(bytes(32))

    def peer_table(self) -> dict[str, Any]:
        now = time.time()
        return {"node_id": "n" * 62, "members": 1, "peers": [
            {"node_id": self.ID1, "state": "connected", "member": True, "addresses": ["tcp:192.0.2.1:3000", "tcp:[2001:db8::1]:3000"],
             "last_seen": now - 7200, "rtt_ms": 12.345, "software": "cas/0.1.0", "connected": True,
             "audits": {"audits_ok": 5, "audits_failed": 1, "false_reports": 0, "failing": True, "last_failure": "x"},
             "record_seq": 1, "record_expires": 2},
            {"node_id": self.ID2, "state": "new", "member": False, "addresses": [], "last_seen": None, "rtt_ms": None,
             "software": None, "connected": False, "record_seq": None, "record_expires": None},
        ]}

    @staticmethod
    def columns(line: str) -> list[int]:
        """Where the second to fifth columns start (columns are separated by two spaces or more)."""
        return [m.end() for m in re.finditer(r" {2,}", line)]

    def test_peers(self) -> None:
        self.node.peer_table = self.peer_table()
        lines = self.ok("peers").decode().splitlines()
        self.assertEqual(len(lines), 2, "one line per peer, no header: stdout is not a terminal")
        first, second = (re.split(r" {2,}", line) for line in lines)
        self.assertEqual(first[:3] + first[4:], [self.ID1, "connected", "12.3ms", "5 ok 1 failed (failing)",
                                                 "tcp:192.0.2.1:3000 tcp:[2001:db8::1]:3000"])
        self.assertRegex(first[3], r"^2h 0m \d+s ago$")
        self.assertEqual(second, [self.ID2, "new", "-", "never", "-", "-"])
        self.assertEqual(self.columns(lines[0]), self.columns(lines[1]), "aligned")
        self.assertEqual([r["path"] for r in self.node.requests], ["/v1/peers"])

    def test_peers_hostile_values_escaped(self) -> None:
        table = self.peer_table()
        table["peers"] = [{"node_id": "evil\x1b[2J", "state": "sus\npect", "addresses": ["tcp:\x1b]0;x\x07", 5],
                           "last_seen": time.time() + 3600, "rtt_ms": 0}, "not a peer", 7, None, table["peers"][1]]
        self.node.peer_table = table
        lines = self.ok("peers").decode().splitlines()
        self.assertEqual(len(lines), 2, "items that are not peers are left out")
        self.assertEqual(re.split(r" {2,}", lines[0]), ["evil\\x1b[2J", "sus\\npect", "0.0ms", "0s ago", "-",
                                                        "tcp:\\x1b]0;x\\x07 5"])
        self.assertEqual(re.split(r" {2,}", lines[1])[0], self.ID2)

    def test_peers_empty(self) -> None:
        self.assertEqual(self.ok("peers"), b"")

    def test_peers_json(self) -> None:
        self.node.peer_table = self.peer_table()
        self.assertEqual(json.loads(self.ok("peers", "--json")), self.node.peer_table)

    def test_peers_header_on_a_terminal(self) -> None:
        self.node.peer_table = self.peer_table()
        master, slave = os.openpty()
        try:
            proc = subprocess.run([*CLI, "--node", self.node_dir, "peers"], cwd=self.cwd, env=cli_env(),
                                  stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, timeout=60)
            os.close(slave)
            slave = -1
            out = b""
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: nothing more to read
                    break
                if not data:
                    break
                out += data
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)
        self.assertEqual((proc.returncode, proc.stderr), (0, b""))
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertEqual(re.split(r" {2,}", lines[0].rstrip()), ["NODE", "STATE", "RTT", "SEEN", "AUDITS", "ADDRESSES"])
        self.assertEqual(self.columns(lines[0]), self.columns(lines[1]))
        self.assertTrue(lines[1].startswith(self.ID1))

    def test_peers_malformed_answer(self) -> None:
        for answer in ({"peers": "nope"}, {"peers": None}, {"peers": {"a": 1}}, {}, [1, 2], "text", 5, None):
            self.node.peer_table = answer
            for args in (["peers"], ["peers", "--json"]):
                line = self.fails(1, *args, fragments=("peer table is not in the expected form",))
                self.assertNotIn("Traceback", line)

    def test_peers_errors(self) -> None:
        self.node.fail = (500, "internal", "internal error (see the node's log)")
        self.fails(1, "peers", fragments=("internal error",))
        self.node.fail = None
        with open(os.path.join(self.node_dir, "api.token"), "w") as f:
            f.write("wrong\n")
        self.fails(4, "peers", fragments=("wrong API token",))

    # -- errors

    def test_not_found(self) -> None:
        self.fails(3, "get", make_key(), fragments=("no such file on this node", "not_found"))
        self.assert_cwd([])

    def test_unauthorized(self) -> None:
        key = self.node.add(b"x", "x")
        with open(os.path.join(self.node_dir, "api.token"), "w") as f:
            f.write("wrong\n")
        for args in (["ls"], ["status"], ["get", key], ["rm", key]):
            self.fails(4, *args, fragments=("wrong API token",))
        self.assertIn(key, self.node.files)

    def test_server_errors(self) -> None:
        key = self.node.add(b"x", "x")
        self.node.fail = (500, "corrupt_block", "block bxyz failed verification")
        self.fails(1, "get", key, fragments=("block bxyz failed verification",))
        self.fails(1, "ls", fragments=("corrupt_block",))
        self.node.fail = (507, "disk_full", "the disk is full")
        self.fails(1, "put", "-", stdin=b"abc", fragments=("the disk is full",))
        self.node.fail = (413, "storage_limit", "over the storage limit")
        self.fails(1, "put", self.write("f", b"abc"), fragments=("over the storage limit",))
        self.node.fail = (400, "malformed_key", "bad key")
        self.fails(2, "get", key, fragments=("bad key",))
        self.node.fail = None
        self.node.plain_error = 502
        self.fails(1, "status", fragments=("HTTP 502",))
        self.assert_cwd(["f"])

    def test_malformed_key_never_reaches_the_node(self) -> None:
        self.fails(2, "get", "cas1notakey", fragments=("wrong length",))
        self.fails(2, "rm", stdin=b"hello\n", fragments=("not a cas key",))
        self.assertEqual(self.node.requests, [])

    def test_node_not_running(self) -> None:
        stopped = FakeNode()
        stopped.stop()
        write_node_dir(self.node_dir, stopped.url, TOKEN)
        for args in (["ls"], ["status"], ["get", make_key()], ["put", "-"]):
            self.fails(4, *args, fragments=(f"cannot reach the node at {stopped.url}", "is it running?"))

    def test_missing_node_dir_and_api_url(self) -> None:
        code, out, err = self.cas("status", node_dir=None)  # default: $XDG_DATA_HOME/cas/node-3000, absent
        self.assertEqual(code, 4)
        assert_one_line_error(self, err, "no node data directory", "node-3000")
        os.unlink(os.path.join(self.node_dir, "api.url"))
        self.fails(4, "status", fragments=("api.url does not exist", "is the node running?"))

    def test_node_url_with_token_from_env_or_file(self) -> None:
        code, out, err = self.cas("status", "--json", node_dir=self.node.url, env={"CAS_TOKEN": TOKEN})
        self.assertEqual((code, err), (0, b""))
        tf = self.write("tok", TOKEN.encode() + b"\n")
        code, out, err = self.cas("--token-file", tf, "ls", node_dir=self.node.url)
        self.assertEqual((code, err), (0, b""))
        code, out, err = self.cas("ls", node_dir=self.node.url)
        self.assertEqual(code, 4)
        assert_one_line_error(self, err, "no API token")
        code, out, err = self.cas("ls", env={"CAS_NODE": self.node.url, "CAS_TOKEN": TOKEN}, node_dir=None)
        self.assertEqual((code, err), (0, b""))

    # -- the whole loop, memory, progress

    def test_put_get_rm_loop(self) -> None:
        data = os.urandom((1 << 20) + 3)
        path = self.write("loop.bin", data)
        key = self.ok("put", path).decode().strip()
        os.unlink(path)
        self.ok("get", key)
        self.assertEqual(self.read("loop.bin"), data)
        self.ok("rm", key)
        self.fails(3, "get", key, "-o", "-")

    def test_constant_memory(self) -> None:
        """64 MiB through put and get: the client's peak RSS stays under 60 MiB."""
        if not os.path.exists("/proc/self/status"):
            raise SkipTest("needs Linux /proc to read the peak RSS")
        size = 64 << 20
        path = os.path.join(self.cwd, "big.bin")
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        # VmHWM, not getrusage: ru_maxrss survives exec and would report this (big) test process's peak.
        wrapper = ("import re, sys\nfrom cas.cli import main\ncode = main(sys.argv[1:])\n"
                   "hwm = re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
                   "sys.stderr.write('MAXRSS %s\\n' % hwm)\nsys.exit(code)\n")

        def measure(*args: str) -> tuple[bytes, int]:
            proc = subprocess.run([sys.executable, "-c", wrapper, "--node", self.node_dir, *args], cwd=self.cwd,
                                  env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            m = re.fullmatch(rb"MAXRSS (\d+)\n", proc.stderr)
            assert m is not None, proc.stderr
            return proc.stdout, int(m.group(1)) * 1024  # kB

        out, rss = measure("put", path)
        self.assertLess(rss, 60 << 20)
        key = out.decode().strip()
        self.assertEqual(len(self.node.files[key]["data"]), size)
        out, rss = measure("get", key, "-o", "copy.bin")
        self.assertLess(rss, 60 << 20)
        self.assertEqual(os.path.getsize(os.path.join(self.cwd, "copy.bin")), size)

    def run_with_tty_stderr(self, *args: str) -> tuple[int, bytes, bytes]:
        """Run the CLI with stderr on a pseudo-terminal (100 columns); returns (code, stdout, terminal output)."""
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        chunks: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO once the last writer closed the terminal
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            proc = subprocess.run([*CLI, "--node", self.node_dir, *args], cwd=self.cwd, env=cli_env(),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, timeout=60)
        finally:
            os.close(slave)
            reader.join(10)
            os.close(master)
        return proc.returncode, proc.stdout, b"".join(chunks)

    def test_progress_only_on_a_terminal(self) -> None:
        path = self.write("p.bin", os.urandom(3 << 20))
        code, out, tty = self.run_with_tty_stderr("put", path)
        self.assertEqual(code, 0)
        self.assertRegex(out.decode(), r"\Acas1[a-z2-7]+\n\Z")  # the bar never reaches stdout
        self.assertIn(b"B/s", tty)
        self.assertIn(b"p.bin", tty)
        key = out.decode().strip()
        code, out, tty = self.run_with_tty_stderr("get", key, "-o", "-")
        self.assertEqual((code, len(out)), (0, 3 << 20))
        self.assertIn(b"B/s", tty)
        code, out, tty = self.run_with_tty_stderr("put", path, "-q")
        self.assertEqual((code, tty), (0, b""))
        code, out, err = self.cas("put", path)  # stderr a pipe: no bar
        self.assertEqual((code, err), (0, b""))
