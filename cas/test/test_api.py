"""The HTTP API over in-memory transports: raw HTTP/1.1 bytes in, raw bytes out, byte at a time where it
matters. The node's worker pool is synchronous (or manual), so every exchange is deterministic."""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

from twisted.internet import task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from cas import api
from cas.base.cid import CID
from cas.base.errors import CorruptBlock, DiskFull
from cas.content.capability import ReadCap

from .util import ManualRunner, make_node

SEG = 1000


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            self.headers[k.decode().lower()] = v.decode().strip()

    def json(self) -> dict:
        return json.loads(self.body)


def parse_all(raw: bytes) -> list[Response]:
    """Split a byte stream of responses (100 Continue included) by Content-Length."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response: {raw[:200]!r}")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        if head.startswith(b"HTTP/1.1 1"):
            n = 0
        out.append(Response(head + b"\r\n\r\n" + rest[:n]))
        raw = rest[n:]
    return out


class ApiTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.node = make_node(self, segment_size=SEG, **self.node_options())
        self.token = self.node.datadir.read_token()
        self.site = api.make_site(self.node, self.token, self.clock)

    def node_options(self) -> dict:
        return {}

    def connect(self) -> tuple[http.HTTPChannel, StringTransport]:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        t = StringTransport(lenient=True)
        proto.makeConnection(t)
        self.addCleanup(lambda: proto.connectionLost(Failure(ConnectionError("test over"))) if not getattr(proto, "_gone", False) else None)
        return proto, t

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None, auth: bool = True,
                byte_at_a_time: bool = False, head: bool = False) -> Response:
        proto, t = self.connect()
        raw = self.raw(method, path, body, headers, auth)
        if byte_at_a_time:
            for i in range(len(raw)):
                proto.dataReceived(raw[i : i + 1])
        else:
            proto.dataReceived(raw)
        out = t.value()
        if head:
            return Response(out.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
        return parse_all(out)[-1]

    def raw(self, method: str, path: str, body: bytes = b"", headers: dict | None = None, auth: bool = True) -> bytes:
        h = {"Host": "127.0.0.1"}
        if auth:
            h["Authorization"] = f"Bearer {self.token}"
        if body or method in ("POST", "PUT"):
            h["Content-Length"] = str(len(body))
        h.update(headers or {})
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items() if v is not None]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def put(self, data: bytes, name: str = "a.txt", ctype: str = "text/plain") -> str:
        from urllib.parse import quote

        r = self.request("POST", f"/v1/files?name={quote(name)}", data, {"Content-Type": ctype})
        self.assertEqual(r.status, 201, r.body)
        return r.json()["key"]


class Upload(ApiTestCase):
    def node_options(self) -> dict:
        return {"storage_limit": 200_000}

    def test_round_trip(self) -> None:
        data = random.Random(1).randbytes(12_345)
        r = self.request("POST", "/v1/files?name=r%C3%A9sum%C3%A9.pdf", data, {"Content-Type": "application/pdf"})
        self.assertEqual(r.status, 201)
        body = r.json()
        self.assertEqual((body["size"], body["blocks"], body["name"], body["content_type"]), (12_345, 13, "résumé.pdf", "application/pdf"))
        g = self.request("GET", f"/v1/files/{body['key']}")
        self.assertEqual((g.status, g.body), (200, data))
        self.assertEqual(g.headers["content-type"], "application/pdf")
        self.assertEqual(g.headers["content-length"], "12345")

    def test_byte_at_a_time(self) -> None:
        """The request parser and the pipeline cope with one byte per read."""
        data = random.Random(2).randbytes(2_500)
        r = self.request("POST", "/v1/files?name=x", data, byte_at_a_time=True)
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(self.request("GET", f"/v1/files/{r.json()['key']}").body, data)

    def test_chunked_body(self) -> None:
        data = random.Random(3).randbytes(3_000)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i : i + 700]), data[i : i + 700]) for i in range(0, len(data), 700))
        proto, t = self.connect()
        raw = self.raw("POST", "/v1/files?name=c", b"", {"Transfer-Encoding": "chunked", "Content-Length": None})
        raw = raw.replace(b"Content-Length: 0\r\n", b"")
        proto.dataReceived(raw + chunks + b"0\r\n\r\n")
        r = parse_all(t.value())[-1]
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(r.json()["size"], 3_000)

    def test_empty_file(self) -> None:
        key = self.put(b"", name="empty")
        g = self.request("GET", f"/v1/files/{key}")
        self.assertEqual((g.status, g.body, g.headers["content-length"]), (200, b"", "0"))

    def test_100_continue_for_accepted_upload(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(self.raw("POST", "/v1/files?name=x", b"", {"Expect": "100-continue", "Content-Length": "5"}))
        self.assertEqual(t.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(b"hello")
        self.assertEqual(parse_all(t.value())[-1].status, 201)

    def _early(self, headers: dict, auth: bool = True, expect: bool = True) -> tuple[http.HTTPChannel, StringTransport, Response]:
        proto, t = self.connect()
        h = dict(headers)
        if expect:
            h["Expect"] = "100-continue"
        proto.dataReceived(self.raw("POST", "/v1/files?name=x", b"", h, auth))
        self.assertNotIn(b"100 Continue", t.value())
        r = Response(t.value())
        self.assertEqual(r.headers["connection"], "close")
        return proto, t, r

    def test_401_before_body(self) -> None:
        for expect in (True, False):
            proto, t, r = self._early({"Content-Length": "100000"}, auth=False, expect=expect)
            self.assertEqual((r.status, r.json()["error"]), (401, "unauthorized"))
            self.assertFalse(t.disconnecting, "the body is drained before closing")
            proto.dataReceived(b"x" * 100_000)
            self.assertTrue(t.disconnecting)
            self.assertEqual(parse_all(t.value())[-1].status, 401, "one answer only")

    def test_413_before_body(self) -> None:
        proto, t, r = self._early({"Content-Length": "300000"})
        self.assertEqual((r.status, r.json()["error"]), (413, "storage_limit"))
        self.assertIn("storage limit", r.json()["message"])
        self.assertEqual(list(self.node.store.cids()), [])

    def test_503_busy_with_retry_after(self) -> None:
        self.node.max_uploads = 0
        proto, t, r = self._early({"Content-Length": "5000"})
        self.assertEqual((r.status, r.json()["error"]), (503, "busy"))
        self.assertEqual(r.headers["retry-after"], str(api.RETRY_AFTER))

    def test_min_replicas_without_peers_is_503_before_body(self) -> None:
        r = self.request("POST", "/v1/files?name=x&min_replicas=1", b"data")
        self.assertEqual((r.status, r.json()["error"]), (503, "too_few_replicas"))
        self.assertIn("no peers", r.json()["message"])
        r = self.request("POST", "/v1/files?name=x&min_replicas=many", b"data")
        self.assertEqual((r.status, r.json()["error"]), (400, "bad_request"))
        r = self.request("POST", "/v1/files?name=x&min_replicas=0", b"data")
        self.assertEqual((r.status, r.json()["replicas"], r.json()["replicas_wanted"]), (201, 0, 0))

    def test_drain_is_bounded(self) -> None:
        proto, t, r = self._early({"Content-Length": str(10 * api.DRAIN_LIMIT)}, expect=False)
        proto.dataReceived(b"x" * (api.DRAIN_LIMIT // 2))
        self.assertFalse(t.disconnecting)
        proto.dataReceived(b"x" * api.DRAIN_LIMIT)
        self.assertTrue(t.disconnecting)

    def test_507_before_body(self) -> None:
        self.node.store.limit = None
        self.node.store.free = lambda: 1000  # type: ignore[method-assign]
        proto, t, r = self._early({"Content-Length": "5000"})
        self.assertEqual((r.status, r.json()["error"]), (507, "disk_full"))

    def test_limit_reached_mid_body(self) -> None:
        """A chunked upload (no length known) that crosses the limit is answered 413 at once and leaves nothing."""
        proto, t = self.connect()
        raw = self.raw("POST", "/v1/files?name=c", b"", {"Transfer-Encoding": "chunked"}).replace(b"Content-Length: 0\r\n", b"")
        proto.dataReceived(raw)
        piece = b"y" * 50_000
        for _ in range(5):
            proto.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))
        r = Response(t.value())
        self.assertEqual((r.status, r.json()["error"]), (413, "storage_limit"))
        proto.dataReceived(b"0\r\n\r\n")
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.node.files(), [])
        self.successResultOf(self.node.collect_garbage())
        self.assertEqual(self.node.store.used(), 0)

    def test_disk_full_mid_body(self) -> None:
        real = self.node.store.put
        calls = []

        def put(cid, data, verified=False):
            calls.append(cid)
            if len(calls) > 2:
                raise DiskFull("disk full: could not store a block")
            return real(cid, data, verified)

        self.node.store.put = put  # type: ignore[method-assign]
        proto, t = self.connect()
        proto.dataReceived(self.raw("POST", "/v1/files?name=c", b"z" * 10_000))
        r = parse_all(t.value())[-1]
        self.assertEqual((r.status, r.json()["error"]), (507, "disk_full"))

    def test_bad_name(self) -> None:
        r = self.request("POST", "/v1/files?name=" + "n" * 5000, b"x")
        self.assertEqual((r.status, r.json()["error"]), (400, "invalid_metadata"))
        r = self.request("POST", "/v1/files?name=%ff", b"x")
        self.assertEqual((r.status, r.json()["error"]), (400, "bad_request"))

    def test_backpressure_pauses_socket(self) -> None:
        """While the pipeline's window is full the socket is not read; it resumes as blocks are stored."""
        runner = ManualRunner()
        self.node.run = runner
        proto, t = self.connect()
        data = random.Random(4).randbytes(30 * SEG)
        proto.dataReceived(self.raw("POST", "/v1/files?name=b", b"", {"Content-Length": str(len(data))}))
        pos = 0
        while t.producerState != "paused":  # reads smaller than a segment, as TCP delivers them
            proto.dataReceived(data[pos : pos + 400])
            pos += 400
        self.assertEqual(len(runner.queue), self.node.window)
        self.assertLess(pos, 12 * SEG)
        runner.run_one()
        self.assertEqual(t.producerState, "producing")
        while pos < len(data):
            proto.dataReceived(data[pos : pos + SEG])
            pos += SEG
            while t.producerState == "paused":
                runner.run_one()
        while not t.value():
            runner.run_all()
        r = parse_all(t.value())[-1]
        self.assertEqual(r.status, 201)
        self.assertLessEqual(runner.max_queued, self.node.window + 1)

    def test_client_disconnects_mid_upload(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(self.raw("POST", "/v1/files?name=b", b"", {"Content-Length": "50000"}))
        proto.dataReceived(b"q" * 20_000)
        proto.connectionLost(Failure(ConnectionError("gone")))
        proto._gone = True
        self.assertEqual(self.node.files(), [])
        self.successResultOf(self.node.collect_garbage())
        self.assertEqual(list(self.node.store.cids()), [])


class BufferedTransport(StringTransport):
    bufferSize = 1 << 16  # as a socket transport has (Twisted's default)
    SEND_LIMIT = 128 * 1024  # likewise: bytes one send() may take
    offset = 0  # likewise: how much of the buffer was sent (here: always all of it)

    def doWrite(self) -> None:
        """What the reactor calls when the socket can take more (a StringTransport has taken it all)."""


class PartialSends(FileDescriptor):
    """Twisted's socket write path (``FileDescriptor.doWrite``: buffer, joins, ``SEND_LIMIT``) over a fake socket
    that takes at most ``accept`` bytes per send; records every piece sent and every buffer sent from."""

    def __init__(self, accept: int) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = 1  # FileDescriptor.write drops data otherwise
        self.accept = accept
        self.sent: list[bytes] = []
        self.buffers: list[bytes] = []  # dataBuffer at each send, when it is a new object

    def writeSomeData(self, data: bytes) -> int:
        if not self.buffers or self.dataBuffer is not self.buffers[-1]:
            self.buffers.append(self.dataBuffer)
        n = min(len(data), self.SEND_LIMIT, self.accept)
        self.sent.append(bytes(memoryview(data)[:n]))
        return n

    def drain(self) -> None:
        while self._tempDataLen or self.offset < len(self.dataBuffer):
            self.doWrite()


class ReadSize(ApiTestCase):
    """An upload reads its body a segment at a time, a quarter of that while other uploads are under way (what
    an upload waiting for the buffer budget has read stays in memory, once per upload); afterwards the
    transport's default comes back."""

    def upload_started(self) -> tuple:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        t = BufferedTransport()
        proto.makeConnection(t)
        self.addCleanup(lambda: proto.connectionLost(Failure(ConnectionError("test over"))))
        head = self.raw("POST", "/v1/files?name=x", b"")
        head = head.replace(b"Content-Length: 0", f"Content-Length: {10 * SEG}".encode())
        proto.dataReceived(head)
        return proto, t

    def test_read_size(self) -> None:
        self.node = make_node(self, segment_size=256 * 1024)
        self.site = api.make_site(self.node, self.token, self.clock)
        _p1, t1 = self.upload_started()
        self.assertEqual(t1.bufferSize, 256 * 1024)
        _p2, t2 = self.upload_started()
        self.assertEqual(t2.bufferSize, 64 * 1024)
        self.assertEqual(self.node.uploads, 2)


class DownloadWriteBuffer(ApiTestCase):
    """A download leaves the transport's pause level at Twisted's default, so that Twisted's buffer holds one
    segment at a time (sent as it is) instead of several that it would join into a new buffer first."""

    def test_pause_level_kept(self) -> None:
        self.node = make_node(self, segment_size=256 * 1024)
        self.site = api.make_site(self.node, self.token, self.clock)
        key = self.put(random.Random(1).randbytes(5 * 256 * 1024))
        levels: list[int] = []

        class Recording(BufferedTransport):
            def write(self, data: bytes) -> None:
                levels.append(self.bufferSize)  # the pause level while each piece is written
                super().write(data)

        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        t = Recording()
        proto.makeConnection(t)
        self.addCleanup(lambda: proto.connectionLost(Failure(ConnectionError("test over"))))
        proto.dataReceived(self.raw("GET", f"/v1/files/{key}"))
        self.assertGreater(len(t.value()), 5 * 256 * 1024, "the file was sent")
        self.assertGreaterEqual(len(levels), 5)
        self.assertEqual(set(levels), {1 << 16})

    def test_one_send_per_segment(self) -> None:
        """A download's transport lets a whole segment go in one send() (Twisted's 128 KiB would make it eight,
        each waking the client); the class default is untouched."""
        seg = 512 * 1024
        self.node = make_node(self, segment_size=seg)
        self.site = api.make_site(self.node, self.token, self.clock)
        key = self.put(random.Random(2).randbytes(3 * seg))
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        t = BufferedTransport()
        proto.makeConnection(t)
        self.addCleanup(lambda: proto.connectionLost(Failure(ConnectionError("test over"))))
        sent_with: list[int] = []

        def write(data: bytes) -> None:  # the limit a write from a segment being sent finds
            t.doWrite()
            sent_with.append(t.SEND_LIMIT)
            BufferedTransport.write(t, data)

        t.write = write  # type: ignore[method-assign]
        proto.dataReceived(self.raw("GET", f"/v1/files/{key}"))
        self.assertGreater(len(t.value()), 3 * seg, "the file was sent")
        self.assertIn(seg, sent_with)
        self.assertEqual(BufferedTransport.SEND_LIMIT, 128 * 1024)
        # Once the answer is finished the transport is its own again: no wrapper (and no cycle through it).
        self.assertNotIn("doWrite", vars(t))
        self.assertNotIn("SEND_LIMIT", vars(t))

    def test_whole_segments_sent_as_they_are(self) -> None:
        seg = os.urandom(1 << 20)
        t = PartialSends(accept=1 << 30)
        api.widen_sends(t, len(seg))
        for _ in range(3):
            t.write(seg)
            t.drain()
        self.assertEqual(t.sent, [seg] * 3)
        self.assertTrue(all(b is seg for b in t.buffers), "sent from the segment itself: no copy")

    def test_partial_sends_copy_no_more_than_twisted_does(self) -> None:
        """A slow client (the socket takes 300 KiB at a time): the rest of a segment is sent as slices of it,
        and only its last piece under Twisted's 128 KiB is joined into a new buffer, as without the wider sends
        (a wide limit throughout would copy the whole rest after every partial send)."""
        seg = os.urandom(1 << 20)
        copies = {}
        for how in ("twisted", "widen_sends", "wide throughout"):
            t = PartialSends(accept=300 * 1024)
            if how == "widen_sends":
                api.widen_sends(t, len(seg))
            elif how == "wide throughout":
                t.SEND_LIMIT = len(seg)
            t.write(seg)
            t.drain()
            self.assertEqual(b"".join(t.sent), seg)
            self.assertIs(t.buffers[0], seg)
            copies[how] = sum(len(b) for b in t.buffers[1:])  # bytes joined into new buffers
            if how != "twisted":
                self.assertEqual(len(t.sent[0]), 300 * 1024, "the first send was offered the whole segment")
        self.assertLess(copies["widen_sends"], FileDescriptor.SEND_LIMIT, copies)
        self.assertLessEqual(copies["twisted"], copies["widen_sends"])
        self.assertGreater(copies["wide throughout"], len(seg), copies)  # what the test guards against

    def test_no_wider_sends_for_other_answers(self) -> None:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        t = BufferedTransport()
        proto.makeConnection(t)
        self.addCleanup(lambda: proto.connectionLost(Failure(ConnectionError("test over"))))
        proto.dataReceived(self.raw("GET", "/v1/status"))
        self.assertIn(b"200", t.value().split(b"\r\n", 1)[0])
        self.assertNotIn("doWrite", vars(t))
        self.assertNotIn("SEND_LIMIT", vars(t))


class ResumableUpload(ApiTestCase):
    """``/v1/uploads``: open, send pieces with Content-Range, ask where it stands, finish, drop."""

    def open(self, name: str = "big.bin") -> str:
        r = self.request("POST", f"/v1/uploads?name={name}", b"", {"Content-Type": "application/x-big"})
        self.assertEqual(r.status, 201, r.body)
        body = r.json()
        self.assertEqual((body["offset"], body["name"], body["segment_size"]), (0, name, SEG))
        return body["id"]

    def piece(self, sid: str, data: bytes, start: int, total: int | str) -> Any:
        end = start + len(data) - 1
        return self.request("PUT", f"/v1/uploads/{sid}", data, {"Content-Range": f"bytes {start}-{end}/{total}"})

    def test_pieces_then_the_file(self) -> None:
        data = random.Random(3).randbytes(5 * SEG + 77)
        sid = self.open()
        r = self.piece(sid, data[: 2 * SEG + 10], 0, "*")
        self.assertEqual((r.status, r.json()), (200, {"offset": 2 * SEG}))  # whole segments only
        self.assertEqual(self.request("GET", f"/v1/uploads/{sid}").json()["offset"], 2 * SEG)
        r = self.piece(sid, data[: SEG], 0, len(data))  # not where it stands
        self.assertEqual((r.status, r.json()["error"], r.json()["offset"]), (409, "offset_mismatch", 2 * SEG))
        r = self.piece(sid, data[2 * SEG:], 2 * SEG, len(data))
        self.assertEqual(r.status, 201, r.body)
        body = r.json()
        self.assertEqual((body["size"], body["name"], body["content_type"]), (len(data), "big.bin", "application/x-big"))
        g = self.request("GET", f"/v1/files/{body['key']}")
        self.assertEqual((g.status, g.body), (200, data))
        self.assertEqual(self.request("GET", f"/v1/uploads/{sid}").status, 404)

    def test_empty_final_piece(self) -> None:
        data = random.Random(4).randbytes(3 * SEG)
        sid = self.open()
        self.assertEqual(self.piece(sid, data[:2 * SEG + 5], 0, "*").json(), {"offset": 2 * SEG})
        r = self.piece(sid, data[2 * SEG:], 2 * SEG, len(data))
        self.assertEqual(r.status, 201)
        key = r.json()["key"]
        self.assertEqual(self.request("GET", f"/v1/files/{key}").body, data)
        sid = self.open("nothing")
        r = self.request("PUT", f"/v1/uploads/{sid}", b"", {"Content-Range": "bytes */0"})
        self.assertEqual((r.status, r.json()["size"]), (201, 0))

    def test_bad_pieces(self) -> None:
        sid = self.open()
        for header, body, status in [
            (None, b"abc", 400), ("bytes 0-2", b"abc", 400), ("bytes 0-9/*", b"abc", 400),
            ("bytes 5-2/10", b"abc", 416), ("bytes 0-2/2", b"abc", 416), ("bytes */5", b"abc", 400),
        ]:
            r = self.request("PUT", f"/v1/uploads/{sid}", body, {"Content-Range": header})
            self.assertEqual(r.status, status, (header, r.body))
        r = self.request("PUT", "/v1/uploads/" + "0" * 32, b"abc", {"Content-Range": "bytes 0-2/3"})
        self.assertEqual((r.status, r.json()["error"]), (404, "no_such_upload"))
        r = self.request("PUT", f"/v1/uploads/{sid}", b"abc", {"Content-Range": "bytes 0-2/3"}, auth=False)
        self.assertEqual(r.status, 401)

    def test_drop(self) -> None:
        sid = self.open()
        self.piece(sid, random.Random(5).randbytes(2 * SEG + 1), 0, "*")
        self.assertGreater(self.node.store.used(), 0)
        r = self.request("DELETE", f"/v1/uploads/{sid}")
        self.assertEqual((r.status, r.json()), (200, {"dropped": True}))
        self.assertEqual(self.node.store.used(), 0)
        self.assertEqual(self.request("DELETE", f"/v1/uploads/{sid}").status, 404)


class Download(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.data = random.Random(5).randbytes(10 * SEG + 7)
        self.key = self.put(self.data, name='evil"\r\nname/../x.html', ctype="text/html")

    def get(self, headers: dict | None = None, method: str = "GET") -> Response:
        return self.request(method, f"/v1/files/{self.key}", headers=headers, head=(method == "HEAD"))

    def test_headers(self) -> None:
        r = self.get()
        root = str(ReadCap.parse(self.key).root)
        self.assertEqual(r.headers["etag"], f'"{root}"')
        self.assertEqual(r.headers["accept-ranges"], "bytes")
        self.assertEqual(r.headers["x-content-type-options"], "nosniff")
        self.assertIn("sandbox", r.headers["content-security-policy"])
        self.assertEqual(r.headers["content-type"], "text/html")
        cd = r.headers["content-disposition"]
        self.assertTrue(cd.startswith("attachment; "))
        self.assertIn("filename*=UTF-8''evil%22%0D%0Aname%2F..%2Fx.html", cd)
        self.assertIn('filename="evil___name_.._x.html"', cd)

    def test_head(self) -> None:
        r = self.get(method="HEAD")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-length"], str(len(self.data)))
        proto, t = self.connect()
        proto.dataReceived(self.raw("HEAD", f"/v1/files/{self.key}"))
        self.assertTrue(t.value().endswith(b"\r\n\r\n"), "no body after HEAD headers")

    def test_ranges(self) -> None:
        n = len(self.data)
        cases = {
            "bytes=0-0": (0, 1), "bytes=5-": (5, n - 5), "bytes=-5": (n - 5, 5), "bytes=999-2500": (999, 1502),
            "bytes=10-99999999": (10, n - 10), "bytes=-99999999": (0, n), f"bytes={n - 1}-": (n - 1, 1),
        }
        for header, (off, length) in cases.items():
            r = self.get({"Range": header})
            self.assertEqual(r.status, 206, header)
            self.assertEqual(r.body, self.data[off : off + length], header)
            self.assertEqual(r.headers["content-range"], f"bytes {off}-{off + length - 1}/{n}", header)
            self.assertEqual(r.headers["content-length"], str(length))
        for ignored in ("bytes=5-2", "bytes=0-1,5-6", "items=0-5", "bytes=x-"):
            r = self.get({"Range": ignored})
            self.assertEqual((r.status, r.body), (200, self.data), ignored)
        for bad in (f"bytes={n}-", "bytes=99999999-", "bytes=-0"):
            r = self.get({"Range": bad})
            self.assertEqual(r.status, 416, bad)
            self.assertEqual(r.headers["content-range"], f"bytes */{n}")
            self.assertEqual(r.json()["error"], "range_not_satisfiable")

    def test_if_range(self) -> None:
        etag = self.get(method="HEAD").headers["etag"]
        lm = self.get(method="HEAD").headers["last-modified"]
        self.assertEqual(self.get({"Range": "bytes=0-9", "If-Range": etag}).status, 206)
        self.assertEqual(self.get({"Range": "bytes=0-9", "If-Range": lm}).status, 206)
        r = self.get({"Range": "bytes=0-9", "If-Range": '"bafkother"'})
        self.assertEqual((r.status, r.body), (200, self.data))
        self.assertEqual(self.get({"Range": "bytes=0-9", "If-Range": "W/" + etag}).status, 200)
        self.assertEqual(self.get({"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}).status, 200)

    def test_range_decrypts_only_needed_blocks(self) -> None:
        fetched = []
        real = self.node.fetch
        self.node.fetch = lambda cid: (fetched.append(cid), real(cid))[1]  # type: ignore[method-assign]
        r = self.get({"Range": "bytes=5005-5010"})
        self.assertEqual(r.body, self.data[5005:5011])
        self.assertEqual(len(fetched), 2)  # the root manifest and block 5

    def test_errors_before_headers(self) -> None:
        r = self.request("GET", "/v1/files/cas1nonsense")
        self.assertEqual((r.status, r.json()["error"]), (400, "malformed_key"))
        other = str(ReadCap(ReadCap.parse(self.key).root.__class__.of(b"nothing"), bytes(32)))
        r = self.request("GET", f"/v1/files/{other}")
        self.assertEqual((r.status, r.json()["error"]), (404, "not_found"))

    def test_corrupt_block_aborts_connection(self) -> None:
        """After the headers, a bad block must reset the connection, never end the body cleanly."""
        f = self.successResultOf(self.node.open(ReadCap.parse(self.key)))
        with open(self.node.store._path(f.root.links[4].cid), "r+b") as fh:
            fh.write(b"\0" * 8)
        proto, t = self.connect()
        proto.dataReceived(self.raw("GET", f"/v1/files/{self.key}"))
        head, _, body = t.value().partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertLess(len(body), len(self.data))
        self.assertTrue(t.disconnected, "abortConnection was called")
        self.assertEqual(len(self.flushLoggedErrors(CorruptBlock)), 1)

    def test_client_disconnects_mid_download(self) -> None:
        runner = ManualRunner()
        self.node.run = runner
        proto, t = self.connect()
        proto.dataReceived(self.raw("GET", f"/v1/files/{self.key}"))
        while b"200 OK" not in t.value():  # the root manifest, then blocks until the first write
            runner.run_one()
        proto.connectionLost(Failure(ConnectionError("client gone")))
        proto._gone = True
        left = len(runner.queue)
        runner.run_all()
        self.assertLessEqual(left, self.node.window)
        self.assertEqual(len(runner.queue), 0, "no new work after the disconnect")


class Routes(ApiTestCase):
    def test_list_and_delete(self) -> None:
        k1 = self.put(b"one", name="1.txt")
        k2 = self.put(b"two!", name="2.txt")
        files = self.request("GET", "/v1/files").json()["files"]
        self.assertEqual([(f["key"], f["name"], f["size"]) for f in files], [(k1, "1.txt", 3), (k2, "2.txt", 4)])
        r = self.request("DELETE", f"/v1/files/{k1}")
        self.assertEqual((r.status, r.json()["forgotten"], r.json()["blocks_freed"]), (200, True, 2))
        self.assertEqual(self.request("GET", f"/v1/files/{k1}").status, 404)
        self.assertEqual(self.request("DELETE", f"/v1/files/{k1}").status, 404)
        self.assertEqual(self.request("GET", f"/v1/files/{k2}").body, b"two!")
        self.assertEqual(self.request("DELETE", "/v1/files/xyz").status, 400)
        forged = str(ReadCap(ReadCap.parse(k2).root, bytes(32)))
        self.assertEqual(self.request("DELETE", f"/v1/files/{forged}").status, 404, "the key must match, not just the id")

    def test_health_of_a_file(self) -> None:
        key = self.put(b"x" * 5000)
        root = str(ReadCap.parse(key).root)
        for name in (key, root):
            r = self.request("GET", f"/v1/files/{name}/health")
            self.assertEqual(r.status, 200)
            h = r.json()
            (n,) = self.node.index.db.execute("SELECT count(*) FROM refs WHERE owner = ?", (f"file:{root}",)).fetchone()
            self.assertEqual((h["root"], h["blocks"], h["local_blocks"], h["lowest_replicas"]), (root, n, n, 0))
            self.assertEqual(sum(k["blocks"] for k in h["keys"]), n)
            self.assertEqual((h["keys"][0]["kind"], h["keys"][-1]["kind"]), ("manifest", "stripe"))
            self.assertTrue(all(k["holders"] == [] and k["replicas"] == 0 for k in h["keys"]))
        self.assertEqual(self.request("GET", "/v1/files/xyz/health").status, 400)
        self.assertEqual(self.request("GET", f"/v1/files/{CID.of(b'nothing')}/health").json()["error"], "not_found")
        self.assertEqual(self.request("GET", f"/v1/files/{key}/nope").status, 404)

    def test_pins(self) -> None:
        key = self.put(b"mine")
        r = self.request("POST", f"/v1/pins/{key}")
        self.assertEqual((r.status, r.json()["error"]), (409, "stored_here"))
        self.assertEqual(self.request("POST", f"/v1/pins/{CID.of(b'nowhere')}").json()["error"], "not_found")
        self.assertEqual(self.request("POST", f"/v1/pins/{key}?local=2").status, 400)
        self.assertEqual(self.request("GET", "/v1/pins").json(), {"pins": []})
        self.assertEqual(self.request("DELETE", f"/v1/pins/{CID.of(b'nowhere')}").status, 404)
        # A file pinned here but stored by another node: rm says to unpin.
        other = ReadCap(CID.of(b"other root"), bytes(32))
        self.node.index.add_pin(other.root, False, 1_800_000_000, [b"k"])
        r = self.request("DELETE", f"/v1/files/{other}")
        self.assertEqual((r.status, r.json()["error"]), (409, "pinned"))
        self.assertIn("cas unpin", r.json()["message"])
        self.assertEqual(self.request("GET", "/v1/pins").json()["pins"],
                         [{"root": str(other.root), "local": False, "created": 1_800_000_000, "keys": 1, "holders": 0}])
        r = self.request("DELETE", f"/v1/pins/{other.root}")
        self.assertEqual((r.status, r.json()["unpinned"]), (200, True))
        self.assertEqual(self.request("GET", "/v1/pins").json(), {"pins": []})

    def test_a_pin_that_fails_half_way_is_not_kept(self) -> None:
        key = self.put(os.urandom(5000))
        root = ReadCap.parse(key).root
        cids = [CID.parse(c) for (c,) in self.node.index.db.execute("SELECT cid FROM refs WHERE owner = ?",
                                                                   (f"file:{root}",))]
        self.node.index.forget(root, 0)  # no longer this node's file; its blocks still in the store
        data_block = next(c for c in cids if c != root)
        os.remove(self.node.store._path(data_block))  # one block lost: a local copy cannot be completed
        r = self.request("POST", f"/v1/pins/{root}?local=1")
        self.assertEqual((r.status, r.json()["error"]), (404, "not_found"))
        self.assertEqual(self.request("GET", "/v1/pins").json(), {"pins": []})
        self.assertEqual(self.node.index.db.execute("SELECT count(*) FROM refs WHERE owner LIKE 'pin:%'").fetchone(),
                         (0,))

    def test_status(self) -> None:
        self.put(b"x" * 50)
        s = self.request("GET", "/v1/status").json()
        self.assertEqual((s["node_id"], s["files"]), (self.node.node_id, 1))
        self.assertEqual(s["storage"]["used"], self.node.store.used())
        self.assertGreater(s["storage"]["used"], 50)

    def test_token_on_every_route(self) -> None:
        key = self.put(b"secret")
        for method, path in [("GET", "/v1/status"), ("GET", "/v1/files"), ("GET", f"/v1/files/{key}"),
                             ("HEAD", f"/v1/files/{key}"), ("DELETE", f"/v1/files/{key}"), ("GET", "/v1/nope"), ("GET", "/")]:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {self.token}"}):
                r = self.request(method, path, headers=headers, auth=False, head=(method == "HEAD"))
                self.assertEqual(r.status, 401, (method, path, headers))
        self.assertEqual(self.request("GET", f"/v1/files/{key}").body, b"secret")

    def test_unknown_route_and_method(self) -> None:
        self.assertEqual(self.request("GET", "/v1/nope").json()["error"], "not_found")
        self.assertEqual(self.request("GET", "/v1/files/a/b").status, 404)
        r = self.request("PUT", "/v1/status", b"x")
        self.assertEqual((r.status, r.json()["error"]), (405, "method_not_allowed"))


class FakePeers:
    """Stands for the PeerManager: only what ``GET /v1/peers`` uses."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = entries
        self.calls = 0

    def describe(self) -> list[dict]:
        self.calls += 1
        return self.entries


PEER_ENTRIES = [
    {"node_id": "aaaqea-yeauda-ocajbi-fqydio-b4ibce-qtcqkr-mfyyde-nbwha5-dypqmy", "state": "connected", "member": True,
     "addresses": ["tcp:192.0.2.1:3000", "tcp:[2001:db8::1]:3000"], "last_seen": 1767225600.5, "rtt_ms": 1.25,
     "software": "cas/0.1.0", "connected": True, "record_seq": 1767225600000, "record_expires": 1767229200},
    {"node_id": "wty5cu-bcvius-eyhxse-g2vbfi-zui5ja-ij3l64-ij3fb6-ppjwak-3ewady", "state": "dead", "member": False,
     "addresses": [], "last_seen": None, "rtt_ms": None, "software": None, "connected": False,
     "record_seq": None, "record_expires": None},
]


class PeersRoute(ApiTestCase):
    def test_peers(self) -> None:
        self.node.peers = FakePeers(PEER_ENTRIES)
        r = self.request("GET", "/v1/peers")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(int(r.headers["content-length"]), len(r.body))
        self.assertEqual(r.json(), {"node_id": self.node.node_id, "members": 1, "peers": PEER_ENTRIES})

    def test_members_counted(self) -> None:
        entries = [dict(PEER_ENTRIES[0], node_id=str(i)) for i in range(3)] + [PEER_ENTRIES[1]]
        self.node.peers = FakePeers(entries)
        self.assertEqual(self.request("GET", "/v1/peers").json()["members"], 3)

    def test_without_peer_layer(self) -> None:
        self.assertIsNone(self.node.peers)
        r = self.request("GET", "/v1/peers")
        self.assertEqual((r.status, r.json()), (200, {"node_id": self.node.node_id, "members": 0, "peers": []}))

    def test_needs_the_token(self) -> None:
        self.node.peers = peers = FakePeers(PEER_ENTRIES)
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {self.token}"},
                        {"Authorization": f"Bearer {self.token}x"}):
            r = self.request("GET", "/v1/peers", headers=headers, auth=False)
            self.assertEqual((r.status, r.json()["error"]), (401, "unauthorized"), headers)
            self.assertNotIn(b"aaaqea", r.body)
        self.assertEqual(peers.calls, 0, "the table is not even read")

    def test_only_get(self) -> None:
        self.node.peers = FakePeers(PEER_ENTRIES)
        for method in ("POST", "DELETE", "PUT"):
            r = self.request(method, "/v1/peers", b"")
            self.assertEqual((r.status, r.json()["error"]), (405, "method_not_allowed"), method)


class Redaction(ApiTestCase):
    def test_keys_never_logged(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        key = self.put(b"log me not")
        self.request("GET", f"/v1/files/{key}")
        self.request("GET", f"/v1/files/{key}x")
        self.request("DELETE", f"/v1/files/{key}")
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("GET /v1/files/cas1… HTTP/1.1", text)
        self.assertNotIn(key[4:40], text)

    def test_request_repr_redacted(self) -> None:
        key = self.put(b"x")
        req = api.ApiRequest(self.connect()[0])
        req.uri = f"/v1/files/{key}".encode()
        req.method = b"GET"
        self.assertNotIn(key[4:], repr(req))


class Canary(SynchronousTestCase):
    """The private twisted.web names the streaming upload relies on. If this fails after a Twisted upgrade,
    re-check ApiRequest.gotLength/handleContentChunk/process and ApiChannel._send100Continue."""

    def test_private_names(self) -> None:
        seen = {}

        class Probe(http.Request):
            def gotLength(self, length):
                ch = self.channel
                seen.update(command=ch._command, path=ch._path, version=ch._version, length=length)
                super().gotLength(length)

            def process(self):
                self.finish()

        ch = http.HTTPChannel()
        ch.requestFactory = Probe
        self.assertTrue(callable(getattr(ch, "_send100Continue", None)))
        ch.makeConnection(StringTransport())
        ch.dataReceived(b"POST /v1/files?name=x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(seen, {"command": b"POST", "path": b"/v1/files?name=x", "version": b"HTTP/1.1", "length": 3})
        for name in ("gotLength", "handleContentChunk", "process", "connectionLost"):
            self.assertTrue(callable(getattr(http.Request, name)), name)
