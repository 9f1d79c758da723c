"""Options, data dir initialisation, identity and the API's token check, in process."""

from __future__ import annotations

import datetime
import json
import os
import stat

from cryptography.hazmat.primitives import serialization
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from twisted.web.resource import getChildForRequest

from cas import tap
from cas.api import make_site
from cas.cid import digest
from cas.datadir import prepare
from cas.errors import DataDirError
from cas.identity import format_node_id, load_or_create, make_certificate

from .util import make_node


def parse(*argv: str) -> tap.Options:
    o = tap.Options()
    o.parseOptions(list(argv))
    return o


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        old = os.environ.get("XDG_DATA_HOME")
        os.environ["XDG_DATA_HOME"] = "/xdg"
        self.addCleanup(lambda: os.environ.__setitem__("XDG_DATA_HOME", old) if old is not None else os.environ.pop("XDG_DATA_HOME"))

    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual((o["port"], o["api"], o["data-dir"]), ("tcp:3000", "tcp:3001:interface=127.0.0.1", "/xdg/cas/node-3000"))
        self.assertIsNone(o["storage-limit"])

    def test_bare_port(self) -> None:
        o = parse("--port", "4100")
        self.assertEqual((o["port"], o["api"], o["data-dir"]), ("tcp:4100", "tcp:4101:interface=127.0.0.1", "/xdg/cas/node-4100"))

    def test_port_zero(self) -> None:
        o = parse("--port", "0", "--data-dir", "/d")
        self.assertEqual((o["port"], o["api"], o["data-dir"]), ("tcp:0", "tcp:0:interface=127.0.0.1", "/d"))

    def test_explicit(self) -> None:
        o = parse("--port", "tcp:5000:interface=127.0.0.1", "--api", "unix:/tmp/x.sock", "--data-dir", "/d")
        self.assertEqual((o["port"], o["api"]), ("tcp:5000:interface=127.0.0.1", "unix:/tmp/x.sock"))

    def test_endpoint_needs_api_and_dir(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "--port", "tcp6:3000")
        self.assertIn("--api and --data-dir are required", str(e))
        self.assertRaises(usage.UsageError, parse, "--port", "tcp6:3000", "--api", "tcp:1")

    def test_bad_endpoint(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "--port", "nonsense:1", "--api", "tcp:1", "--data-dir", "/d")
        self.assertIn("not a valid endpoint", str(e))
        self.assertRaises(usage.UsageError, parse, "--port", "70000")

    def test_sizes(self) -> None:
        for text, n in [("1048576", 1 << 20), ("500M", 500 << 20), ("1.5G", 3 << 29), ("10GB", 10**10), ("2TiB", 2 << 40), ("4k", 4096)]:
            self.assertEqual(tap.parse_size(text), n, text)
            self.assertEqual(parse("--storage-limit", text)["storage-limit"], n)
        for bad in ("", "abc", "10X", "-5", "1e9"):
            self.assertRaises(usage.UsageError, tap.parse_size, bad)


class DataDirTests(SynchronousTestCase):
    def test_first_start(self) -> None:
        path = self.mktemp()
        d = prepare(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        for name in ("node.key", "node.crt", "api.token"):
            self.assertEqual(stat.S_IMODE(os.stat(d.join(name)).st_mode), 0o600, name)
        with open(d.join("format-version")) as f:
            self.assertEqual(f.read(), "1\n")
        self.assertGreaterEqual(len(d.read_token()), 40)

    def test_restart_keeps_identity_and_token(self) -> None:
        path = self.mktemp()
        a = prepare(path)
        id1, tok1 = str(a.identity()), a.read_token()
        b = prepare(path)
        self.assertEqual((str(b.identity()), b.read_token()), (id1, tok1))

    def test_unknown_version(self) -> None:
        path = self.mktemp()
        prepare(path)
        with open(os.path.join(path, "format-version"), "w") as f:
            f.write("7\n")
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertIn("format version '7'", str(e))

    def test_foreign_directory(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "thesis.tex"), "w") as f:
            f.write("x")
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertIn("not a cas data dir", str(e))

    def test_not_a_directory(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        self.assertRaises(DataDirError, prepare, path)
        e = self.assertRaises(DataDirError, prepare, os.path.join(path, "sub"))
        self.assertIn("cannot create data dir", str(e))

    def test_make_service_reports_one_line(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        o = parse("--port", "0", "--data-dir", path)
        e = self.assertRaises(SystemExit, tap.makeService, o)
        self.assertTrue(str(e.code).startswith("cas: "))
        self.assertNotIn("\n", str(e.code))


class IdentityTests(SynchronousTestCase):
    def test_node_id_is_hash_of_spki(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        ident = load_or_create(os.path.join(path, "k"), os.path.join(path, "c"))
        spki = ident.certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual(ident.node_id, digest(spki))
        self.assertEqual(str(ident), format_node_id(digest(spki)))

    def test_expired_certificate_renewed_same_id(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        k, c = os.path.join(path, "k"), os.path.join(path, "c")
        ident = load_or_create(k, c)
        old = make_certificate(ident.key, now=datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
        with open(c, "wb") as f:
            f.write(old.public_bytes(serialization.Encoding.PEM))
        again = load_or_create(k, c)
        self.assertEqual(again.node_id, ident.node_id)
        self.assertNotEqual(again.certificate.serial_number, old.serial_number)
        self.assertGreater(again.certificate.not_valid_after_utc, datetime.datetime.now(datetime.timezone.utc))


class ApiTokenTests(SynchronousTestCase):
    def render(self, site, path: bytes, auth: str | None):
        req = DummyRequest(path.strip(b"/").split(b"/"))
        if auth is not None:
            req.requestHeaders.setRawHeaders(b"authorization", [auth])
        res = getChildForRequest(site.resource, req)
        body = res.render(req)
        return req.responseCode or 200, json.loads(body)

    def test_status_needs_token(self) -> None:
        node = make_node(self)
        token = node.datadir.read_token()
        site = make_site(node, token)
        code, body = self.render(site, b"/v1/status", f"Bearer {token}")
        self.assertEqual(code, 200)
        self.assertEqual(body["node_id"], node.node_id)
        self.assertEqual(body["storage"]["used"], 0)
        for auth in (None, "Bearer wrong", f"Basic {token}", f"Bearer {token}x", ""):
            code, body = self.render(site, b"/v1/status", auth)
            self.assertEqual((code, body["error"]), (401, "unauthorized"), auth)
        code, body = self.render(site, b"/v1/nothing", f"Bearer {token}")
        self.assertEqual((code, body["error"]), (404, "not_found"))
