"""Streaming request bodies: ``ApiRequest`` feeds ``POST /v1/files`` and upload pieces to the store pipeline
as they arrive, pausing the socket while the pipeline is full; the socket buffer helpers of transfers."""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from cas.api.common import DRAIN_LIMIT, RETRY_AFTER, check_token, error, file_json, json_body, redact, status_for
from cas.base.errors import (
    CasError,
    OffsetMismatch,
)
from cas.node.core import Node
from cas.node.upload import StoredFile, Upload

log = Logger()


def widen_buffer(transport: Any, size: int) -> None:
    """Raise a socket transport's ``bufferSize`` (its recv size and the write-buffer level at which it pauses
    a producer) for one transfer; test doubles without the attribute are left alone."""
    default = getattr(type(transport), "bufferSize", None)
    if isinstance(default, int) and default < size:
        transport.bufferSize = size


def restore_buffer(transport: Any) -> None:
    if "bufferSize" in vars(transport):
        del transport.bufferSize


def widen_sends(transport: Any, size: int) -> None:
    """Let a socket transport hand up to ``size`` bytes to one ``send()`` (Twisted: 128 KiB), for a download:
    a 1 MiB segment then goes to the kernel in one call instead of eight, each of which, on loopback, runs the
    receiver's TCP input and wakes the client (docs/performance.md).

    Only for a buffer not yet partly sent: Twisted joins what is left of its buffer into a new one whenever less
    than ``SEND_LIMIT`` is left, so after a partial send (a slow client) a wide limit would copy the rest of the
    segment on every write. From a partial send until the buffer is empty the transport's own limit applies
    again (the rest is sent as slices, and only the last piece under 128 KiB is joined, as Twisted always
    does). ``narrow_sends`` undoes it (the wrapper refers to the transport: until then they form a cycle). Test
    doubles without ``SEND_LIMIT`` or ``doWrite`` are left alone."""
    default = getattr(type(transport), "SEND_LIMIT", None)
    write_ready = getattr(transport, "doWrite", None)
    if not isinstance(default, int) or default >= size or write_ready is None or "doWrite" in vars(transport):
        return

    def doWrite() -> Any:
        transport.SEND_LIMIT = size if transport.offset == 0 else default
        return write_ready()

    transport.doWrite = doWrite


def narrow_sends(transport: Any) -> None:
    """The transport's own ``doWrite`` and ``SEND_LIMIT`` again (after a download, finished or cut off)."""
    for name in ("doWrite", "SEND_LIMIT"):
        vars(transport).pop(name, None)


BAD_UPLOAD_OPTIONS = "the name must be UTF-8 (percent-encoded), the content type ASCII and min_replicas a number from 0 to 64"


def upload_options(query: bytes, content_type: bytes | None) -> tuple[str, str, int]:
    """(name, content type, min_replicas) of ``POST /v1/files`` or ``POST /v1/uploads``; ValueError if bad."""
    params = parse_qs(query.decode("utf-8"), strict_parsing=False, errors="strict")  # UnicodeDecodeError is a ValueError
    name = params.get("name", [""])[-1]
    min_replicas = int(params.get("min_replicas", ["0"])[-1])
    if not 0 <= min_replicas <= 64:
        raise ValueError("min_replicas out of range")
    ctype = (content_type or b"").decode("ascii").strip()
    return name, ctype or "application/octet-stream", min_replicas


# -- streaming uploads ---------------------------------------------------------------------------------------


class _SocketBackpressure:
    """The upload pipeline's view of the client: pausing it stops reading the socket (TCP slows the client)."""

    def __init__(self, request: "ApiRequest") -> None:
        self.request = request
        self.paused = False

    def pauseProducing(self) -> None:
        ch = self.request.channel
        if ch is not None and not self.paused:
            self.paused = True
            ch.transport.pauseProducing()

    def resumeProducing(self) -> None:
        ch = self.request.channel
        if ch is not None and self.paused:
            self.paused = False
            ch.transport.resumeProducing()
            ch.resetTimeout()  # the pipeline made progress: the client is not idle

    def stopProducing(self) -> None:
        self.resumeProducing()  # the upload failed: keep reading so the body can be drained


class ApiRequest(server.Request):
    """A request that streams ``POST /v1/files`` bodies into the store pipeline instead of spooling them."""

    _upload: Upload | None = None
    _backpressure: _SocketBackpressure | None = None
    _early_answer = False  # an answer was already written before the body ended
    _drained = 0
    _processing = False
    _piece_final = False

    def __repr__(self) -> str:
        return redact(super().__repr__())

    @property
    def node(self) -> Node:
        return self.channel.site.node  # type: ignore[no-any-return]

    def gotLength(self, length: int | None) -> None:
        ch = self.channel
        command, path = getattr(ch, "_command", None), getattr(ch, "_path", None)
        if command == b"POST" and isinstance(path, bytes) and path.partition(b"?")[0] in (b"/v1/files", b"/v1/files/"):
            self.content = BytesIO()  # Twisted still calls tell/seek on it later
            self._begin_upload(length, path.partition(b"?")[2])
            return
        if command == b"PUT" and isinstance(path, bytes):
            m = re.fullmatch(rb"/v1/uploads/([^/?]+)", path.partition(b"?")[0])
            if m:
                self.content = BytesIO()
                self._begin_piece(length, m.group(1).decode("ascii", "replace"))
                return
        super().gotLength(length)

    def _begin_piece(self, length: int | None, sid: str) -> None:
        """``PUT /v1/uploads/ID`` with ``Content-Range``: a piece of a resumable upload, streamed like a file."""
        if not check_token(self, self.channel.site.token):
            return self._answer_early(401, "unauthorized", "missing or wrong API token (see api.token in the data dir)")
        header = (self.requestHeaders.getRawHeaders(b"content-range", [b""])[0]).decode("ascii", "replace").strip()
        m = re.fullmatch(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", header)
        if not m:
            return self._answer_early(400, "bad_request", "a piece needs Content-Range: bytes START-END/TOTAL (TOTAL may be *), or bytes */TOTAL")
        start = int(m.group(1)) if m.group(1) is not None else None
        total = int(m.group(3)) if m.group(3) != "*" else None
        if start is None:  # bytes */TOTAL: no bytes, the upload ends at TOTAL
            if total is None or length not in (0, None):
                return self._answer_early(400, "bad_request", "bytes */TOTAL ends an upload and carries no body")
            start, end = total, total - 1
        else:
            end = int(m.group(2))
            if end < start or (total is not None and end >= total):
                return self._answer_early(416, "range_not_satisfiable", f"{header!r} is not a valid range")
            if length is None or length != end - start + 1:
                return self._answer_early(400, "bad_request", "the body must have exactly the Content-Range's length")
        self._piece_final = total is not None and end + 1 == total
        try:
            up = self.node.resume_session(sid, start)
        except OffsetMismatch as e:
            return self._answer_early(409, e.code, str(e), {"offset": e.offset})
        except CasError as e:
            status, code, message = status_for(e)
            return self._answer_early(status, code, message)
        self._start_streaming(up)

    def _begin_upload(self, length: int | None, query: bytes) -> None:
        site = self.channel.site
        if not check_token(self, site.token):
            return self._answer_early(401, "unauthorized", "missing or wrong API token (see api.token in the data dir)")
        store = self.node.store
        if length is not None:
            limit = store.limit
            overhead = (length // self.node.segment_size + 2) * 16  # GCM tags; manifests are small
            if limit is not None and length + overhead > limit - store.used():
                return self._answer_early(413, "storage_limit", f"a {length}-byte file does not fit under the storage limit ({max(0, limit - store.used())} bytes free)")
            free = store.free()
            if free is not None and length + overhead > free:
                return self._answer_early(507, "disk_full", f"a {length}-byte file does not fit on the disk ({free} bytes free)")
        try:
            name, ctype, min_replicas = upload_options(query, self.requestHeaders.getRawHeaders(b"content-type", [None])[0])
        except ValueError:
            return self._answer_early(400, "bad_request", BAD_UPLOAD_OPTIONS)
        try:
            up = self.node.upload(name, ctype, min_replicas=min_replicas)
        except CasError as e:
            status, code, message = status_for(e)
            return self._answer_early(status, code, message)
        self._start_streaming(up)

    def _start_streaming(self, up: Upload) -> None:
        self._upload = up
        # While holders pace the upload the socket may not be read for a while: every block they acknowledge
        # is progress, so the idle timeout starts again.
        up.on_progress = self.channel.resetTimeout
        self._backpressure = _SocketBackpressure(self)
        up.registerProducer(self._backpressure, True)
        up.done.addBoth(self._upload_settled)
        # Read the body in segment-size pieces rather than Twisted's 64 KiB: 16x fewer reactor iterations,
        # recv calls and Upload.write calls per segment. With other uploads under way, a quarter of that: what
        # an upload waiting for the buffer budget has read stays in memory, once per upload.
        seg = self.node.segment_size
        widen_buffer(self.channel.transport, seg if self.node.uploads <= 1 else max(1 << 16, seg // 4))

    def handleContentChunk(self, data: bytes) -> None:
        if self._upload is not None and not self._early_answer:
            self._upload.write(data)
        elif self._early_answer:
            self._drained += len(data)
            if self._drained > DRAIN_LIMIT and self.channel is not None:
                self.channel.transport.loseConnection()
        else:
            super().handleContentChunk(data)

    def _answer_early(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        """Answer before the body has been read: raw bytes on the transport, ``Connection: close``; the rest
        of the body is read and discarded (up to DRAIN_LIMIT), then the connection is closed."""
        self._early_answer = True
        body = json.dumps({"error": code, "message": message, **(extra or {})}, sort_keys=True).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {http.RESPONSES.get(status, b'Error').decode()}\r\n"
            f"Content-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            + ('WWW-Authenticate: Bearer realm="cas"\r\n' if status == 401 else "")
            + (f"Retry-After: {RETRY_AFTER}\r\n" if code == "busy" else "")
            + "\r\n"
        )
        self.channel.transport.write(head.encode("ascii") + body)
        self.code = status
        log.info("upload rejected: {status} {code}: {message}", status=status, code=code, message=redact(message))

    def process(self) -> None:
        if self._early_answer:
            # The whole body arrived after an early answer: nothing more to say.
            if self.channel is not None:
                self.channel.transport.loseConnection()
            return
        self._processing = True
        super().process()

    def _upload_settled(self, result: StoredFile | Failure) -> None:
        if self.channel is not None:
            restore_buffer(self.channel.transport)  # the default for the answer and later requests
        if self._backpressure is not None:
            self._backpressure.resumeProducing()
        if self._disconnected:
            return
        if not self._processing:
            # Failed while the body was still arriving: answer now, drain the rest.
            assert isinstance(result, Failure)
            status, code, message = status_for(result.value)
            if not self._early_answer:
                self._answer_early(status, code, message)
            return
        if isinstance(result, Failure):
            status, code, message = status_for(result.value)
            if status == 500:
                log.failure("upload failed", result)
            self.write(error(self, status, code, message))
        elif isinstance(result, int):  # a piece of a resumable upload was recorded
            self.write(json_body(self, 200, {"offset": result}))
        else:
            body = file_json(result.cap, result.metadata.name, result.metadata.content_type, result.size, result.blocks)
            body["replicas"] = result.replicas
            body["replicas_wanted"] = result.wanted
            self.write(json_body(self, 201, body))
        self.finish()

    def connectionLost(self, reason: Failure) -> None:
        if self._upload is not None and not self._upload.done.called:
            self._upload.abort("the client disconnected")
        super().connectionLost(reason)


class ApiChannel(http.HTTPChannel):
    def _send100Continue(self) -> None:
        # Never invite the body of an upload that was already answered (401/413/507).
        if self.requests and getattr(self.requests[-1], "_early_answer", False):
            return
        super()._send100Continue()
