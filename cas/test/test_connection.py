"""Tests for one peer connection (cas.peer.connection.PeerProtocol) over in-memory transports.

Two ``PeerProtocol``s talk through ``StringTransport``s moved by ``Pair.pump`` (whole chunks or one byte at a
time); ``identify`` stands in for TLS, a ``FakeHost`` records what the node would see, and time is a ``Clock``.
What goes over the wire is checked by decoding it again with ``FrameDecoder``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cas.peer import connection, frames
from cas.peer.connection import (
    HELLO_TIMEOUT,
    IDLE_LIMIT,
    INTERNAL,
    KEEPALIVE,
    MAX_SERVING,
    NOT_FOUND,
    PROTOCOL_VERSIONS,
    REQUEST_TIMEOUT,
    SHUTTING_DOWN,
    ConnectionClosed,
    HelloInfo,
    NotSupported,
    PeerProtocol,
    RemoteError,
    RequestTimeout,
    Response,
)
from cas.peer.frames import (
    BYE,
    CANCEL,
    ERROR,
    GET_BLOCK,
    HAS,
    HELLO,
    LEASE,
    MAX_FRAME,
    PING,
    PUT_BLOCK,
    RELEASE,
    REPORT,
    RESPONSE,
    Frame,
    FrameDecoder,
    FrameError,
)

A_ID = bytes([0xA1]) * 32
B_ID = bytes([0xB2]) * 32
C_ID = bytes([0xC3]) * 32
CID = bytes([0x01, 0x55, 0x1E, 0x20]) + bytes(range(32))
MIB = 1 << 20


def cid(n: int) -> bytes:
    """A distinct (fake) block id for request ``n``."""
    return CID[:4] + n.to_bytes(32, "big")


def raw(frame: Frame) -> bytes:
    return b"".join(bytes(p) for p in frames.encode(frame))


NONCE = b"noncenon"


def hello(node_id: bytes = B_ID, versions: list[int] | None = None, **extra: Any) -> bytes:
    header: dict[str, Any] = {"software": "test", "addresses": [], "record": None, "nonce": NONCE}
    header.update(extra)
    header["versions"] = list(PROTOCOL_VERSIONS) if versions is None else versions
    header["node_id"] = node_id
    return raw(Frame(HELLO, header=header))


def step(clock: Clock, seconds: float, by: float = 0.5) -> None:
    """Advance ``clock`` in small steps, as a reactor runs timers (one big advance runs each timer once)."""
    for _ in range(round(seconds / by)):
        clock.advance(by)


def decode_all(data: bytes) -> list[Frame]:
    return FrameDecoder().feed(data)


def kinds(sent: list[Frame]) -> list[tuple[str, bool]]:
    """(type name, is_response) of each frame, to compare orders."""
    return [(frames.TYPE_NAMES[f.type], f.is_response) for f in sent]


class FakeHost:
    """A ``PeerHost`` that records every event; ``handler`` says how requests are answered."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id
        self.hello_header: dict[str, Any] = {"software": "test", "addresses": [], "record": None}
        self.accepted_conns: list[PeerProtocol] = []
        self.lost_reasons: list[str] = []
        self.requests: list[Frame] = []
        self.held: dict[int, Deferred[Response]] = {}  # request id -> the Deferred ``hold`` returned
        self.cancelled: list[int] = []  # request ids whose held Deferred was cancelled
        self.handler: Callable[[PeerProtocol, Frame], Any] = self.echo

    # PeerHost
    def hello(self) -> dict[str, Any]:
        return dict(self.hello_header)

    def accepted(self, conn: PeerProtocol) -> None:
        self.accepted_conns.append(conn)

    def lost(self, conn: PeerProtocol, reason: str) -> None:
        self.lost_reasons.append(reason)

    def handle(self, conn: PeerProtocol, frame: Frame) -> Any:
        self.requests.append(frame)
        return self.handler(conn, frame)

    # handlers
    def echo(self, conn: PeerProtocol, frame: Frame) -> Response:
        """Answer at once: the request's type and id in the header, its payload back."""
        return Response({"type": frame.type, "id": frame.request_id}, bytes(frame.payload))

    def hold(self, conn: PeerProtocol, frame: Frame) -> Deferred[Response]:
        """Answer later, through ``answer``; cancelling records the id."""
        rid = frame.request_id
        d: Deferred[Response] = Deferred(lambda _d: self.cancelled.append(rid))
        self.held[rid] = d
        return d

    def answer(self, rid: int, header: dict[str, Any] | None = None, payload: bytes = b"") -> None:
        self.held.pop(rid).callback(Response(header or {}, payload))


class Pair:
    """``a`` (the dialler, host ``ha``) and ``b`` (host ``hb``) connected through StringTransports."""

    def __init__(self, clock: Clock | None = None, start: bool = True, byte_at_a_time: bool = False) -> None:
        self.clock = clock or Clock()
        self.ha, self.hb = FakeHost(A_ID), FakeHost(B_ID)
        self.a = PeerProtocol(self.ha, self.clock, True, expected=B_ID, identify=lambda t: B_ID)
        self.b = PeerProtocol(self.hb, self.clock, False, identify=lambda t: A_ID)
        self.ta, self.tb = StringTransport(), StringTransport()
        self.peer = {self.a: self.b, self.b: self.a}
        self.sent: dict[PeerProtocol, list[Frame]] = {self.a: [], self.b: []}  # every frame each side wrote
        self._taken = {self.a: 0, self.b: 0}
        self._decoders = {self.a: FrameDecoder(), self.b: FrameDecoder()}
        self._inbox = {self.a: b"", self.b: b""}  # bytes on their way to that side
        self.ready: dict[PeerProtocol, list[Any]] = {self.a: [], self.b: []}
        self.lost: set[PeerProtocol] = set()
        for p in (self.a, self.b):
            p.ready.addBoth(self.ready[p].append)  # consumes a failure too
        if start:
            self.start(byte_at_a_time)

    def start(self, byte_at_a_time: bool = False) -> None:
        self.a.makeConnection(self.ta)
        self.b.makeConnection(self.tb)
        self.pump(byte_at_a_time)

    def pump(self, byte_at_a_time: bool = False) -> None:
        """Move bytes both ways until quiet. A side not reading (paused, or it closed) keeps them waiting."""
        for _ in range(100_000):
            moved = False
            for src in (self.a, self.b):
                dst = self.peer[src]
                data = src.transport.value()  # type: ignore[union-attr]
                if data:
                    src.transport.clear()  # type: ignore[union-attr]
                    self.sent[src].extend(self._decoders[src].feed(data))
                    self._inbox[dst] += data
                if dst in self.lost:
                    continue
                t = dst.transport
                while self._inbox[dst] and t.producerState == "producing" and not t.disconnecting:  # type: ignore[union-attr]
                    n = 1 if byte_at_a_time else len(self._inbox[dst])
                    chunk, self._inbox[dst] = self._inbox[dst][:n], self._inbox[dst][n:]
                    dst.dataReceived(chunk)
                    moved = True
            if not moved and not self.ta.value() and not self.tb.value():
                return
        raise AssertionError("pump never went quiet")

    def take(self, p: PeerProtocol) -> list[Frame]:
        """Frames ``p`` wrote (and pump moved) since the last take."""
        new = self.sent[p][self._taken[p]:]
        self._taken[p] = len(self.sent[p])
        return new

    def written(self, p: PeerProtocol) -> list[Frame]:
        """Frames ``p`` wrote that pump has not moved yet."""
        return decode_all(p.transport.value())  # type: ignore[union-attr]

    def disconnect(self, reason: Exception | None = None) -> None:
        for p in (self.a, self.b):
            if p not in self.lost:
                self.lost.add(p)
                p.connectionLost(Failure(reason or ConnectionDone("connection done")))


class SmallBufferTransport(StringTransport):
    """Pauses its producer once more than ``limit`` bytes wait in it, as a full socket buffer does."""

    limit = 100

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        if self.producer is not None and len(self.value()) > self.limit:
            self.producer.pauseProducing()


class Lone:
    """One PeerProtocol (host id A_ID, peer B_ID by ``identify``) fed hand-made bytes."""

    def __init__(
        self, identify: bytes | None = B_ID, expected: bytes | None = None, host_id: bytes = A_ID,
        transport: StringTransport | None = None,
    ) -> None:
        self.clock = Clock()
        self.host = FakeHost(host_id)
        self.proto = PeerProtocol(self.host, self.clock, True, expected=expected, identify=lambda t: identify)
        self.ready: list[Any] = []
        self.proto.ready.addBoth(self.ready.append)
        self.t = transport or StringTransport()
        self.proto.makeConnection(self.t)

    def feed(self, data: bytes | Frame, byte_at_a_time: bool = False) -> None:
        if isinstance(data, Frame):
            data = raw(data)
        if byte_at_a_time:
            for i in range(len(data)):
                self.proto.dataReceived(data[i:i + 1])
        else:
            self.proto.dataReceived(data)

    def accept(self) -> None:
        self.feed(hello())
        assert self.proto.accepted

    def written(self) -> list[Frame]:
        return decode_all(self.t.value())

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone("connection done")))


# -- 1. HELLO ---------------------------------------------------------------------------------------------------


class HelloTests(SynchronousTestCase):
    def check_accepted(self, pair: Pair) -> None:
        self.assertTrue(pair.a.accepted)
        self.assertTrue(pair.b.accepted)
        self.assertEqual(pair.ready[pair.a], [pair.a])
        self.assertEqual(pair.ready[pair.b], [pair.b])
        self.assertEqual(pair.ha.accepted_conns, [pair.a])
        self.assertEqual(pair.hb.accepted_conns, [pair.b])
        # ``observed``: where each side's transport says the other is (StringTransport's fake peer address)
        self.assertEqual(pair.a.hello_info, HelloInfo(B_ID, 3, "test", [], None, pair.b.nonce, pair.b.remote_ip))
        self.assertEqual(pair.b.hello_info, HelloInfo(A_ID, 3, "test", [], None, pair.a.nonce, pair.a.remote_ip))
        self.assertEqual(pair.a.hello_info.observed, "192.168.1.1")
        self.assertNotEqual(pair.a.nonce, pair.b.nonce)
        self.assertEqual(pair.a.dialler_key(A_ID), (A_ID, pair.a.nonce))
        self.assertEqual(pair.b.dialler_key(B_ID), (A_ID, pair.a.nonce))
        self.assertEqual((pair.a.peer_id, pair.b.peer_id), (B_ID, A_ID))
        self.assertFalse(pair.ta.disconnecting or pair.tb.disconnecting)
        for p, own in ((pair.a, A_ID), (pair.b, B_ID)):
            (h,) = pair.sent[p]  # HELLO is the first frame, and nothing else was needed
            self.assertEqual((h.type, h.flags, h.request_id), (HELLO, 0, 0))
            self.assertEqual(
                h.header,
                {"software": "test", "addresses": [], "record": None, "versions": [1, 2, 3], "node_id": own, "nonce": p.nonce,
                 "observed": p.remote_ip},
            )
            self.assertIs(p.transport.producer, p)  # type: ignore[union-attr]
            self.assertTrue(p.transport.streaming)  # type: ignore[union-attr]

    def test_exchange(self) -> None:
        pair = Pair()
        self.check_accepted(pair)
        pair.pump()
        self.assertEqual(len(pair.ha.accepted_conns), 1)

    def test_byte_at_a_time(self) -> None:
        self.check_accepted(Pair(byte_at_a_time=True))

    def test_hello_sent_at_once(self) -> None:
        """HELLO goes out from connectionMade, before anything is received; not accepted until the peer's."""
        pair = Pair(start=False)
        pair.a.makeConnection(pair.ta)
        (h,) = pair.written(pair.a)
        self.assertEqual(h.type, HELLO)
        self.assertFalse(pair.a.accepted)
        self.assertEqual(pair.ready[pair.a], [])
        self.assertRaises(ConnectionClosed, pair.a.request, PING)

    def test_hello_fields(self) -> None:
        pair = Pair(start=False)
        pair.hb.hello_header = {"software": "cas 9", "addresses": [["tcp", "192.0.2.1", 4001]], "record": b"rec"}
        pair.start()
        self.assertEqual(
            pair.a.hello_info,
            HelloInfo(B_ID, 3, "cas 9", [["tcp", "192.0.2.1", 4001]], b"rec", pair.b.nonce, "192.168.1.1"),
        )

    def test_hello_mistyped_optional_fields(self) -> None:
        lone = Lone()
        lone.feed(hello(software=7, addresses="x", record="text", extra_key=1, observed="not an address"))
        self.assertEqual(lone.proto.hello_info, HelloInfo(B_ID, 3, "?", [], None, NONCE))

    def test_highest_common_version(self) -> None:
        self.patch(connection, "PROTOCOL_VERSIONS", (1, 2, 3, 4))
        lone = Lone()
        self.assertEqual(lone.written()[0].header["versions"], [1, 2, 3, 4])
        lone.feed(hello(versions=[7, 1, 2]))
        self.assertEqual(lone.proto.hello_info.version, 2)  # type: ignore[union-attr]

    def test_version_2_frames_only_on_version_2_connections(self) -> None:
        """LEASE and RELEASE exist from version 2: never sent to, and never taken from, a version-1 peer."""
        old = Lone()
        old.feed(hello(versions=[1]))
        self.assertEqual(old.proto.version, 1)
        for ftype in (LEASE, RELEASE):
            e = self.assertRaises(NotSupported, old.proto.request, ftype, {"keys": []})
            self.assertIn("speaks protocol version 1", str(e))
        old.feed(Frame(LEASE, 0, 1, {"keys": [], "time": 60}))
        self.assertEqual(old.proto.close_reason, "LEASE on a version-1 connection")
        new = Lone()
        new.feed(hello(versions=[1, 2]))
        self.assertEqual(new.proto.version, 2)
        new.proto.request(LEASE, {"keys": [], "time": 60})
        self.assertEqual(new.written()[-1].type, LEASE)
        # REPORT exists from version 3: a node of the previous release (versions 1 and 2) is never sent one
        e = self.assertRaises(NotSupported, new.proto.request, REPORT, {"cid": b""})
        self.assertIn("speaks protocol version 2", str(e))
        new.feed(Frame(REPORT, 0, 9, {"cid": b""}))
        self.assertEqual(new.proto.close_reason, "REPORT on a version-2 connection")

    def test_hello_timer_cancelled(self) -> None:
        pair = Pair()
        pair.clock.advance(HELLO_TIMEOUT + 1)
        pair.pump()
        self.assertFalse(pair.ta.disconnecting or pair.tb.disconnecting)


# -- 2, 3, 15. requests -----------------------------------------------------------------------------------------


class RequestTests(SynchronousTestCase):
    def test_ping(self) -> None:
        pair = Pair()
        pair.clock.advance(3)
        d = pair.a.ping()
        self.assertNoResult(d)
        (req,) = pair.written(pair.a)
        self.assertEqual((req.type, req.flags, req.header, bytes(req.payload)), (PING, 0, {}, b""))
        self.assertGreater(req.request_id, 0)
        pair.clock.advance(0.25)
        pair.pump()
        self.assertEqual(self.successResultOf(d), 0.25)
        self.assertEqual(pair.a.rtt, 0.25)
        (resp,) = pair.take(pair.b)[1:]
        self.assertEqual((resp.type, resp.flags, resp.request_id, resp.header), (PING, RESPONSE, req.request_id, {}))
        self.assertEqual(pair.hb.requests, [])  # the protocol answers PING itself

    def test_ping_request(self) -> None:
        pair = Pair()
        d = pair.b.request(PING)
        pair.pump()
        self.assertEqual(self.successResultOf(d), Response({}, b""))

    def test_get_block(self) -> None:
        pair = Pair()
        pair.hb.handler = lambda conn, f: Response({"note": "here"}, b"the block")
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        r = self.successResultOf(d)
        self.assertEqual(r.header, {"note": "here"})
        self.assertEqual(bytes(r.payload), b"the block")
        (f,) = pair.hb.requests
        self.assertEqual((f.type, f.flags, f.header, bytes(f.payload)), (GET_BLOCK, 0, {"cid": CID}, b""))
        (resp,) = pair.take(pair.b)[1:]
        self.assertEqual((resp.type, resp.flags, resp.request_id), (GET_BLOCK, RESPONSE, f.request_id))
        self.assertIs(pair.hb.accepted_conns[0], pair.b)

    def test_put_block_byte_at_a_time(self) -> None:
        pair = Pair()
        d = pair.a.request(PUT_BLOCK, {"cid": CID}, b"hello")
        pair.pump(byte_at_a_time=True)
        r = self.successResultOf(d)
        self.assertEqual(r.header, {"type": PUT_BLOCK, "id": pair.hb.requests[0].request_id})
        self.assertEqual(bytes(r.payload), b"hello")
        self.assertEqual(bytes(pair.hb.requests[0].payload), b"hello")

    def test_answer_later(self) -> None:
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        d = pair.a.request(HAS, {"cids": [CID]})
        pair.pump()
        self.assertNoResult(d)
        (rid,) = pair.hb.held
        pair.hb.answer(rid, {"bitmap": b"\x80"})
        pair.pump()
        self.assertEqual(self.successResultOf(d), Response({"bitmap": b"\x80"}, b""))

    def test_remote_error(self) -> None:
        pair = Pair()

        def not_found(conn: PeerProtocol, f: Frame) -> Response:
            raise RemoteError(NOT_FOUND, "no such block")

        pair.hb.handler = not_found
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        err = self.failureResultOf(d, RemoteError).value
        self.assertEqual((err.code, err.message), (NOT_FOUND, "no such block"))
        (resp,) = pair.take(pair.b)[1:]
        self.assertEqual(resp.flags, RESPONSE | ERROR)
        self.assertEqual(resp.header, {"code": NOT_FOUND, "message": "no such block"})

    def test_remote_error_later(self) -> None:
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        (rid,) = pair.hb.held
        pair.hb.held.pop(rid).errback(RemoteError(NOT_FOUND, "gone"))
        pair.pump()
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, NOT_FOUND)

    def test_failed_deferred(self) -> None:
        pair = Pair()
        pair.hb.handler = lambda conn, f: fail(RemoteError(connection.OVER_QUOTA, "full"))
        d = pair.a.request(PUT_BLOCK, {"cid": CID}, b"x")
        pair.pump()
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, connection.OVER_QUOTA)

    def test_internal_error(self) -> None:
        """A handler failing otherwise answers INTERNAL (logged) and the connection carries on."""
        pair = Pair()

        def broken(conn: PeerProtocol, f: Frame) -> Response:
            raise ValueError("disk on fire")

        pair.hb.handler = broken
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        err = self.failureResultOf(d, RemoteError).value
        self.assertEqual(err.code, INTERNAL)
        self.assertNotIn("disk on fire", err.message)  # no internals to the peer
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertFalse(pair.ta.disconnecting or pair.tb.disconnecting)
        pair.hb.handler = pair.hb.echo
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        self.assertEqual(bytes(self.successResultOf(d).payload), b"")

    def test_unencodable_response(self) -> None:
        """A handler answering something that cannot be sent gets the peer an INTERNAL error, not silence."""
        pair = Pair()
        answers: list[Any] = [Response({1: "int key"}, b""), None]
        pair.hb.handler = lambda conn, f: answers.pop(0)
        for _ in range(2):
            d = pair.a.request(GET_BLOCK, {"cid": CID})
            pair.pump()
            self.assertEqual(self.failureResultOf(d, RemoteError).value.code, INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors()), 2)
        self.assertFalse(pair.ta.disconnecting or pair.tb.disconnecting)

    def test_error_response_without_code(self) -> None:
        lone = Lone()
        lone.accept()
        d = lone.proto.request(GET_BLOCK, {"cid": CID})
        (req,) = lone.written()[1:]
        lone.feed(Frame(GET_BLOCK, RESPONSE | ERROR, req.request_id, {"code": 5}))
        err = self.failureResultOf(d, RemoteError).value
        self.assertEqual((err.code, err.message), (INTERNAL, ""))

    def test_bad_request_raises(self) -> None:
        """A request that could not be encoded raises at once, leaving nothing pending, sent or scheduled."""
        pair = Pair()
        timers = len(pair.clock.getDelayedCalls())
        for args in (
            (GET_BLOCK, {"cid": {1, 2}}),  # a set: CBOR tag
            (GET_BLOCK, {1: "int key"}),
            (PUT_BLOCK, {"cid": CID}, b"x" * MAX_FRAME),
            (CANCEL, {"id": 1}),  # one-way, not a request
        ):
            self.assertRaises(ValueError, pair.a.request, *args)
        pair.a.pauseProducing()
        self.assertRaises(ValueError, pair.a.request, GET_BLOCK, {"cid": {1}})
        pair.a.resumeProducing()
        self.assertEqual(len(pair.clock.getDelayedCalls()), timers)
        pair.pump()
        self.assertEqual(pair.take(pair.a)[1:], [])
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        self.successResultOf(d)

    def test_multiplexing_reverse_order(self) -> None:
        """50 requests in flight at once, answered last first: each gets its own answer."""
        self.patch(connection, "MAX_SERVING", 64)
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        ds = [pair.a.request(GET_BLOCK, {"cid": cid(i)}) for i in range(50)]
        pair.pump()
        self.assertEqual(len(pair.hb.held), 50)
        self.assertEqual([f.header["cid"] for f in pair.hb.requests], [cid(i) for i in range(50)])
        by_cid = {f.header["cid"]: f.request_id for f in pair.hb.requests}
        self.assertEqual(len(set(by_cid.values())), 50)
        for i in reversed(range(50)):
            pair.hb.answer(by_cid[cid(i)], {"n": i}, b"block %d" % i)
            pair.pump()
            r = self.successResultOf(ds[i])
            self.assertEqual((r.header, bytes(r.payload)), ({"n": i}, b"block %d" % i))
            if i:
                self.assertNoResult(ds[i - 1])

    def test_multiplexing_under_serving_cap(self) -> None:
        """The same with the default cap: the host holds at most MAX_SERVING at a time, all are answered."""
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        ds = [pair.a.request(GET_BLOCK, {"cid": cid(i)}) for i in range(50)]
        pair.pump()
        while pair.hb.held:
            self.assertLessEqual(len(pair.hb.held), MAX_SERVING)
            for rid in sorted(pair.hb.held, reverse=True):
                f = next(f for f in pair.hb.requests if f.request_id == rid)
                pair.hb.answer(rid, {"cid": f.header["cid"]}, f.header["cid"])
            pair.pump()
        self.assertEqual(len(pair.hb.requests), 50)
        for i, d in enumerate(ds):
            r = self.successResultOf(d)
            self.assertEqual((r.header, bytes(r.payload)), ({"cid": cid(i)}, cid(i)))

    def test_both_directions(self) -> None:
        """Each direction has its own id space: the same ids both ways do not mix."""
        pair = Pair()
        da = [pair.a.request(GET_BLOCK, {"cid": cid(i)}) for i in range(3)]
        db = [pair.b.request(PUT_BLOCK, {"cid": cid(i)}, b"b%d" % i) for i in range(3)]
        pair.pump()
        self.assertEqual([f.request_id for f in pair.ha.requests], [f.request_id for f in pair.hb.requests])
        for i in range(3):
            self.assertEqual(self.successResultOf(da[i]).header["type"], GET_BLOCK)
            r = self.successResultOf(db[i])
            self.assertEqual((r.header["type"], bytes(r.payload)), (PUT_BLOCK, b"b%d" % i))


# -- 4. closing on protocol violations --------------------------------------------------------------------------


class ViolationTests(SynchronousTestCase):
    def assert_failed(self, lone: Lone, reason: str) -> str:
        """The connection was aborted (not closed cleanly); returns the reason the host is told."""
        self.assertTrue(lone.t.disconnected, "abortConnection was not called")
        lone.lose()
        (why,) = lone.host.lost_reasons
        self.assertIn(reason, why)
        return why

    def assert_not_accepted(self, lone: Lone) -> None:
        self.assertFalse(lone.proto.accepted)
        self.assertEqual(lone.host.accepted_conns, [])
        (f,) = lone.ready
        self.assertIsInstance(f, Failure)
        f.trap(ConnectionClosed)

    def test_ping_before_hello(self) -> None:
        lone = Lone()
        lone.feed(Frame(PING, 0, 1))
        self.assertEqual(lone.proto.close_reason, "PING before HELLO")
        self.assert_failed(lone, "PING before HELLO")
        self.assert_not_accepted(lone)
        self.assertEqual(kinds(lone.written()), [("HELLO", False)])  # no PING answer

    def test_request_before_hello(self) -> None:
        lone = Lone()
        lone.feed(Frame(GET_BLOCK, 0, 1, {"cid": CID}))
        self.assert_failed(lone, "GET_BLOCK before HELLO")
        self.assertEqual(lone.host.requests, [])

    def test_second_hello(self) -> None:
        lone = Lone()
        lone.feed(hello() + hello() + raw(Frame(PING, 0, 1)))
        self.assertTrue(lone.proto.accepted)
        self.assert_failed(lone, "second HELLO")
        self.assertEqual(kinds(lone.written()), [("HELLO", False)])  # the PING after it was not answered
        self.assertEqual(len(lone.host.accepted_conns), 1)

    def test_hello_names_other_node(self) -> None:
        lone = Lone(identify=B_ID)
        lone.feed(hello(node_id=C_ID))
        self.assert_failed(lone, "another node")
        self.assert_not_accepted(lone)

    def test_no_identity(self) -> None:
        lone = Lone(identify=None)
        lone.feed(hello())
        self.assert_failed(lone, "another node")
        self.assert_not_accepted(lone)

    def test_hello_from_ourselves(self) -> None:
        lone = Lone(identify=A_ID)
        lone.feed(hello(node_id=A_ID))
        self.assert_failed(lone, "ourselves")
        self.assert_not_accepted(lone)

    def test_hello_not_expected_node(self) -> None:
        """Dialling a known id: a HELLO (and key) of another node is refused even without handshakeCompleted."""
        lone = Lone(identify=B_ID, expected=C_ID)
        lone.feed(hello(node_id=B_ID))
        self.assert_failed(lone, "expected")
        self.assert_not_accepted(lone)

    def test_handshake_checks(self) -> None:
        for identify, expected, reason in (
            (None, None, "no peer certificate"),
            (A_ID, None, "ourselves"),
            (B_ID, C_ID, "expected"),
        ):
            lone = Lone(identify=identify, expected=expected)
            lone.proto.handshakeCompleted()
            self.assert_failed(lone, reason)
        lone = Lone(identify=B_ID, expected=B_ID)
        lone.proto.handshakeCompleted()
        self.assertFalse(lone.t.disconnecting)
        self.assertEqual(lone.proto.peer_id, B_ID)

    def test_bad_hello_header(self) -> None:
        for data, reason in (
            (raw(Frame(HELLO, header={"node_id": B_ID})), "versions"),
            (hello(versions=["1"]), "versions"),
            (raw(Frame(HELLO, header={"versions": [1], "node_id": B_ID[:31], "nonce": NONCE})), "node_id"),
            (raw(Frame(HELLO, header={"versions": [1], "node_id": B_ID})), "nonce"),
            (hello(nonce=b"short"), "nonce"),
        ):
            lone = Lone()
            lone.feed(data)
            self.assert_failed(lone, reason)

    def test_no_common_version(self) -> None:
        """BYE naming the versions, then a clean close (not an abort); never accepted."""
        lone = Lone()
        lone.feed(hello(versions=[98, 99]))
        hello_frame, bye = lone.written()
        self.assertEqual((bye.type, bye.flags, bye.request_id), (BYE, 0, 0))
        self.assertIn("no common protocol version", bye.header["reason"])
        self.assertIn("[98, 99]", bye.header["reason"])
        self.assertTrue(lone.t.disconnecting)
        self.assertFalse(lone.t.disconnected)
        lone.lose()
        self.assertIn("no common protocol version", lone.host.lost_reasons[0])
        self.assert_not_accepted(lone)

    def check_malformed(self, data: bytes, accept: bool = True) -> None:
        with self.assertRaises(FrameError) as cm:
            FrameDecoder().feed(data)
        lone = Lone()
        if accept:
            lone.accept()
        lone.feed(data)
        why = self.assert_failed(lone, str(cm.exception))
        self.assertEqual(why, str(cm.exception))

    def test_garbage(self) -> None:
        self.check_malformed(b"\xff" * 16)
        self.check_malformed(b"\xff" * 16, accept=False)

    def test_oversize_length(self) -> None:
        self.check_malformed(struct.pack(">I", MAX_FRAME + 1))

    def test_undersize_length(self) -> None:
        self.check_malformed(struct.pack(">I", 3) + b"\x00" * 8)

    def test_unknown_type(self) -> None:
        self.check_malformed(struct.pack(">IBBIH", 9, 42, 0, 1, 1) + b"\xa0")

    def test_reserved_flags(self) -> None:
        self.check_malformed(struct.pack(">IBBIH", 9, PING, 0x80, 1, 1) + b"\xa0")

    def test_header_not_a_map(self) -> None:
        self.check_malformed(struct.pack(">IBBIH", 9, PING, 0, 1, 1) + b"\x80")

    def test_malformed_cbor(self) -> None:
        self.check_malformed(struct.pack(">IBBIH", 10, PING, 0, 1, 2) + b"\xa1\xff")

    def test_malformed_byte_at_a_time_after_good_frames(self) -> None:
        """Frames before the bad one are handled; nothing after it is."""
        lone = Lone()
        lone.accept()
        lone.feed(raw(Frame(PING, 0, 1)) + struct.pack(">IBBIH", 9, 42, 0, 1, 1) + b"\xa0", byte_at_a_time=True)
        self.assertEqual(kinds(lone.written()), [("HELLO", False), ("PING", True)])
        self.assert_failed(lone, "unknown frame type 42")

    def test_request_id_reused(self) -> None:
        lone = Lone()
        lone.host.handler = lone.host.hold
        lone.accept()
        lone.feed(Frame(GET_BLOCK, 0, 7, {"cid": CID}))
        lone.feed(Frame(GET_BLOCK, 0, 7, {"cid": CID}))
        self.assert_failed(lone, "request id 7 reused")

    def test_data_after_lost_ignored(self) -> None:
        lone = Lone()
        lone.accept()
        lone.lose()
        lone.t.clear()
        lone.feed(Frame(PING, 0, 1))
        self.assertEqual(lone.t.value(), b"")


# -- 5, 6. deadlines and CANCEL ---------------------------------------------------------------------------------


class DeadlineTests(SynchronousTestCase):
    def test_timeout_sends_cancel(self) -> None:
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        d = pair.a.request(GET_BLOCK, {"cid": CID}, timeout=5)
        pair.pump()
        (rid,) = pair.hb.held
        pair.take(pair.a)
        pair.take(pair.b)
        pair.clock.advance(4.9)
        self.assertNoResult(d)
        self.assertEqual(pair.written(pair.a), [])
        pair.clock.advance(0.1)
        self.assertIn("no answer within 5 s", str(self.failureResultOf(d, RequestTimeout).value))
        (cancel,) = pair.written(pair.a)
        self.assertEqual((cancel.type, cancel.flags, cancel.request_id, cancel.header), (CANCEL, 0, 0, {"id": rid}))
        # 6. the peer's work is not cancelled (it keeps its slot until it ends), but its answer is dropped
        pair.pump()
        self.assertEqual(pair.hb.cancelled, [])
        self.assertIn(rid, pair.b._serving)
        pair.hb.answer(rid, payload=b"too late")
        self.assertEqual(pair.take(pair.b), [])
        self.assertNotIn(rid, pair.b._serving)
        self.assertEqual(pair.b.idle_since, pair.b.last_used)  # nothing being served any more

    def test_default_timeout(self) -> None:
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        pair.clock.advance(REQUEST_TIMEOUT - 0.5)
        self.assertNoResult(d)
        pair.clock.advance(0.5)
        self.failureResultOf(d, RequestTimeout)

    def test_late_response_ignored(self) -> None:
        lone = Lone()
        lone.accept()
        d = lone.proto.request(GET_BLOCK, {"cid": CID}, timeout=5)
        rid = lone.written()[-1].request_id
        lone.clock.advance(5)
        self.failureResultOf(d, RequestTimeout)
        lone.feed(Frame(GET_BLOCK, RESPONSE, rid, {}, b"late"))
        self.assertFalse(lone.t.disconnecting)
        d2 = lone.proto.request(GET_BLOCK, {"cid": CID})
        rid2 = lone.written()[-1].request_id
        lone.feed(Frame(GET_BLOCK, RESPONSE, rid2, {}, b"on time"))
        self.assertEqual(bytes(self.successResultOf(d2).payload), b"on time")

    def test_response_of_another_type(self) -> None:
        """A response must carry its request's type: a PING answer to a GET_BLOCK is a protocol violation."""
        lone = Lone()
        lone.accept()
        d = lone.proto.request(GET_BLOCK, {"cid": CID})
        rid = lone.written()[-1].request_id
        lone.feed(Frame(PING, RESPONSE, rid))
        self.assertTrue(lone.t.disconnected)
        lone.lose()
        self.assertIn(f"PING response to GET_BLOCK request {rid}", lone.host.lost_reasons[0])
        self.failureResultOf(d, ConnectionClosed)

    def test_bye_before_hello_keeps_the_peers_reason(self) -> None:
        lone = Lone()
        lone.feed(Frame(BYE, header={"reason": "no common protocol version"}))
        self.assertTrue(lone.t.disconnected)
        lone.lose()
        self.assertIn("peer closed before HELLO: no common protocol version", lone.host.lost_reasons[0])

    def test_response_never_sent(self) -> None:
        lone = Lone()
        lone.accept()
        lone.feed(Frame(PING, RESPONSE, 99))
        self.assertTrue(lone.t.disconnected)
        lone.lose()
        self.assertIn("response to request 99, which was never sent", lone.host.lost_reasons[0])

    def test_response_answered_twice(self) -> None:
        """A second answer to an answered request is dropped like a late one."""
        lone = Lone()
        lone.accept()
        d = lone.proto.request(PING)
        rid = lone.written()[-1].request_id
        lone.feed(raw(Frame(PING, RESPONSE, rid)) * 2)
        self.successResultOf(d)
        self.assertFalse(lone.t.disconnecting)

    def test_requester_cancels(self) -> None:
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        (rid,) = pair.hb.held
        pair.take(pair.a)
        pair.take(pair.b)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        pair.pump()
        self.assertEqual([(f.type, f.header) for f in pair.take(pair.a)], [(CANCEL, {"id": rid})])
        self.assertEqual(pair.hb.cancelled, [])  # the work goes on; its answer will be dropped
        pair.hb.answer(rid)
        self.assertEqual(pair.take(pair.b), [])
        # the deadline is gone: only the two keepalive timers are left
        self.assertEqual([c.getTime() for c in pair.clock.getDelayedCalls()], [KEEPALIVE, KEEPALIVE])

    def test_peer_cancel_after_answer_or_unknown(self) -> None:
        """CANCEL of a request already answered, or never seen, is ignored."""
        lone = Lone()
        lone.accept()
        lone.feed(Frame(GET_BLOCK, 0, 3, {"cid": CID}))
        lone.feed(Frame(CANCEL, header={"id": 3}))
        lone.feed(Frame(CANCEL, header={"id": 77}))
        lone.feed(Frame(CANCEL, header={"id": "x"}))
        self.assertFalse(lone.t.disconnecting)
        self.assertEqual(kinds(lone.written()), [("HELLO", False), ("GET_BLOCK", True)])

    def test_unsent_request_times_out(self) -> None:
        """A request still queued (our writes paused) that times out is never sent, and no CANCEL either."""
        pair = Pair()
        pair.a.pauseProducing()
        d1 = pair.a.request(PUT_BLOCK, {"cid": CID}, b"x" * 100, timeout=5)
        d2 = pair.a.request(GET_BLOCK, {"cid": CID}, timeout=5)
        d3 = pair.a.request(GET_BLOCK, {"cid": CID}, timeout=50)
        pair.clock.advance(5)
        self.failureResultOf(d1, RequestTimeout)
        self.failureResultOf(d2, RequestTimeout)
        pair.a.resumeProducing()
        pair.pump()
        self.assertEqual([(f.type, f.is_response) for f in pair.take(pair.a)[1:]], [(GET_BLOCK, False)])
        self.successResultOf(d3)
        self.assertEqual(len(pair.hb.requests), 1)


# -- 7, 8. flow control -----------------------------------------------------------------------------------------


class WindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.hb.handler = self.pair.hb.hold

    def put(self, size: int, **kw: Any) -> Deferred[Response]:
        return self.pair.a.request(PUT_BLOCK, {"cid": CID}, b"p" * size, **kw)

    def served(self) -> list[int]:
        """Payload sizes of the requests the peer's host received, in order."""
        return [len(f.payload) for f in self.pair.hb.requests]

    def answer(self, rid: int) -> None:
        self.pair.hb.answer(rid)
        self.pair.pump()

    def answer_first(self) -> None:
        self.answer(min(self.pair.hb.held))

    def test_window_of_8_mib(self) -> None:
        ds = [self.put(MIB) for _ in range(9)]
        self.pair.pump()
        self.assertEqual(self.served(), [MIB] * 8)
        self.assertEqual(self.pair.a.idle_since, self.pair.clock.seconds())
        self.answer_first()
        self.assertEqual(self.served(), [MIB] * 9)
        self.successResultOf(ds[0])
        self.assertEqual(connection.SEND_WINDOW, 8 * MIB)

    def test_window_small(self) -> None:
        self.patch(connection, "SEND_WINDOW", 10)
        ds = [self.put(6), self.put(6), self.put(6)]
        self.pair.pump()
        self.assertEqual(self.served(), [6])
        self.assertEqual(self.pair.take(self.pair.a)[1:][0].type, PUT_BLOCK)
        self.assertEqual(self.pair.take(self.pair.a), [])
        # a request without payload is not held back by the window
        g = self.pair.a.request(GET_BLOCK, {"cid": CID})
        self.pair.pump()
        self.assertEqual(self.served(), [6, 0])
        put1, get = (f.request_id for f in self.pair.hb.requests)
        self.answer(put1)
        self.assertEqual(self.served(), [6, 0, 6])
        self.successResultOf(ds[0])
        self.assertNoResult(ds[1])
        self.answer(get)  # frees no window
        self.successResultOf(g)
        self.assertEqual(self.served(), [6, 0, 6])
        self.answer(self.pair.hb.requests[2].request_id)
        self.assertEqual(self.served(), [6, 0, 6, 6])
        self.answer(self.pair.hb.requests[3].request_id)
        for d in ds:
            self.successResultOf(d)

    def test_error_frees_window(self) -> None:
        self.patch(connection, "SEND_WINDOW", 10)
        d1, d2 = self.put(8), self.put(8)
        self.pair.pump()
        (rid,) = self.pair.hb.held
        self.pair.hb.held.pop(rid).errback(RemoteError(connection.TOO_LARGE, "no"))
        self.pair.pump()
        self.failureResultOf(d1, RemoteError)
        self.assertEqual(self.served(), [8, 8])
        self.assertNoResult(d2)  # sent once the error freed the window, and now being answered

    def test_oversized_payload_alone(self) -> None:
        """A payload larger than the whole window still goes, when nothing else is in flight."""
        self.patch(connection, "SEND_WINDOW", 10)
        d = self.put(20)
        self.pair.pump()
        self.assertEqual(self.served(), [20])
        d2 = self.put(1)
        self.pair.pump()
        self.assertEqual(self.served(), [20])
        self.answer_first()
        self.assertEqual(self.served(), [20, 1])
        self.successResultOf(d)
        self.assertNoResult(d2)

    def test_no_overtaking(self) -> None:
        """Requests wait in order: a small one does not pass a large one waiting for room (no starvation)."""
        self.patch(connection, "SEND_WINDOW", 10)
        self.put(6)
        self.put(8)
        self.put(2)  # would fit beside the first, but the 8 waits before it
        self.pair.pump()
        self.assertEqual(self.served(), [6])
        self.answer_first()
        self.assertEqual(self.served(), [6, 8, 2])

    def test_waiting_request_times_out(self) -> None:
        self.patch(connection, "SEND_WINDOW", 10)
        d1 = self.put(8, timeout=60)
        d2 = self.put(8, timeout=5)
        d3 = self.put(1, timeout=60)
        self.pair.pump()
        self.assertEqual(self.served(), [8])
        self.pair.take(self.pair.a)
        self.pair.clock.advance(5)
        self.assertIn("no answer within 5 s", str(self.failureResultOf(d2, RequestTimeout).value))
        self.pair.pump()
        # no CANCEL for a request never sent; the one waiting behind it goes, as it fits
        self.assertEqual(kinds(self.pair.take(self.pair.a)), [("PUT_BLOCK", False)])
        self.assertEqual(self.served(), [8, 1])
        self.answer_first()
        self.successResultOf(d1)
        self.answer_first()
        self.successResultOf(d3)
        self.assertEqual(self.served(), [8, 1])  # the timed-out one was never sent

    def test_waiting_request_cancelled(self) -> None:
        self.patch(connection, "SEND_WINDOW", 10)
        self.put(8)
        d2 = self.put(8)
        self.pair.pump()
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.answer_first()
        self.assertEqual(self.served(), [8])
        self.assertEqual(self.pair.a.idle_since, self.pair.a.last_used)


class ServingCapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.hb.handler = self.pair.hb.hold
        self.ds: list[Deferred[Response]] = []

    def send(self, n: int) -> None:
        self.ds += [self.pair.a.request(GET_BLOCK, {"cid": cid(i)}) for i in range(n)]

    def test_cap_pauses_reading(self) -> None:
        pair = self.pair
        self.send(MAX_SERVING - 1)
        pair.pump()
        self.assertEqual(pair.tb.producerState, "producing")
        self.send(1)
        pair.pump()
        self.assertEqual(len(pair.hb.held), MAX_SERVING)
        self.assertEqual(pair.tb.producerState, "paused")
        self.send(5)
        pair.pump()  # these stay in the socket: b is not reading
        self.assertEqual(len(pair.hb.requests), MAX_SERVING)
        held = sorted(pair.hb.held)
        for rid in held[: MAX_SERVING - MAX_SERVING // 2 - 1]:
            pair.hb.answer(rid)
        self.assertEqual(pair.tb.producerState, "paused")  # more than half still being answered
        pair.hb.answer(held[MAX_SERVING - MAX_SERVING // 2 - 1])
        self.assertEqual(len(pair.hb.held), MAX_SERVING // 2)
        self.assertEqual(pair.tb.producerState, "producing")  # "until it is down to 8" (docs/protocol.md)
        pair.pump()
        self.assertEqual(len(pair.hb.requests), MAX_SERVING + 5)
        while pair.hb.held:
            pair.hb.answer(min(pair.hb.held))
        pair.pump()
        for d in self.ds:
            self.successResultOf(d)
        self.assertEqual(pair.tb.producerState, "producing")

    def test_cap_within_one_read(self) -> None:
        """Requests past the cap that arrive in the same read wait too: the host never holds more."""
        pair = self.pair
        self.send(MAX_SERVING + 4)
        pair.pump()  # one chunk
        self.assertEqual(len(pair.hb.requests), MAX_SERVING)
        self.assertEqual(pair.tb.producerState, "paused")
        while pair.hb.held:
            self.assertLessEqual(len(pair.hb.held), MAX_SERVING)
            pair.hb.answer(min(pair.hb.held))
            pair.pump()
        self.assertEqual(len(pair.hb.requests), MAX_SERVING + 4)
        for d in self.ds:
            self.successResultOf(d)
        self.assertEqual(pair.tb.producerState, "producing")

    def test_unread_answers_pause_reading(self) -> None:
        """A peer that asks and never reads: once 4 MiB of answers wait, we stop reading its requests."""
        lone = Lone()
        lone.accept()
        lone.host.handler = lambda conn, f: Response({}, b"x" * MIB)  # answered at once, 1 MiB each
        lone.proto.pauseProducing()  # the transport is full: the peer does not read
        for rid in range(1, 11):
            lone.feed(Frame(GET_BLOCK, 0, rid, {"cid": CID}))
        self.assertEqual(len(lone.host.requests), 4)  # 4 answers of 1 MiB + headers reach the 4 MiB mark
        self.assertEqual(lone.t.producerState, "paused")
        lone.proto.resumeProducing()  # the peer reads again: answers go out, the rest are served
        self.assertEqual(len(lone.host.requests), 10)
        self.assertEqual(lone.t.producerState, "producing")
        self.assertEqual(sum(1 for f in lone.written() if f.is_response), 10)

    def test_answers_never_read_cut_the_connection(self) -> None:
        self.patch(connection, "ANSWERS_LIMIT", 3 * MIB)
        self.patch(connection, "ANSWERS_PAUSE", 8 * MIB)
        lone = Lone()
        lone.accept()
        lone.host.handler = lambda conn, f: Response({}, b"x" * MIB)
        lone.proto.pauseProducing()
        for rid in range(1, 5):
            lone.feed(Frame(GET_BLOCK, 0, rid, {"cid": CID}))
        self.assertTrue(lone.t.disconnected)
        lone.lose()
        self.assertIn("does not read its answers", lone.host.lost_reasons[0])

    def test_cancelled_work_keeps_its_slot(self) -> None:
        """CANCEL cannot be used to pile up work: a cancelled request is held until its work ends."""
        pair = self.pair
        self.send(MAX_SERVING)
        pair.pump()
        self.assertEqual(pair.tb.producerState, "paused")
        for d in self.ds:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        pair.pump()
        self.assertEqual(len(pair.hb.held), MAX_SERVING)
        self.assertEqual(pair.tb.producerState, "paused")
        while pair.hb.held:
            pair.hb.answer(min(pair.hb.held))
        self.assertEqual(pair.tb.producerState, "producing")
        self.assertEqual([f for f in pair.take(pair.b) if f.is_response], [])  # no answers to cancelled requests

    def test_immediate_answers_do_not_count(self) -> None:
        self.pair.hb.handler = self.pair.hb.echo
        self.send(MAX_SERVING * 3)
        self.pair.pump()
        self.assertEqual(self.pair.tb.producerState, "producing")
        for d in self.ds:
            self.successResultOf(d)

    def test_ping_waits_while_reading_paused(self) -> None:
        """PINGs are answered by the protocol; while reading is paused they wait like everything else."""
        pair = self.pair
        self.send(MAX_SERVING)
        pair.pump()
        p = pair.a.ping()
        pair.pump()
        self.assertNoResult(p)
        for rid in sorted(pair.hb.held):
            pair.hb.answer(rid)
        pair.pump()
        self.successResultOf(p)


# -- 9. producer ------------------------------------------------------------------------------------------------


class ProducerTests(SynchronousTestCase):
    def test_paused_writes_nothing(self) -> None:
        pair = Pair()
        pair.a.pauseProducing()
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        p = pair.a.ping()
        self.assertEqual(pair.ta.value(), b"")
        pair.a.resumeProducing()
        self.assertEqual(kinds(pair.written(pair.a)), [("GET_BLOCK", False), ("PING", False)])
        pair.pump()
        self.successResultOf(d)
        self.successResultOf(p)

    def test_stop_producing(self) -> None:
        pair = Pair()
        pair.a.stopProducing()
        pair.a.request(GET_BLOCK, {"cid": CID}).addErrback(lambda f: None)
        self.assertEqual(pair.ta.value(), b"")
        pair.disconnect()

    def test_paused_answers_wait(self) -> None:
        pair = Pair()
        pair.b.pauseProducing()
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        pair.pump()
        self.assertEqual(len(pair.hb.requests), 1)
        self.assertNoResult(d)
        pair.b.resumeProducing()
        pair.pump()
        self.successResultOf(d)

    def test_fair_order(self) -> None:
        """Control first; then bulk requests and bulk responses take turns, one frame each."""
        pair = Pair()
        pair.a.pauseProducing()
        # b asks a for three blocks: a's answers (with payloads) queue as bulk responses
        gets = [pair.b.request(GET_BLOCK, {"cid": cid(i)}) for i in range(3)]
        pair.ha.handler = lambda conn, f: Response({"n": f.header["cid"][-1]}, b"block" * 10)
        pair.pump()
        self.assertEqual(len(pair.ha.requests), 3)
        # a's own requests with payloads queue as bulk requests, then a PING as control
        puts = [pair.a.request(PUT_BLOCK, {"cid": cid(i)}, b"put" * 10) for i in range(4)]
        ping = pair.a.ping()
        self.assertEqual(pair.ta.value(), b"")
        pair.a.resumeProducing()
        self.assertEqual(
            kinds(pair.written(pair.a)),
            [("PING", False)] + [("PUT_BLOCK", False), ("GET_BLOCK", True)] * 3 + [("PUT_BLOCK", False)],
        )
        pair.pump()
        self.successResultOf(ping)
        for i, d in enumerate(gets):
            self.assertEqual(self.successResultOf(d).header, {"n": i})
        for d in puts:
            self.successResultOf(d)

    def test_control_between_bulk(self) -> None:
        """A PING queued behind many bulk frames waits for at most the one being written."""
        lone = Lone(transport=SmallBufferTransport())
        lone.accept()
        lone.t.clear()
        lone.proto.pauseProducing()
        for i in range(5):
            lone.proto.request(PUT_BLOCK, {"cid": cid(i)}, b"x" * 1000)
        lone.proto.resumeProducing()  # the transport takes one frame and pauses us
        self.assertEqual(kinds(lone.written()), [("PUT_BLOCK", False)])
        lone.proto.ping()
        lone.t.clear()  # the socket drained
        lone.proto.resumeProducing()
        self.assertEqual(kinds(lone.written()), [("PING", False), ("PUT_BLOCK", False)])


# -- 10, 11. timers ---------------------------------------------------------------------------------------------


class KeepaliveTests(SynchronousTestCase):
    def test_silent_peer(self) -> None:
        pair = Pair()  # accepted at t=0; from now on nothing reaches a
        step(pair.clock, KEEPALIVE - 0.5)
        self.assertEqual(pair.written(pair.a), [])
        pair.clock.advance(0.5)
        (ping,) = pair.written(pair.a)
        self.assertEqual((ping.type, ping.flags), (PING, 0))
        step(pair.clock, IDLE_LIMIT - KEEPALIVE - 0.5)
        self.assertFalse(pair.ta.disconnecting)
        pair.clock.advance(0.5)
        self.assertTrue(pair.ta.disconnected)
        pair.disconnect()
        (why,) = pair.ha.lost_reasons
        self.assertIn("silent for 60 s", why)

    def test_part_of_a_frame_counts_as_traffic(self) -> None:
        """A large frame still arriving is not silence, although no frame completed (dataReceived reads no clock)."""
        lone = Lone()
        lone.accept()
        lone.t.clear()
        lone.clock.advance(10)
        lone.feed(raw(Frame(PUT_BLOCK, 0, 1, {"cid": CID}, b"x" * 5000))[:3000])  # part of a frame at t=10
        lone.clock.advance(5.5)  # t=15.5: the check at 15 saw bytes arrive
        self.assertEqual(lone.written(), [])
        lone.clock.advance(15)  # t=30.5: nothing since t=15
        self.assertEqual(kinds(lone.written()), [("PING", False)])

    def test_not_reading_is_not_silence(self) -> None:
        """While we do not read (serving cap), the peer cannot be heard: that is not a reason to close."""
        lone = Lone()
        lone.accept()
        lone.proto._reading_paused = True
        lone.clock.advance(IDLE_LIMIT + 30)
        self.assertFalse(lone.t.disconnecting)

    def test_traffic_resets(self) -> None:
        pair = Pair()
        pair.clock.advance(10)
        pair.b.request(GET_BLOCK, {"cid": CID})  # a hears from b at t=10
        pair.pump()
        pair.take(pair.a)
        step(pair.clock, KEEPALIVE - 10 + 1)  # t=16: 16 s since the HELLO, but a heard from b 6 s ago
        self.assertEqual(pair.written(pair.a), [])
        step(pair.clock, 8.5)  # t=24.5
        self.assertEqual(pair.written(pair.a), [])
        pair.clock.advance(0.5)  # t=25: 15 s since a last heard from b
        self.assertEqual(kinds(pair.written(pair.a)), [("PING", False)])
        pair.pump()  # answered at t=25: the idle limit counts from there
        step(pair.clock, IDLE_LIMIT - 0.5)
        self.assertFalse(pair.ta.disconnecting)
        pair.clock.advance(0.5)
        self.assertTrue(pair.ta.disconnected)
        pair.disconnect()

    def test_answered_keepalive_keeps_open(self) -> None:
        pair = Pair()
        for _ in range(40):
            pair.clock.advance(KEEPALIVE / 2)
            pair.pump()
        self.assertFalse(pair.ta.disconnecting or pair.tb.disconnecting)
        self.assertEqual(pair.a.last_used, 0)
        pings = [f for f in pair.sent[pair.a] if f.type == PING and not f.is_response]
        self.assertGreater(len(pings), 3)
        self.assertLess(len(pings), 25)

    def test_no_keepalive_before_hello(self) -> None:
        lone = Lone()
        lone.clock.advance(KEEPALIVE)
        self.assertEqual(kinds(lone.written()), [("HELLO", False)])


class HelloTimeoutTests(SynchronousTestCase):
    def test_hello_timeout(self) -> None:
        lone = Lone()
        lone.clock.advance(HELLO_TIMEOUT - 0.1)
        self.assertFalse(lone.t.disconnecting)
        lone.clock.advance(0.1)
        self.assertTrue(lone.t.disconnected)
        lone.lose()
        self.assertEqual(lone.host.lost_reasons, ["no HELLO within 15 s"])
        f = lone.ready[0]
        f.trap(ConnectionClosed)
        self.assertIn("no HELLO within 15 s", f.getErrorMessage())

    def test_partial_hello_does_not_count(self) -> None:
        lone = Lone()
        data = hello()
        lone.feed(data[:-1])
        lone.clock.advance(HELLO_TIMEOUT)
        self.assertTrue(lone.t.disconnected)
        lone.lose()


# -- 12, 13. closing --------------------------------------------------------------------------------------------


class CloseTests(SynchronousTestCase):
    def test_connection_lost(self) -> None:
        self.patch(connection, "SEND_WINDOW", 10)
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        pair.ha.handler = pair.ha.hold
        d1 = pair.a.request(PUT_BLOCK, {"cid": CID}, b"x" * 8)  # in flight
        d2 = pair.a.request(PUT_BLOCK, {"cid": CID}, b"y" * 8)  # waiting for the window
        d3 = pair.a.request(GET_BLOCK, {"cid": CID})  # in flight
        e = pair.b.request(GET_BLOCK, {"cid": CID})  # being served by a's host
        pair.pump()
        self.assertEqual(len(pair.ha.held), 1)
        closed = pair.a.when_closed()
        self.assertNoResult(closed)
        pair.disconnect()
        for d in (d1, d2, d3, e):
            self.assertIn("connection done", str(self.failureResultOf(d, ConnectionClosed).value))
        self.assertEqual(pair.ha.cancelled, list(pair.ha.held))
        self.assertEqual(sorted(pair.hb.cancelled), sorted(pair.hb.held))
        self.assertIsNone(self.successResultOf(closed))
        self.assertIsNone(self.successResultOf(pair.a.when_closed()))  # at once, now
        for host in (pair.ha, pair.hb):
            (why,) = host.lost_reasons
            self.assertIn("connection done", why)
        self.assertEqual(pair.ready[pair.a], [pair.a])
        self.assertEqual(pair.clock.getDelayedCalls(), [])  # every timer is gone
        self.assertRaises(ConnectionClosed, pair.a.request, PING)
        self.assertEqual(pair.a.idle_since, pair.a.last_used)

    def test_lost_before_accepted(self) -> None:
        pair = Pair(start=False)
        waiting = pair.a.when_closed()  # before connectionMade: waits
        pair.a.makeConnection(pair.ta)
        pair.disconnect(ConnectionDone("refused"))
        self.assertIsNone(self.successResultOf(waiting))
        (f,) = pair.ready[pair.a]
        f.trap(ConnectionClosed)
        self.assertIn("refused", f.getErrorMessage())
        self.assertEqual(pair.ha.accepted_conns, [])
        (why,) = pair.ha.lost_reasons
        self.assertIn("refused", why)
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        pair = Pair()
        pair.take(pair.a)
        pair.a.close("going away")
        (bye,) = pair.written(pair.a)
        self.assertEqual((bye.type, bye.flags, bye.request_id, bye.header), (BYE, 0, 0, {"reason": "going away"}))
        self.assertTrue(pair.ta.disconnecting)
        self.assertFalse(pair.ta.disconnected)
        # with nothing left to write the producer is unregistered: TLS only shuts down once it is
        self.assertIsNone(pair.ta.producer)
        self.assertRaises(ConnectionClosed, pair.a.request, PING)
        self.assertRaises(ConnectionClosed, pair.a.ping)
        pair.a.close("again")
        self.assertEqual(len(pair.written(pair.a)), 1)
        pair.pump()
        self.assertTrue(pair.b.closing)
        self.assertEqual(pair.b.close_reason, "peer said goodbye: going away")
        self.assertRaises(ConnectionClosed, pair.b.request, PING)
        pair.disconnect()
        self.assertEqual(pair.ha.lost_reasons, ["going away"])
        self.assertEqual(pair.hb.lost_reasons, ["peer said goodbye: going away"])

    def test_close_flushes_queue(self) -> None:
        """BYE goes first, what was queued follows, and only then is the producer unregistered."""
        pair = Pair()
        pair.take(pair.a)
        pair.a.pauseProducing()
        d = pair.a.request(PUT_BLOCK, {"cid": CID}, b"last")
        pair.a.close("done")
        self.assertEqual(pair.ta.value(), b"")
        self.assertIs(pair.ta.producer, pair.a)
        pair.a.resumeProducing()
        self.assertEqual(kinds(pair.written(pair.a)), [("BYE", False), ("PUT_BLOCK", False)])
        self.assertIsNone(pair.ta.producer)
        pair.pump()
        self.assertEqual(len(pair.hb.requests), 0)  # b is closing: it refuses the request
        (resp,) = pair.take(pair.b)[1:]
        self.assertEqual(resp.header["code"], SHUTTING_DOWN)
        pair.disconnect()
        self.failureResultOf(d, ConnectionClosed)  # a stopped reading when it closed

    def test_requests_after_peer_bye(self) -> None:
        lone = Lone()
        lone.accept()
        lone.feed(Frame(BYE, header={"reason": "stopping"}))
        lone.feed(Frame(GET_BLOCK, 0, 4, {"cid": CID}))
        lone.feed(Frame(PING, 0, 5))
        self.assertEqual(lone.host.requests, [])
        bye_answer, ping_answer = lone.written()[1:]
        self.assertEqual((bye_answer.type, bye_answer.flags, bye_answer.request_id), (GET_BLOCK, RESPONSE | ERROR, 4))
        self.assertEqual(bye_answer.header["code"], SHUTTING_DOWN)
        self.assertEqual((ping_answer.type, ping_answer.request_id), (PING, 5))
        self.assertFalse(lone.t.disconnecting)  # the peer closes; we just wait for it
        lone.lose()
        self.assertEqual(lone.host.lost_reasons, ["peer said goodbye: stopping"])

    def test_keep_reading_after_peer_bye(self) -> None:
        """After the peer's BYE we keep reading (its queued frames follow the BYE) until it closes; answering
        one of its requests meanwhile must not close our side."""
        pair = Pair()
        pair.ha.handler = pair.ha.hold
        e = pair.b.request(GET_BLOCK, {"cid": CID})  # a's host is answering this one
        pair.pump()
        pair.b.pauseProducing()  # b's socket is full: its answers (with blocks) queue up
        pair.hb.handler = lambda conn, f: Response({}, b"block")
        ds = [pair.a.request(GET_BLOCK, {"cid": cid(i)}) for i in range(2)]
        pair.pump()
        pair.b.close("stopping")
        pair.b.resumeProducing()  # BYE, then the two answers
        data = pair.tb.value()
        pair.tb.clear()
        bye_end = len(raw(Frame(BYE, header={"reason": "stopping"})))
        pair.a.dataReceived(data[:bye_end])
        self.assertTrue(pair.a.closing)
        (rid,) = pair.ha.held
        pair.ha.answer(rid)  # a answers b's request after the BYE
        self.assertFalse(pair.ta.disconnecting)  # a did not stop reading
        pair.a.dataReceived(data[bye_end:])
        for d in ds:
            self.assertEqual(bytes(self.successResultOf(d).payload), b"block")
        self.assertTrue(pair.tb.disconnecting)
        pair.disconnect()
        self.failureResultOf(e, ConnectionClosed)  # b had stopped reading

    def test_requests_after_our_close(self) -> None:
        lone = Lone()
        lone.accept()
        lone.proto.close("stopping")
        lone.feed(Frame(PUT_BLOCK, 0, 4, {"cid": CID}, b"data"))
        self.assertEqual(lone.host.requests, [])
        resp = lone.written()[-1]
        self.assertEqual((resp.request_id, resp.header["code"]), (4, SHUTTING_DOWN))
        lone.lose()

    def test_answers_after_close_still_sent(self) -> None:
        """Requests being answered when we close still get their answers out."""
        lone = Lone(transport=StringTransport(lenient=True))
        lone.host.handler = lone.host.hold
        lone.accept()
        for rid in range(1, MAX_SERVING + 1):
            lone.feed(Frame(GET_BLOCK, 0, rid, {"cid": CID}))
        self.assertEqual(lone.t.producerState, "paused")
        lone.proto.close("stopping")
        for rid in range(1, MAX_SERVING + 1):
            lone.host.answer(rid, {}, b"b")
        answers = [f for f in lone.written() if f.is_response]
        self.assertEqual(sorted(f.request_id for f in answers), list(range(1, MAX_SERVING + 1)))
        lone.lose()

    def test_close_before_connected(self) -> None:
        pair = Pair(start=False)
        pair.a.close("never mind")
        self.assertFalse(pair.a.closing)
        pair.start()
        self.assertTrue(pair.a.accepted)

    def test_fail(self) -> None:
        pair = Pair()
        pair.a.fail("local decision")
        pair.a.fail("second reason")
        self.assertTrue(pair.ta.disconnected)
        pair.disconnect()
        self.assertEqual(pair.ha.lost_reasons, ["local decision"])


# -- 14. last_used / idle_since ---------------------------------------------------------------------------------


class IdleTests(SynchronousTestCase):
    def test_pings_do_not_count(self) -> None:
        pair = Pair()
        pair.clock.advance(10)
        pair.a.ping()
        pair.pump()
        self.assertEqual((pair.a.last_used, pair.b.last_used), (0, 0))
        self.assertEqual((pair.a.idle_since, pair.b.idle_since), (0, 0))
        pair.a.ping()  # unanswered for now: a PING in flight does not make the connection busy
        pair.clock.advance(5)
        self.assertEqual(pair.a.idle_since, 0)
        pair.pump()

    def test_requests_count(self) -> None:
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        pair.clock.advance(10)
        d = pair.a.request(GET_BLOCK, {"cid": CID})
        self.assertEqual(pair.a.last_used, 10)
        pair.clock.advance(2)
        pair.pump()
        self.assertEqual(pair.b.last_used, 12)
        pair.clock.advance(3)
        self.assertEqual(pair.a.idle_since, 15)  # busy: now
        self.assertEqual(pair.b.idle_since, 15)
        pair.hb.answer(min(pair.hb.held))
        pair.pump()
        self.successResultOf(d)
        self.assertEqual((pair.a.idle_since, pair.b.idle_since), (10, 12))

    def test_waiting_counts_as_busy(self) -> None:
        self.patch(connection, "SEND_WINDOW", 10)
        pair = Pair()
        pair.hb.handler = pair.hb.hold
        d1 = pair.a.request(PUT_BLOCK, {"cid": CID}, b"x" * 10)
        d2 = pair.a.request(PUT_BLOCK, {"cid": CID}, b"x" * 10)
        pair.pump()
        pair.hb.answer(min(pair.hb.held))
        pair.pump()
        pair.hb.held.clear()  # never answered
        self.successResultOf(d1)
        pair.clock.advance(4)
        self.assertEqual(pair.a.idle_since, 4)
        pair.disconnect()
        self.failureResultOf(d2, ConnectionClosed)
