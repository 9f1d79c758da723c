"""One peer connection: framed, multiplexed requests over TLS, with flow control both ways.

``PeerProtocol`` speaks docs/protocol.md on top of a TLS transport. It sends HELLO at once, accepts the peer
only once the peer's HELLO arrives (and names the key of its certificate), then carries many requests at a
time, matched by request id, each with a deadline. Outgoing frames wait in three queues (control, our
requests with payloads, our responses with payloads) and are written by a push producer registered on the
transport, so a slow reader pauses us instead of growing our memory; a window of unacknowledged request
bytes bounds what we send, and a cap on requests being answered bounds what a peer can make us hold (past
it we stop reading the socket). Anything malformed closes this connection, with a logged reason, and
affects nothing else.

What the node does with requests (blocks, gossip) is the ``PeerHost``'s business; this module only moves
frames.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cas.base.nodeid import format_node_id, short_node_id
from cas.peer import frames
from cas.peer.frames import Frame, FrameDecoder, FrameError
from cas.peer.observed import canonical_ip
from cas.peer.peertls import IReceiveBuffer, PeerTLSProtocol, peer_node_id

log = Logger()

PROTOCOL_VERSIONS = (1, 2, 3)
REQUEST_TIMEOUT = 30.0  # default deadline of a request, seconds
HELLO_TIMEOUT = 15.0  # the TLS handshake and the peer's HELLO must be done by then
KEEPALIVE = 15.0  # a PING after this long without receiving anything
IDLE_LIMIT = 60.0  # a connection silent this long is half-open: closed
SEND_WINDOW = 8 << 20  # unacknowledged request payload bytes per connection
MAX_SERVING = 16  # peer requests being answered at once; past it we stop reading the socket
ANSWERS_PAUSE = 4 << 20  # bytes of our answers waiting to be written; past it we stop reading the socket
TLS_RECORD = 1 << 14  # the largest TLS record's plaintext: small pieces are gathered up to whole records
ANSWERS_LIMIT = 32 << 20  # past this the peer is not reading what it asked for: the connection is cut

# Error codes of error responses (docs/protocol.md).
NOT_FOUND = "not_found"
TOO_LARGE = "too_large"
OVER_QUOTA = "over_quota"
BAD_REQUEST = "bad_request"
SHUTTING_DOWN = "shutting_down"
BUSY = "busy"
INTERNAL = "internal"
ERROR_CODES = frozenset({NOT_FOUND, TOO_LARGE, OVER_QUOTA, BAD_REQUEST, SHUTTING_DOWN, BUSY, INTERNAL})


class PeerError(Exception):
    """A request that did not get an answer: the connection failed, the deadline passed, or the peer erred."""


class RemoteError(PeerError):
    """The peer answered with an error response (or a handler wants to send one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestTimeout(PeerError):
    pass


class NotSupported(PeerError):
    """The peer's protocol version has no such request (a LEASE to a version-1 node)."""


class ConnectionClosed(PeerError):
    """The connection ended before an answer. ``clean``: it was being closed with a BYE (by either side: idle,
    duplicate, shutting down), so the same request may well succeed on a new connection."""

    def __init__(self, message: str, clean: bool = False) -> None:
        super().__init__(message)
        self.clean = clean


class SelfConnection(ConnectionClosed):
    """The address dialled is this node itself."""


@attrs.frozen
class Response:
    header: dict[str, Any]
    payload: bytes | memoryview


@attrs.frozen
class HelloInfo:
    """What a peer said about itself in its HELLO."""

    node_id: bytes
    version: int
    software: str
    addresses: list[Any]
    record: bytes | None
    nonce: bytes  # random per connection: with the dialler's id, it names the connection the same way on both sides
    observed: str | None = None  # the IP the peer sees this connection come from (canonical text), if it said


class PeerHost(TypingProtocol):
    """The node side of every connection: our HELLO, what to do with requests, and connection events."""

    node_id: bytes

    def hello(self) -> dict[str, Any]:
        """Our HELLO header, without ``versions`` and ``node_id`` (the protocol adds them)."""

    def accepted(self, conn: PeerProtocol) -> None:
        """The peer sent a valid HELLO: the connection may carry requests."""

    def lost(self, conn: PeerProtocol, reason: str) -> None:
        """The connection is gone (after ``accepted`` or not)."""

    def handle(self, conn: PeerProtocol, frame: Frame) -> Deferred[Response] | Response:
        """Answer a PEERS/PUT_BLOCK/GET_BLOCK/HAS request; raise ``RemoteError`` for an error response."""


@attrs.define
class _Pending:
    deferred: Deferred[Response]
    type: int
    size: int  # payload bytes counted in the window
    timer: IDelayedCall | None
    pieces: list[bytes | memoryview] | None = None  # the encoded request, until it is queued for writing


def peer_text(value: Any, limit: int = 100) -> str:
    """Peer-supplied text as it may be logged: printable ASCII, bounded."""
    if not isinstance(value, str):
        return "?"
    return "".join(c if " " <= c <= "~" else "?" for c in value[:limit])


@implementer(IPushProducer, IHandshakeListener, IReceiveBuffer)
class PeerProtocol(Protocol):
    """The framed protocol of one connection. ``initiator`` is True on the side that dialled."""

    def __init__(
        self, host: PeerHost, clock: IReactorTime, initiator: bool, expected: bytes | None = None,
        identify: Callable[[Any], bytes | None] = peer_node_id,
    ) -> None:
        self.host = host
        self.identify = identify  # the peer's node id from the transport (its TLS certificate)
        self.clock = clock
        self.initiator = initiator
        self.expected = expected
        self.peer_id: bytes | None = None  # from the certificate, once the handshake completed
        self.hello_info: HelloInfo | None = None
        self.accepted = False
        self.closing = False
        self.our_bye: str | None = None  # the reason of the BYE we sent (close())
        self.peer_bye: str | None = None  # the reason of the BYE the peer sent
        self._to_self = False  # the peer turned out to be this node
        self._lose_called = False
        self._bye_sent = False  # we closed: the transport is closed once the queues drain
        self.close_reason: str | None = None
        self.remote = "?"
        self.remote_ip: str | None = None
        self._decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, _Pending] = {}
        self._unacked = 0  # request payload bytes sent or queued and not yet answered
        self._waiting: deque[tuple[Frame, _Pending, int]] = deque()  # requests waiting for window room
        self._serving: dict[int, Deferred[Any]] = {}
        self._reading_paused = False
        self._dispatching = False
        self._answer_bytes = 0  # bytes of response frames queued, not yet written
        self._suppressed: set[int] = set()  # requests the peer cancelled: no answer when their work ends
        self._backlog: deque[Frame] = deque()  # frames read past the serving cap: dispatched as answers go out
        # outgoing frames, encoded when queued
        self._control: deque[tuple[Frame, list[bytes | memoryview]]] = deque()
        self._bulk_requests: deque[tuple[Frame, list[bytes | memoryview]]] = deque()
        self._bulk_responses: deque[tuple[Frame, list[bytes | memoryview]]] = deque()
        self._turn = 0
        self._paused = False
        self._views = False
        self._hello_timer: IDelayedCall | None = None
        self._keepalive_timer: IDelayedCall | None = None
        self._last_rx = 0.0
        self._rx_bytes_seen = 0  # bytes_in at the last keepalive check
        self._connected = False
        self.rtt: float | None = None
        self.nonce = os.urandom(8)
        self.bytes_in = 0
        self.bytes_out = 0
        self.ready: Deferred[PeerProtocol] = Deferred()  # fires once accepted, fails if lost before
        self.last_used = 0.0  # last request either way, PINGs aside (for closing idle connections)
        self._closed_waiters: list[Deferred[None]] = []

    # -- naming --------------------------------------------------------------------------------------------
    def dialler_key(self, own_id: bytes) -> tuple[bytes, bytes]:
        """(dialler's node id, dialler's nonce): the same for this connection on both sides, so that two
        nodes holding two connections to each other agree on which one to keep (the lower key)."""
        assert self.peer_id is not None and self.hello_info is not None
        return (own_id, self.nonce) if self.initiator else (self.peer_id, self.hello_info.nonce)

    def label(self) -> str:
        who = short_node_id(self.peer_id) if self.peer_id else "?"
        return f"peer {who} at {self.remote}"

    def __repr__(self) -> str:
        return f"<PeerProtocol {self.label()}{' accepted' if self.accepted else ''}>"

    # -- connection life -----------------------------------------------------------------------------------
    def connectionMade(self) -> None:
        self._connected = True
        self._views = isinstance(self.transport, PeerTLSProtocol)  # takes memoryviews (see _pump)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        self.remote = f"{host}:{peer.port}" if host is not None else str(peer)  # type: ignore[attr-defined]
        self.remote_ip = canonical_ip(host)  # None for a non-IP transport (unix socket, memory)
        self._last_rx = self.last_used = self.clock.seconds()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._hello_timer = self.clock.callLater(HELLO_TIMEOUT, self._hello_timeout)
        header = dict(self.host.hello())
        header["versions"] = list(getattr(self.host, "versions", PROTOCOL_VERSIONS))
        header["node_id"] = self.host.node_id
        header["nonce"] = self.nonce
        if self.remote_ip is not None:
            header["observed"] = self.remote_ip  # where we see the peer: how it learns an address behind NAT
        self._send(Frame(frames.HELLO, header=header), self._control)

    def handshakeCompleted(self) -> None:
        self.peer_id = self.identify(self.transport)
        if self.peer_id is None:
            self.fail("no peer certificate after the handshake")
        elif self.peer_id == self.host.node_id:
            self._to_self = True
            self.fail("connected to ourselves")
        elif self.expected is not None and self.peer_id != self.expected:  # the verify callback already refuses this
            self.fail(f"presented node {format_node_id(self.peer_id)}, expected {format_node_id(self.expected)}")

    def _hello_timeout(self) -> None:
        self._hello_timer = None
        self.fail(f"no HELLO within {HELLO_TIMEOUT:.0f} s")

    def fail(self, reason: str) -> None:
        """Close at once because of a protocol violation or a local decision (logged once)."""
        if self.close_reason is None:
            self.close_reason = reason
            log.info("closing connection to {peer}: {reason}", peer=self.label(), reason=reason)
        if self._connected:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def close(self, reason: str) -> None:
        """A clean close: BYE, then whatever is queued goes out before the connection closes."""
        if self.closing or not self._connected:
            return
        self.closing = True
        self._bye_sent = True
        self.our_bye = reason
        if self.close_reason is None:
            self.close_reason = reason
        self._send(Frame(frames.BYE, header={"reason": reason}), self._control)  # closes once the queues drain

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connected = False
        why = self.close_reason or (reason.getErrorMessage() if reason is not None else "connection lost")
        for t in (self._hello_timer, self._keepalive_timer):
            if t is not None and t.active():
                t.cancel()
        self._hello_timer = self._keepalive_timer = None
        pending, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting, deque()
        for p in list(pending.values()) + [w[1] for w in waiting]:
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
            p.deferred.errback(ConnectionClosed(f"connection to {self.label()} closed: {why}", clean=self.closing))
        serving, self._serving = self._serving, {}
        for d in serving.values():
            d.cancel()
        self._backlog.clear()
        self._control.clear()
        self._bulk_requests.clear()
        self._bulk_responses.clear()
        self._answer_bytes = 0
        self._suppressed.clear()
        if not self.ready.called:
            kind = SelfConnection if self._to_self else ConnectionClosed
            self.ready.errback(kind(f"connection to {self.label()} failed: {why}"))
            self.ready.addErrback(lambda _f: None)  # nobody waited (an inbound connection): not an unhandled error
        self.host.lost(self, why)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is closed (at once if it already is)."""
        d: Deferred[None] = Deferred()
        if self._connected or self.transport is None:
            self._closed_waiters.append(d)
        else:
            d.callback(None)
        return d

    # -- receiving -----------------------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        # Called for every TLS record (16 KiB at most): kept to the minimum, no clock read. ``_last_rx`` moves
        # when a frame completes; the keepalive also counts bytes that arrived without completing one.
        if not self._connected:
            return
        self.bytes_in += len(data)
        try:
            received = self._decoder.feed(data)
        except FrameError as e:
            self.fail(str(e))
            return
        self._frames_in(received)

    def get_buffer(self) -> memoryview:
        """Where ``PeerTLSProtocol`` decrypts the next bytes (``IReceiveBuffer``): the frame decoder's buffer.

        Once the connection is lost or its decoder has failed, a scratch buffer whose bytes are dropped."""
        if self._connected and not self._decoder.failed:
            return self._decoder.get_buffer()
        return memoryview(bytearray(1 << 14))

    def buffer_updated(self, n: int) -> None:
        """``n`` bytes arrived in the buffer ``get_buffer`` gave: ``dataReceived`` without the bytes object."""
        if not self._connected or self._decoder.failed:
            return
        self.bytes_in += n
        try:
            received = self._decoder.buffer_updated(n)
        except FrameError as e:
            self.fail(str(e))
            return
        self._frames_in(received)

    def _frames_in(self, received: list[Frame] | tuple) -> None:
        if received:
            self._last_rx = self.clock.seconds()
            self._rx_bytes_seen = self.bytes_in
            self._backlog.extend(received)
            self._dispatch_backlog()

    def _busy(self) -> bool:
        return len(self._serving) >= MAX_SERVING or self._answer_bytes >= ANSWERS_PAUSE

    def _calm(self) -> bool:
        return len(self._serving) <= MAX_SERVING // 2 and self._answer_bytes <= ANSWERS_PAUSE // 2

    def _dispatch_backlog(self) -> None:
        """Dispatch the frames read while we are not busy (too many requests being answered, or too many
        answer bytes the peer has not read yet); pause reading the socket when busy and resume once calm,
        so that a peer can make us hold only a bounded amount whatever it sends or fails to read."""
        if self._dispatching:
            return  # called again from inside a dispatch: the loop below goes on
        self._dispatching = True
        try:
            while self._connected:
                if self._busy():
                    if not self._reading_paused:
                        self._reading_paused = True
                        self.transport.pauseProducing()  # type: ignore[union-attr]
                    return
                if self._reading_paused:
                    if not self._calm():
                        return
                    self._reading_paused = False
                    self.transport.resumeProducing()  # type: ignore[union-attr]
                if not self._backlog:
                    return
                frame = self._backlog.popleft()
                try:
                    self._dispatch(frame)
                except FrameError as e:
                    self._backlog.clear()
                    self.fail(str(e))
                    return
        finally:
            self._dispatching = False

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == frames.HELLO:
            return self._on_hello(frame)
        if not self.accepted:
            if frame.type == frames.BYE:  # e.g. no common version: the peer's reason is the one to log
                reason = frame.header.get("reason")
                raise FrameError(f"peer closed before HELLO: {peer_text(reason)}")
            raise FrameError(f"{frames.TYPE_NAMES[frame.type]} before HELLO")
        if self.version < frames.SINCE_VERSION.get(frame.type, 1):
            raise FrameError(f"{frames.TYPE_NAMES[frame.type]} on a version-{self.version} connection")
        if frame.is_response:
            return self._on_response(frame)
        if frame.type == frames.PING and not frame.header:  # others (dial-back) are for the host
            return self._respond(frame.request_id, frames.PING, Response({}, b""))
        if frame.type == frames.CANCEL:
            return self._on_cancel(frame)
        if frame.type == frames.BYE:
            self.peer_bye = peer_text(frame.header.get("reason"))
            self.close_reason = f"peer said goodbye: {self.peer_bye}"
            self.closing = True
            return None
        return self._serve(frame)

    def _on_hello(self, frame: Frame) -> None:
        if self.accepted:
            raise FrameError("a second HELLO")
        h = frame.header
        versions = h.get("versions")
        node_id = h.get("node_id")
        if not isinstance(versions, list) or not all(isinstance(v, int) for v in versions):
            raise FrameError("HELLO without a list of versions")
        if not isinstance(node_id, bytes) or len(node_id) != 32:
            raise FrameError("HELLO without a 32-byte node_id")
        if self.peer_id is None:
            self.peer_id = self.identify(self.transport)
        if self.peer_id is None or node_id != self.peer_id:
            raise FrameError("HELLO names another node than the certificate's key")
        if self.expected is not None and node_id != self.expected:  # handshakeCompleted checks this too, if called
            raise FrameError(f"HELLO from node {format_node_id(node_id)}, expected {format_node_id(self.expected)}")
        if node_id == self.host.node_id:
            self._to_self = True
            raise FrameError("connected to ourselves")
        ours = getattr(self.host, "versions", PROTOCOL_VERSIONS)  # a host may speak fewer (tests of old nodes)
        common = set(versions) & set(ours)
        if not common:
            self.close(f"no common protocol version (peer speaks {sorted(versions)[:8]}, we speak {list(ours)})")
            return
        nonce = h.get("nonce")
        if not isinstance(nonce, bytes) or len(nonce) != 8:
            raise FrameError("HELLO without an 8-byte nonce")
        software = h.get("software")
        addresses = h.get("addresses")
        record = h.get("record")
        self.hello_info = HelloInfo(
            node_id=node_id,
            version=max(common),
            software=software if isinstance(software, str) else "?",
            addresses=addresses if isinstance(addresses, list) else [],
            record=record if isinstance(record, bytes) else None,
            nonce=nonce,
            observed=canonical_ip(h.get("observed")),
        )
        self.accepted = True
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        self._schedule_keepalive()
        self.host.accepted(self)
        if not self.ready.called:
            self.ready.callback(self)

    def _on_response(self, frame: Frame) -> None:
        p = self._pending.get(frame.request_id)
        if p is None:
            if 0 < frame.request_id <= self._last_id:
                return  # a late answer to a request we gave up on (deadline): ignored
            raise FrameError(f"response to request {frame.request_id}, which was never sent")
        if frame.type != p.type:
            raise FrameError(
                f"{frames.TYPE_NAMES[frame.type]} response to {frames.TYPE_NAMES[p.type]} request {frame.request_id}")
        del self._pending[frame.request_id]
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        self._release(p.size)
        if frame.is_error:
            code, message = frame.header.get("code"), frame.header.get("message")
            p.deferred.errback(RemoteError(code if isinstance(code, str) else INTERNAL, message if isinstance(message, str) else ""))
        else:
            p.deferred.callback(Response(frame.header, frame.payload))

    def _on_cancel(self, frame: Frame) -> None:
        # The work is not cancelled (a block write must finish and be recorded, and it runs on a thread):
        # its answer is dropped, and it keeps its serving slot until it ends, so CANCEL cannot be used to
        # pile up work beyond MAX_SERVING.
        rid = frame.header.get("id")
        if isinstance(rid, int) and rid in self._serving:
            self._suppressed.add(rid)

    def _serve(self, frame: Frame) -> None:
        rid = frame.request_id
        if rid in self._serving:
            raise FrameError(f"request id {rid} reused while still being answered")
        self.last_used = self.clock.seconds()
        if self.closing:
            self._respond_error(rid, frame.type, SHUTTING_DOWN, "the connection is closing")
            return
        d = maybeDeferred(self.host.handle, self, frame)
        if d.called:  # answered at once (HAS from memory, an error): no need to track it
            d.addBoth(self._answer, rid, frame.type)
            return
        self._serving[rid] = d
        d.addBoth(self._answer, rid, frame.type)

    def _answer(self, result: Any, rid: int, type: int) -> None:
        self._serving.pop(rid, None)
        if rid in self._suppressed:
            self._suppressed.discard(rid)
            if isinstance(result, Failure):
                result = None  # cancelled by the peer: whatever happened, nobody waits for it
        elif self._connected:
            self._send_answer(result, rid, type)
        if self._connected and self._reading_paused:
            self._dispatch_backlog()  # resumes reading once calm

    def _send_answer(self, result: Any, rid: int, type: int) -> None:
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return  # the peer cancelled, or we are closing: no answer
            if result.check(RemoteError):
                err: RemoteError = result.value  # type: ignore[assignment]
                self._respond_error(rid, type, err.code, err.message)
            else:
                log.failure("answering {peer} failed", result, peer=self.label())
                self._respond_error(rid, type, INTERNAL, "the node failed to answer")
            return
        try:
            self._respond(rid, type, result)
        except Exception:  # not a Response, or a header we cannot encode
            log.failure("answering {peer} failed: cannot send {result!r}", peer=self.label(), result=result)
            self._respond_error(rid, type, INTERNAL, "the node failed to answer")

    def _respond(self, rid: int, type: int, response: Response) -> None:
        frame = Frame(type, frames.RESPONSE, rid, response.header, response.payload)
        self._send(frame, self._bulk_responses if len(response.payload) else self._control)

    def _respond_error(self, rid: int, type: int, code: str, message: str) -> None:
        self._send(Frame(type, frames.RESPONSE | frames.ERROR, rid, {"code": code, "message": message}), self._control)

    # -- requests ------------------------------------------------------------------------------------------
    def request(
        self, type: int, header: dict[str, Any] | None = None, payload: bytes | memoryview = b"",
        timeout: float = REQUEST_TIMEOUT,
    ) -> Deferred[Response]:
        """Send a request; fires with its ``Response``, or fails with ``RemoteError``/``RequestTimeout``/
        ``ConnectionClosed``. A request with a payload waits for room in the send window."""
        if not self._connected or not self.accepted or self.closing:
            raise ConnectionClosed(f"connection to {self.label()} is not open for requests", clean=self.closing)
        if self.version < frames.SINCE_VERSION.get(type, 1):
            raise NotSupported(f"{frames.TYPE_NAMES[type]}: {self.label()} speaks protocol version {self.version}")
        rid = next(self._ids)
        if rid > 0xFFFFFFFF:  # after 4 billion requests: start again (old ids are long answered)
            self._ids = itertools.count(2)
            rid = 1
        frame = Frame(type, 0, rid, header or {}, payload)
        pieces = frames.encode(frame)  # ValueError now, before anything is registered, rather than when it is written
        if type != frames.PING:
            self.last_used = self.clock.seconds()
        self._last_id = rid
        d: Deferred[Response] = Deferred(lambda _d: self._give_up(rid, "cancelled"))
        p = _Pending(d, type, len(payload), None, pieces)
        p.timer = self.clock.callLater(timeout, self._give_up, rid, f"no answer within {timeout:g} s")
        if p.size and (self._waiting or (self._unacked + p.size > SEND_WINDOW and self._unacked > 0)):  # in order
            self._waiting.append((frame, p, rid))
            return d
        self._launch(frame, p, rid)
        return d

    def _launch(self, frame: Frame, p: _Pending, rid: int) -> None:
        self._unacked += p.size
        self._pending[rid] = p
        pieces, p.pieces = p.pieces, None
        self._send(frame, self._bulk_requests if p.size else self._control, pieces)

    def _give_up(self, rid: int, why: str) -> None:
        p = self._pending.pop(rid, None)
        if p is None:
            for i, (_f, wp, wrid) in enumerate(self._waiting):
                if wrid == rid:
                    del self._waiting[i]
                    p = wp
                    self._release(0)  # those behind it may fit now
                    break
            else:
                return
        else:
            unsent = self._unqueue(rid, self._bulk_requests if p.size else self._control)
            self._release(p.size)
            if not unsent and self._connected:
                self._send(Frame(frames.CANCEL, header={"id": rid}), self._control)
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        if not p.deferred.called:
            err = RequestTimeout if why.startswith("no answer") else CancelledError
            p.deferred.errback(err(f"{frames.TYPE_NAMES[p.type]} to {self.label()}: {why}"))

    def _unqueue(self, rid: int, queue: deque[tuple[Frame, list[bytes | memoryview]]]) -> bool:
        """Drop our request ``rid`` if it is still queued, not written; True if it was."""
        for i, (f, _pieces) in enumerate(queue):
            if f.request_id == rid and not f.is_response:
                del queue[i]
                return True
        return False

    def _release(self, size: int) -> None:
        self._unacked -= size
        while self._waiting:
            frame, p, rid = self._waiting[0]
            if self._unacked > 0 and self._unacked + p.size > SEND_WINDOW:
                break
            self._waiting.popleft()
            self._launch(frame, p, rid)

    # -- sending -------------------------------------------------------------------------------------------
    def _send(
        self, frame: Frame, queue: deque[tuple[Frame, list[bytes | memoryview]]],
        pieces: list[bytes | memoryview] | None = None,
    ) -> None:
        if pieces is None:
            pieces = frames.encode(frame)  # a ValueError reaches the caller, not resumeProducing
        if frame.is_response:
            self._answer_bytes += sum(len(p) for p in pieces)
            if self._answer_bytes > ANSWERS_LIMIT:
                self.fail(f"the peer does not read its answers ({self._answer_bytes >> 20} MiB waiting)")
                return
        queue.append((frame, pieces))
        self._pump()

    def _next(self) -> tuple[Frame, list[bytes | memoryview]] | None:
        if self._control:
            return self._control.popleft()
        lanes = (self._bulk_requests, self._bulk_responses)
        for i in range(2):
            lane = lanes[(self._turn + i) % 2]
            if lane:
                self._turn = (self._turn + i + 1) % 2
                return lane.popleft()
        return None

    def _pump(self) -> None:
        batch: list[bytes | memoryview] = []  # small pieces (heads, small frames): one TLS write together
        try:
            while not self._paused and self._connected:
                item = self._next()
                if item is None:
                    if self._bye_sent and not self._lose_called:
                        # Everything queued is written: a transport with a registered producer only closes
                        # once the producer is unregistered.
                        self._flush(batch)
                        self._lose_called = True
                        self.transport.unregisterProducer()  # type: ignore[union-attr]
                        self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                pieces = item[1]
                size = sum(len(p) for p in pieces)
                self.bytes_out += size
                if item[0].is_response:
                    self._answer_bytes -= size
                if not self._views:  # plain transports take bytes, in one call
                    self.transport.writeSequence([bytes(p) for p in pieces])  # type: ignore[union-attr]
                    continue
                # PeerTLSProtocol: a block payload is written as it is (no join, no copy); heads and small
                # frames are gathered so that a burst of requests makes one TLS record, not one each.
                for p in pieces:
                    if len(p) < TLS_RECORD:
                        batch.append(p)
                        if sum(len(b) for b in batch) >= 4 * TLS_RECORD:
                            self._flush(batch)
                    else:
                        view = memoryview(p)
                        room = TLS_RECORD - sum(len(b) for b in batch) % TLS_RECORD
                        batch.append(view[:room])  # fill the record that carries the head
                        head = b"".join(batch)
                        batch.clear()
                        # head and payload: one bytes for the TCP transport, which sends it without a join
                        self.transport.writeSequence([head, view[room:]])  # type: ignore[union-attr]
        finally:
            self._flush(batch)

    def _flush(self, batch: list[bytes | memoryview]) -> None:
        if batch and self._connected:
            self.transport.write(b"".join(batch))  # type: ignore[union-attr]
        batch.clear()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()
        if self._reading_paused and self._connected:
            self._dispatch_backlog()  # answers went out: read again once calm

    def stopProducing(self) -> None:
        self._paused = True

    # -- keepalive -----------------------------------------------------------------------------------------
    def _schedule_keepalive(self, delay: float = KEEPALIVE) -> None:
        self._keepalive_timer = self.clock.callLater(delay, self._keepalive)

    def _keepalive(self) -> None:
        self._keepalive_timer = None
        if not self._connected:
            return
        now = self.clock.seconds()
        if self.bytes_in != self._rx_bytes_seen or self._reading_paused:
            # Part of a frame arrived since the last check, or we are the ones not reading: not silent.
            self._rx_bytes_seen = self.bytes_in
            self._last_rx = max(self._last_rx, now)
        silent = now - self._last_rx
        if silent >= IDLE_LIMIT:
            self.fail(f"silent for {silent:.0f} s")
            return
        if silent >= KEEPALIVE and not self.closing:
            self.ping(timeout=IDLE_LIMIT - silent).addErrback(lambda _f: None)
        # next: when KEEPALIVE s of silence are reached, then every KEEPALIVE s until IDLE_LIMIT
        self._schedule_keepalive(KEEPALIVE - silent if silent < KEEPALIVE else min(KEEPALIVE, IDLE_LIMIT - silent))

    def ping(self, timeout: float = REQUEST_TIMEOUT) -> Deferred[float]:
        """Round-trip time of a PING, in seconds (also kept in ``rtt``)."""
        start = self.clock.seconds()

        def done(_r: Response) -> float:
            self.rtt = self.clock.seconds() - start
            return self.rtt

        return self.request(frames.PING, timeout=timeout).addCallback(done)

    @property
    def last_heard(self) -> float:
        """When a frame from the peer last completed (reactor clock)."""
        return self._last_rx

    @property
    def version(self) -> int:
        """The protocol version both sides speak (1 until the peer's HELLO arrived)."""
        return self.hello_info.version if self.hello_info is not None else 1

    @property
    def in_flight(self) -> int:
        """Our requests on this connection not answered yet."""
        return len(self._pending)

    @property
    def is_open(self) -> bool:
        """The transport is up (Protocol's own ``connected`` is set before TLS and never reset on abort)."""
        return self._connected

    @property
    def idle_since(self) -> float:
        """When this connection last carried a request either way, keepalive PINGs aside (now if busy)."""
        if self._serving or self._waiting or any(p.type != frames.PING for p in self._pending.values()):
            return self.clock.seconds()
        return self.last_used
