"""Options, data dir initialisation, identity and the API's token check, in process."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sqlite3
import stat
import time

from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from cas import tap
from cas.api import make_site
from cas.base.cid import CID, digest
from cas.base.errors import DataDirError
from cas.base.identity import format_node_id, load_or_create, make_certificate
from cas.base.nodeid import ALPHABET
from cas.content.capability import ReadCap
from cas.node.core import Node
from cas.peer.peers import Bootstrap
from cas.peer.records import Address
from cas.store import datadir
from cas.store.datadir import prepare
from cas.store.leases import LEASE_TIME, legacy_key

from .util import Collector, make_node, sync_run


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

    def test_replication_options(self) -> None:
        opts = parse()
        self.assertEqual((opts["replicas"], opts["quota"], opts["buffer-budget"]), (3, None, 16 << 20))
        opts = parse("--replicas", "2", "--quota", "10G", "--buffer-budget", "256M")
        self.assertEqual((opts["replicas"], opts["quota"], opts["buffer-budget"]), (2, 10 << 30, 256 << 20))
        for bad in (["--replicas", "17"], ["--replicas", "-1"], ["--buffer-budget", "1M"], ["--quota", "lots"]):
            self.assertRaises(usage.UsageError, parse, *bad)


    def test_lease_options(self) -> None:
        opts = parse()
        self.assertEqual((opts["lease-time"], opts["max-lease-time"]), (31 * 86400, 62 * 86400))
        opts = parse("--lease-time", "12h", "--max-lease-time", "90m")
        self.assertEqual((opts["lease-time"], opts["max-lease-time"]), (12 * 3600, 90 * 60))
        for text, n in [("45", 45), ("45s", 45), ("2m", 120), ("1.5h", 5400), ("31d", 31 * 86400)]:
            self.assertEqual(tap.parse_duration(text), n, text)
        for bad in ("", "0", "0.5", "-1", "3w", "d"):
            self.assertRaises(usage.UsageError, tap.parse_duration, bad)

    def test_repair_options(self) -> None:
        opts = parse()
        self.assertEqual((opts["repair-after"], opts["repair-rate"]), (600, 20 << 20))
        opts = parse("--repair-after", "5", "--repair-rate", "1M")
        self.assertEqual((opts["repair-after"], opts["repair-rate"]), (5, 1 << 20))
        for bad in (["--repair-after", "0"], ["--repair-rate", "1K"], ["--repair-rate", "fast"]):
            self.assertRaises(usage.UsageError, parse, *bad)

    def test_scrub_interval(self) -> None:
        self.assertEqual(parse()["scrub-interval"], 7 * 86400)
        self.assertEqual(parse("--scrub-interval", "12h")["scrub-interval"], 12 * 3600)
        self.assertRaises(usage.UsageError, parse, "--scrub-interval", "0")
        opts = parse("--scrub-interval", "1d", "--data-dir", self.mktemp(), "--port", "tcp:0:interface=127.0.0.1",
                     "--api", "tcp:0:interface=127.0.0.1")
        svc = tap.makeService(opts, Clock())
        self.addCleanup(svc.node.stop)
        self.assertEqual(svc.node.scrubber.interval, 86400)

    def test_dead_after_reaches_the_peer_layer(self) -> None:
        self.assertEqual(parse()["dead-after"], 30)
        for bad in ("0", "0.5", "soon"):
            self.assertRaises(usage.UsageError, parse, "--dead-after", bad)
        opts = parse("--dead-after", "5", "--data-dir", self.mktemp(), "--port", "tcp:0:interface=127.0.0.1",
                     "--api", "tcp:0:interface=127.0.0.1")
        svc = tap.makeService(opts, Clock())
        self.addCleanup(svc.node.stop)
        self.assertEqual(svc.peers.settings.dead_after, 5)


class PeerOptionsTests(SynchronousTestCase):
    """--bootstrap, --advertise and --gossip-interval."""

    NODE = bytes(range(32))
    HUMAN = format_node_id(NODE)  # aaaqea-yeauda-...

    def peer(self, *argv: str) -> tap.Options:
        return parse("--port", "0", "--data-dir", "/d", *argv)

    def refused(self, *argv: str) -> str:
        e = self.assertRaises(usage.UsageError, self.peer, *argv)
        self.assertNotIn("\n", str(e))
        return str(e)

    def test_defaults(self) -> None:
        o = self.peer()
        self.assertEqual((o["bootstrap"], o["advertise"]), ([], []))
        self.assertEqual(o["gossip-interval"], 5.0)
        self.assertIsInstance(o["gossip-interval"], float)

    def test_options_are_not_shared(self) -> None:
        self.peer("--bootstrap", "192.0.2.1:3000", "--advertise", "192.0.2.1:3000")
        o = self.peer()
        self.assertEqual((o["bootstrap"], o["advertise"]), ([], []))

    def test_bootstrap_repeatable(self) -> None:
        o = self.peer(
            "--bootstrap", f"{self.HUMAN}@192.0.2.1:3000",
            "--bootstrap", "192.0.2.2:3001",
            "--bootstrap", "[::1]:3000",
            "--bootstrap", f"{self.HUMAN}@[2001:DB8:0::1]:4000",
            "--bootstrap", "seed-1.example.org:3000",
            "--bootstrap", "localhost:3000",
        )
        self.assertEqual(o["bootstrap"], [
            Bootstrap(self.NODE, "192.0.2.1", 3000),
            Bootstrap(None, "192.0.2.2", 3001),
            Bootstrap(None, "::1", 3000),
            Bootstrap(self.NODE, "2001:db8::1", 4000),
            Bootstrap(None, "seed-1.example.org", 3000),
            Bootstrap(None, "localhost", 3000),
        ])
        self.assertEqual(str(o["bootstrap"][3]), f"{self.HUMAN}@[2001:db8::1]:4000")

    def test_bootstrap_id_without_dashes_any_case(self) -> None:
        plain = self.HUMAN.replace("-", "")
        for text in (plain, plain.upper(), self.HUMAN.upper(), f"  {self.HUMAN}"):
            [b] = self.peer("--bootstrap", f"{text}@192.0.2.1:3000")["bootstrap"]
            self.assertEqual(b.node_id, self.NODE, text)

    def test_bootstrap_bad_port(self) -> None:
        for value in ("192.0.2.1:0", "192.0.2.1:65536", "host:http", "host:", "[::1]:-1", "host:3000x"):
            message = self.refused("--bootstrap", value)
            self.assertIn(f"--bootstrap: {value!r}", message)
            self.assertIn("the port must be a number in 1..65535", message)

    def test_bootstrap_bad_host(self) -> None:
        for value, fragment in [
            ("::1:3000", "write an IPv6 address in brackets, as in [::1]:3000"),
            ("192.0.2.1", "expected HOST:PORT"),
            (":3000", "expected HOST:PORT"),
            ("[::1:3000", "expected [IPV6]:PORT"),
            ("[fe80::1%eth0]:3000", "zone ids"),
            ("[192.0.2.1]:3000", "not an IPv6 address"),
            ("192.0.2.256:3000", "not an IPv4 address"),
            ("bad_host:3000", "not a host name or IP address"),
            ("-x.example:3000", "not a host name or IP address"),
        ]:
            self.assertIn(fragment, self.refused("--bootstrap", value), value)

    def test_bootstrap_bad_node_id(self) -> None:
        i = 7  # a letter of the second group
        wrong = ALPHABET[(ALPHABET.index(self.HUMAN[i]) + 1) % 32]
        typo = self.HUMAN[:i] + wrong + self.HUMAN[i + 1:]
        message = self.refused("--bootstrap", f"{typo}@192.0.2.1:3000")
        self.assertIn("bad node id before '@'", message)
        self.assertIn("check characters do not match: a typo?", message)
        short = self.HUMAN.replace("-", "")[:52]
        self.assertIn("no check characters", self.refused("--bootstrap", f"{short}@192.0.2.1:3000"))
        self.assertIn("bad node id", self.refused("--bootstrap", "@192.0.2.1:3000"))
        self.assertIn("not base32", self.refused("--bootstrap", f"{self.HUMAN[:-1]}1@192.0.2.1:3000"))

    def test_advertise(self) -> None:
        o = self.peer("--advertise", "192.0.2.1:3000", "--advertise", "[2001:db8::1]:3000", "--advertise", "127.0.0.1:4000")
        self.assertEqual(o["advertise"], [Address.tcp("192.0.2.1", 3000), Address.tcp("2001:db8::1", 3000), Address.tcp("127.0.0.1", 4000)])

    def test_advertise_needs_an_ip_address(self) -> None:
        for value, fragment in [
            ("example.com:3000", "not an IP address (names are not allowed)"),
            ("localhost:3000", "not an IP address"),
            ("0.0.0.0:3000", "cannot be dialled"),
            ("[::]:3000", "cannot be dialled"),
            ("224.0.0.1:3000", "cannot be dialled"),
            ("[::ffff:192.0.2.1]:3000", "write an IPv4-mapped address as IPv4"),
            ("192.0.2.1:0", "1..65535"),
            ("::1:3000", "in brackets"),
            (f"{self.HUMAN}@192.0.2.1:3000", "a node id has no place here"),
        ]:
            message = self.refused("--advertise", value)
            self.assertIn(f"--advertise {value!r}", message)
            self.assertIn(fragment, message, value)

    def test_gossip_interval(self) -> None:
        for text, value in (("0.5", 0.5), ("2", 2.0), ("60", 60.0), ("1e-3", 0.001)):
            o = self.peer("--gossip-interval", text)
            self.assertEqual(o["gossip-interval"], value)
            self.assertIsInstance(o["gossip-interval"], float)

    def test_gossip_interval_must_be_positive(self) -> None:
        for text in ("0", "-1", "-0.5", "0.0", "nan"):
            self.assertIn("--gossip-interval must be a positive number", self.refused("--gossip-interval", text), text)
        self.refused("--gossip-interval", "soon")
        self.refused("--gossip-interval", "")


class DataDirTests(SynchronousTestCase):
    def test_first_start(self) -> None:
        path = self.mktemp()
        d = prepare(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        for name in ("node.key", "node.crt", "api.token"):
            self.assertEqual(stat.S_IMODE(os.stat(d.join(name)).st_mode), 0o600, name)
        with open(d.join("format-version")) as f:
            self.assertEqual(f.read(), "3\n")
        self.assertGreaterEqual(len(d.read_token()), 40)

    def test_restart_keeps_identity_and_token(self) -> None:
        path = self.mktemp()
        a = prepare(path)
        id1, tok1 = str(a.identity()), a.read_token()
        a.release()
        b = prepare(path)
        self.assertEqual((str(b.identity()), b.read_token()), (id1, tok1))

    def test_unknown_version(self) -> None:
        path = self.mktemp()
        prepare(path)
        with open(os.path.join(path, "format-version"), "w") as f:
            f.write("7\n")
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertIn("format version '7'; this cas opens versions 1 to 3", str(e))

    def test_foreign_directory(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "thesis.tex"), "w") as f:
            f.write("x")
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertIn("not a cas data dir", str(e))

    def test_foreign_directory_gets_no_lock_file(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "notes.txt"), "w") as f:
            f.write("x")
        self.assertRaises(DataDirError, prepare, path)
        self.assertEqual(os.listdir(path), ["notes.txt"])

    def test_second_user_refused_with_the_owners_pid(self) -> None:
        path = self.mktemp()
        a = prepare(path)
        self.assertEqual(stat.S_IMODE(os.stat(a.join("lock")).st_mode), 0o600)
        with open(a.join("lock")) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertEqual(str(e), f"data dir {os.path.abspath(path)} is in use by pid {os.getpid()}")
        a.release()
        prepare(path).release()

    def test_lock_taken_before_anything_is_written(self) -> None:
        """A refused second node creates nothing: a first start that lost the race leaves the dir as it was."""
        path = self.mktemp()
        os.makedirs(path)
        from cas.store.datadir import DirLock

        held = DirLock(os.path.join(path, "lock"))
        held.acquire()
        self.addCleanup(held.release)
        self.assertRaises(DataDirError, prepare, path)
        self.assertEqual(os.listdir(path), ["lock"])

    def test_lock_checked_after_the_fork(self) -> None:
        """On a network filesystem the fork loses the lock: the service sees it and refuses to run unlocked."""
        from twisted.internet.testing import MemoryReactorClock

        from cas.node.core import Node
        from cas.service import NodeService

        d = prepare(self.mktemp())
        assert d.lock is not None
        self.assertTrue(d.lock.still_held())
        node = Node(d, MemoryReactorClock())
        service = NodeService(node, node.reactor, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
        self.patch(d.lock, "still_held", lambda: False)
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(e.code, f"cas: the lock on data dir {d.path} was lost when twistd forked (is it on a "
                                 "network filesystem?); use a local data dir, or run twistd -n")
        self.assertFalse(os.path.exists(d.join("api.url")))
        prepare(d.path).release()  # the refused node let go of the dir
        d.release()
        self.assertFalse(d.lock.still_held())

    def test_a_stopped_node_releases_its_data_dir(self) -> None:
        node = make_node(self)
        path = node.datadir.path
        self.assertRaises(DataDirError, prepare, path)
        node.stop()
        prepare(path).release()

    def test_port_0_needs_a_data_dir(self) -> None:
        e = self.assertRaises(SystemExit, parse, "--port", "0")
        self.assertEqual(e.code, "cas: --port 0 picks a new port at each start, so it has no default data dir; "
                                 "give --data-dir DIR")

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


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


class UpgradeTests(SynchronousTestCase):
    """Formats 1 to 2 to 3 on a data dir made by the code before format 2 (cas/test/fixtures/make_datadir_v1.py):
    a stored file and a block held for another node."""

    def fixture(self) -> str:
        path = os.path.abspath(self.mktemp())
        shutil.copytree(os.path.join(FIXTURES, "datadir-v1"), path)
        with open(os.path.join(path, "format-version")) as f:
            self.assertEqual(f.read(), "1\n")
        return path

    def read(self, name: str) -> str:
        with open(os.path.join(FIXTURES, name)) as f:
            return f.read().strip()

    def columns(self, path: str) -> list[str]:
        db = sqlite3.connect(os.path.join(path, "index.sqlite"))
        try:
            return [row[1] for row in db.execute("PRAGMA table_info(holds)")]
        finally:
            db.close()

    def test_upgrade_keeps_files_and_holds(self) -> None:
        path = self.fixture()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        node = Node(prepare(path), Clock(), run=sync_run)
        self.addCleanup(node.stop)
        with open(os.path.join(path, "format-version")) as f:
            self.assertEqual(f.read(), "3\n")
        self.assertIn("key", self.columns(path))
        upgraded = [formatEvent(e) for e in events if "upgraded" in e.get("log_format", "")]
        self.assertEqual(upgraded, [f"data dir {path}: format 1 upgraded to 2: blocks held for other nodes now "
                                    "record their placement key (1 held so far, key unknown)",
                                    f"data dir {path}: format 2 upgraded to 3: leases: 1 grace lease(s) of 31 days "
                                    "for the blocks held so far"])
        held = CID.parse(self.read("datadir-v1.held"))
        self.assertTrue(node.index.is_held(held))
        sender = bytes.fromhex("ab" * 32)
        self.assertEqual(node.index.hold_keys(held), {legacy_key(sender)})  # the sender said no key
        self.assertEqual([p for p, _f, _l in node.index.holds_of(held)], ["ab" * 32])
        # a grace lease of --lease-time from the upgrade, for the node that sent it: counted as held
        expiry = node.index.leases.expiry(legacy_key(sender), sender)
        self.assertLess(abs(expiry - (time.time() + LEASE_TIME)), 60)
        self.assertEqual(node.held_bytes(), len(node.store.read(held)))
        cap = ReadCap.parse(self.read("datadir-v1.key"))
        opened: list = []
        node.open(cap).addBoth(opened.append)
        sink = Collector()
        done: list = []
        node.download(opened[0]).start(sink).addBoth(done.append)
        self.assertEqual(sink.data, b"cas format-1 fixture: a small file stored by its owner.\n" * 100)
        self.assertEqual((opened[0].metadata.name, opened[0].metadata.content_type), ("fixture.txt", "text/plain"))
        # the owner's file, stored before leases, waits to be announced to its holders (cas/network/announce.py)
        self.assertEqual(node.index.to_announce(10), [cap.root])

    def test_a_crash_before_the_version_file_is_harmless(self) -> None:
        """The step ran, the version file was not written: the next start runs it again, changing nothing."""
        path = self.fixture()
        datadir.MIGRATIONS[1](path, LEASE_TIME)
        datadir.MIGRATIONS[2](path, LEASE_TIME)
        self.assertIn("key", self.columns(path))
        prepare(path).release()
        self.assertEqual(self.columns(path).count("key"), 1)
        with open(os.path.join(path, "format-version")) as f:
            self.assertEqual(f.read(), "3\n")
        db = sqlite3.connect(os.path.join(path, "index.sqlite"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT count(*) FROM leases").fetchone(), (1,))  # not two

    def test_a_damaged_index_is_one_line_and_untouched(self) -> None:
        path = self.fixture()
        with open(os.path.join(path, "index.sqlite"), "wb") as f:
            f.write(b"not a database" * 100)
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertIn("cannot upgrade format 1 to 2", str(e))
        with open(os.path.join(path, "format-version")) as f:
            self.assertEqual(f.read(), "1\n")

    def test_a_failed_step_leaves_version_1(self) -> None:
        path = self.fixture()

        def broken(p: str, lease_time: int) -> str:
            raise OSError(28, "No space left on device", p)

        self.patch(datadir, "MIGRATIONS", {1: broken})
        e = self.assertRaises(DataDirError, prepare, path)
        self.assertIn("No space left on device", str(e))
        with open(os.path.join(path, "format-version")) as f:
            self.assertEqual(f.read(), "1\n")
        self.assertNotIn("key", self.columns(path))
