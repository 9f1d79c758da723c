"""The node's local HTTP API (twisted.web, HTTP/1.1). Contract: docs/api.md.

Uploads stream: stock twisted.web spools a request body before rendering, so ``ApiRequest`` takes the body
as it arrives (``gotLength`` / ``handleContentChunk``, with the request line read from the channel's private
``_command``/``_path``) and feeds it to the store pipeline, pausing the socket while the pipeline is full.
Those private names are pinned by a canary test (``cas/test/test_api.py``) and the Twisted range in setup.cfg.
"""

from __future__ import annotations

import hmac
import json
import re
from email.utils import formatdate, parsedate_to_datetime
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, quote

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from cas.base.cid import CID
from cas.base.errors import (
    BlockNotFound,
    Busy,
    CasError,
    CorruptBlock,
    DiskFull,
    FileNotFound,
    InvalidMetadata,
    MalformedKey,
    MalformedManifest,
    OffsetMismatch,
    PinRefused,
    RangeNotSatisfiable,
    SessionBusy,
    SessionNotFound,
    StorageLimitExceeded,
    TamperedData,
    TooFewReplicas,
)
from cas.content.capability import ReadCap
from cas.node.core import Node
from cas.node.download import OpenFile
from cas.node.upload import StoredFile, Upload
from cas.store.index import Session

log = Logger()
DRAIN_LIMIT = 1 << 20  # body bytes read and discarded after an early error answer, before closing
IDLE_TIMEOUT = 300
RETRY_AFTER = 5  # seconds, with 503 busy
_KEY_RE = re.compile(r"cas1[a-z2-7]+", re.I)


def redact(text: str) -> str:
    """Replace read capabilities in ``text`` by ``cas1…``."""
    return _KEY_RE.sub("cas1…", text)


_STATUS: list[tuple[type[BaseException], int]] = [
    (MalformedKey, 400), (InvalidMetadata, 400), (FileNotFound, 404), (BlockNotFound, 404),
    (StorageLimitExceeded, 413), (DiskFull, 507), (RangeNotSatisfiable, 416), (TooFewReplicas, 503), (Busy, 503), (SessionNotFound, 404), (OffsetMismatch, 409), (SessionBusy, 409),
    (CorruptBlock, 500), (TamperedData, 500), (MalformedManifest, 500),
]


def status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error code, message) for an exception; unknown ones are 500 ``internal``."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code, exc.code, str(exc)  # type: ignore[attr-defined]
    return 500, "internal", "internal error (see the node's log)"


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}, sort_keys=True).encode() + b"\n"


def json_body(request: server.Request, status: int, obj: Any) -> bytes:
    """Set the status and JSON headers (with Content-Length) and return the body to write."""
    body = json.dumps(obj, sort_keys=True).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(body)).encode())
    return body


def error(request: server.Request, status: int, code: str, message: str) -> bytes:
    return json_body(request, status, {"error": code, "message": message})


def check_token(request: http.Request, token: bytes) -> bool:
    auth = request.requestHeaders.getRawHeaders(b"authorization", [b""])[0]
    scheme, _, given = auth.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


def file_json(cap: ReadCap, name: str, content_type: str, size: int, blocks: int, created: int | None = None) -> dict[str, Any]:
    out = {"key": str(cap), "name": name, "content_type": content_type, "size": size, "blocks": blocks}
    if created is not None:
        out["created"] = created
    return out


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


# -- resources -----------------------------------------------------------------------------------------------


class _JsonResource(resource.Resource):
    """Answers methods it does not implement with a JSON 405."""

    def render(self, request: server.Request) -> Any:
        try:
            return super().render(request)
        except server.UnsupportedMethod as e:
            request.setHeader(b"allow", b", ".join(e.allowedMethods))
            return error(request, 405, "method_not_allowed", f"{request.method.decode('ascii', 'replace')} is not allowed here")


class _NodeResource(_JsonResource):
    """A JSON resource answering from the node."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node


class Status(_NodeResource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return json_body(request, 200, self.node.status())


class Peers(_NodeResource):
    """``/v1/peers``: the peer table (docs/api.md)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        peers = self.node.peers.describe() if self.node.peers is not None else []
        members = sum(1 for p in peers if p["member"])
        return json_body(request, 200, {"node_id": self.node.node_id, "members": members, "peers": peers})


class _Collection(_NodeResource):
    """``/v1/NAME`` answers itself; ``/v1/NAME/ITEM`` is ``item(ITEM)``; anything deeper is a JSON 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if path == b"" and not request.postpath:
            return self
        if request.postpath:
            return _NotFound()
        return self.item(path)

    def item(self, path: bytes) -> resource.Resource:
        raise NotImplementedError


class Uploads(_Collection):
    """``/v1/uploads`` (open a resumable upload) and ``/v1/uploads/ID`` (state, pieces, drop)."""

    def item(self, path: bytes) -> resource.Resource:
        return UploadSession(self.node, path.decode("ascii", "replace"))

    def render_POST(self, request: server.Request) -> bytes:
        try:
            name, ctype, min_replicas = upload_options(request.uri.partition(b"?")[2], request.getHeader(b"content-type"))
        except ValueError:
            return error(request, 400, "bad_request", BAD_UPLOAD_OPTIONS)
        try:
            s = self.node.open_session(name, ctype, min_replicas)
        except CasError as e:
            status, code, message = status_for(e)
            return error(request, status, code, message)
        return json_body(request, 201, session_json(s))


def session_json(s: Session) -> dict[str, Any]:
    return {"id": s.id, "offset": s.offset, "name": s.name, "content_type": s.content_type,
            "segment_size": s.segment_size, "min_replicas": s.min_replicas, "expires": s.expires}


class UploadSession(_NodeResource):
    isLeaf = True

    def __init__(self, node: Node, sid: str) -> None:
        super().__init__(node)
        self.sid = sid

    def render_GET(self, request: server.Request) -> bytes:
        try:
            return json_body(request, 200, session_json(self.node.session(self.sid)))
        except CasError as e:
            status, code, message = status_for(e)
            return error(request, status, code, message)

    def render_PUT(self, request: server.Request) -> bytes | int:
        up = getattr(request, "_upload", None)
        if up is None:
            return error(request, 500, "internal", "upload pipeline missing")
        up.unregisterProducer()
        if request._piece_final:  # type: ignore[attr-defined]
            up.finish()  # the outcome arrives through ApiRequest._upload_settled
        else:
            up.checkpoint()
        return server.NOT_DONE_YET

    def render_DELETE(self, request: server.Request) -> bytes | int:
        try:
            d = self.node.drop_session(self.sid)
        except CasError as e:
            status, code, message = status_for(e)
            return error(request, status, code, message)

        def done(_: Any) -> None:
            request.write(json_body(request, 200, {"dropped": True}))
            request.finish()

        d.addBoth(done)
        return server.NOT_DONE_YET


class Files(_Collection):
    """``/v1/files`` (list, upload) and ``/v1/files/KEY`` (read, forget)."""

    def item(self, path: bytes) -> resource.Resource:
        return File(self.node, path)

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if path and request.postpath == [b"health"]:
            request.postpath = []
            return Health(self.node, path)
        return super().getChild(path, request)

    def render_GET(self, request: server.Request) -> bytes:
        files = [file_json(ReadCap(r.root, r.key), r.name, r.content_type, r.size, r.blocks, r.created) for r in self.node.files()]
        return json_body(request, 200, {"files": files})

    def render_POST(self, request: server.Request) -> bytes | int:
        up = getattr(request, "_upload", None)
        if up is None:
            return error(request, 500, "internal", "upload pipeline missing")
        up.unregisterProducer()
        up.finish()  # the outcome arrives through ApiRequest._upload_settled
        return server.NOT_DONE_YET


def parse_range(header: bytes, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range -> (offset, length); None to serve the whole file (absent, invalid or several
    ranges: RFC 9110 lets a server ignore them); raises RangeNotSatisfiable."""
    m = re.fullmatch(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # invalid: ignore
        if start >= size:
            raise RangeNotSatisfiable(f"range starts at {start}, the file has {size} bytes")
        return start, min(end, size - 1) - start + 1
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable("empty suffix range")
    return max(0, size - suffix), min(suffix, size)


def content_disposition(name: str) -> bytes:
    """RFC 6266: an ASCII fallback plus the exact name in ``filename*`` (RFC 8187)."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\/%' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}".encode("ascii")


class File(_JsonResource):
    isLeaf = True

    def __init__(self, node: Node, key: bytes) -> None:
        super().__init__()
        self.node = node
        self.key = key

    def _cap(self) -> ReadCap:
        try:
            return ReadCap.parse(self.key.decode("ascii"))
        except UnicodeDecodeError:
            raise MalformedKey("not a cas key: keys are ASCII") from None

    def render_GET(self, request: server.Request) -> bytes | int:
        return self._serve(request, body=True)

    def render_HEAD(self, request: server.Request) -> bytes | int:
        return self._serve(request, body=False)

    def _serve(self, request: server.Request, body: bool) -> bytes | int:
        try:
            cap = self._cap()
        except MalformedKey as e:
            return error(request, 400, e.code, str(e))
        d = self.node.open(cap)
        d.addCallback(self._opened, request, body)
        d.addErrback(self._failed_before_headers, request)
        return server.NOT_DONE_YET

    def _failed_before_headers(self, f: Failure, request: server.Request) -> None:
        if request._disconnected:  # type: ignore[attr-defined]
            return
        status, code, message = status_for(f.value)
        if isinstance(f.value, BlockNotFound):
            message = "no file with this key is stored on this node"
        elif status == 500:
            log.failure("reading a file failed", f)
        request.write(error(request, status, code, message))
        request.finish()

    def _opened(self, f: OpenFile, request: server.Request, body: bool) -> None:
        size = f.size
        etag = f'"{f.cap.root}"'.encode("ascii")
        request.setHeader(b"etag", etag)
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"last-modified", formatdate(f.metadata.created, usegmt=True).encode("ascii"))
        request.setHeader(b"cache-control", b"private, max-age=31536000, immutable")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"sandbox; default-src 'none'")
        request.setHeader(b"content-disposition", content_disposition(f.metadata.name))
        offset, length = 0, size
        rng = request.getHeader(b"range")
        if rng is not None and self._if_range_holds(request, etag, f.metadata.created):
            try:
                r = parse_range(rng, size)
            except RangeNotSatisfiable as e:
                request.setHeader(b"content-range", f"bytes */{size}".encode())
                request.write(error(request, 416, e.code, str(e)))
                request.finish()
                return
            if r is not None:
                offset, length = r
                request.setResponseCode(206)
                request.setHeader(b"content-range", f"bytes {offset}-{offset + length - 1}/{size}".encode())
        request.setHeader(b"content-type", f.metadata.content_type.encode("ascii", "replace") or b"application/octet-stream")
        request.setHeader(b"content-length", str(length).encode())
        if not body or length == 0:
            request.finish()
            return
        download = self.node.download(f, offset, length)
        # The transport keeps Twisted's pause level (64 KiB): the download is paused after each 1 MiB segment
        # and resumed once the kernel took it all, so Twisted's buffer holds one segment, which it sends as it
        # is. Allowing two (as until 2026-11-26) let three pile up, and Twisted joined them into a new 3 MiB
        # buffer before sending: a copy of every byte served, on the reactor thread (docs/performance.md).
        transport = request.channel.transport
        widen_sends(transport, f.root.segment_size)
        request.notifyFinish().addBoth(lambda _: narrow_sends(transport))
        d = download.start(request)
        d.addCallbacks(lambda _: request.finish(), self._failed_mid_stream, errbackArgs=(request,))

    @staticmethod
    def _if_range_holds(request: server.Request, etag: bytes, created: int) -> bool:
        cond = request.getHeader(b"if-range")
        if cond is None:
            return True
        cond = cond.strip()
        if cond.startswith(b'"') or cond.startswith(b"W/"):
            return hmac.compare_digest(cond, etag)  # strong comparison; weak validators never match
        try:
            return int(parsedate_to_datetime(cond.decode("ascii")).timestamp()) == created
        except (ValueError, TypeError, UnicodeDecodeError):
            return False

    def _failed_mid_stream(self, f: Failure, request: server.Request) -> None:
        """Headers are out: abort the connection so that no client takes the truncated body as complete."""
        if f.check(CancelledError) or request._disconnected:  # type: ignore[attr-defined]
            return  # the client went away
        log.failure("download failed after the headers were sent; aborting the connection", f)
        request.channel.transport.abortConnection()

    def render_DELETE(self, request: server.Request) -> bytes | int:
        try:
            cap = self._cap()
        except MalformedKey as e:
            return error(request, 400, e.code, str(e))
        rec = self.node.index.get(cap.root)
        if rec is None and self.node.index.pinned(cap.root) is not None:
            return error(request, 409, "pinned", "this node pinned this file but did not store it: use cas unpin")
        if rec is None or not hmac.compare_digest(rec.key, cap.key):
            return error(request, 404, "not_found", "the owner of this node has no file with this key")
        d = self.node.forget(cap.root)

        def done(answer: dict[str, Any]) -> None:
            request.write(json_body(request, 200, answer))
            request.finish()

        def failed(f: Failure) -> None:
            log.failure("forgetting a file failed", f)
            request.write(error(request, 500, "internal", "the file was forgotten but collecting its blocks failed"))
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


def parse_root(text: bytes) -> CID:
    """A file named by its key (``cas1...``) or by its root id (the verify capability); MalformedKey if neither."""
    try:
        t = text.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedKey("not a cas key: keys are ASCII") from None
    if t.startswith("b") and len(t) == 59:
        try:
            return CID.parse(t)
        except ValueError as e:
            raise MalformedKey(f"not a root id: {e}") from None  # MalformedKey itself passes through
    return ReadCap.parse(t).root


class Health(_JsonResource):
    """``GET /v1/files/KEY/health``: which nodes hold the file's blocks under a live lease (docs/api.md)."""

    isLeaf = True

    def __init__(self, node: Node, key: bytes) -> None:
        super().__init__()
        self.node, self.key = node, key

    def render_GET(self, request: server.Request) -> bytes | int:
        try:
            root = parse_root(self.key)
        except MalformedKey as e:
            return error(request, 400, e.code, str(e))
        d = self.node.health(root)

        def done(answer: dict[str, Any]) -> None:
            request.write(json_body(request, 200, answer))
            request.finish()

        def failed(f: Failure) -> None:
            if f.check(BlockNotFound):
                request.write(error(request, 404, "not_found", "no node could send this file's manifests"))
            else:
                log.failure("checking a file's health failed", f)
                request.write(error(request, 500, "internal", f"checking the file failed: {f.getErrorMessage()}"))
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class Pins(_Collection):
    """``/v1/pins`` (list) and ``/v1/pins/KEY`` (pin, unpin): files of other nodes kept alive by this node's
    leases (cas/node/pinning.py)."""

    def item(self, path: bytes) -> resource.Resource:
        return Pin(self.node, path)

    def render_GET(self, request: server.Request) -> bytes:
        return json_body(request, 200, self.node.pinned_files())


class Pin(Health):
    def render_GET(self, request: server.Request) -> bytes | int:
        return error(request, 405, "method_not_allowed", "use POST or DELETE")

    def render_POST(self, request: server.Request) -> bytes | int:
        try:
            root = parse_root(self.key)
        except MalformedKey as e:
            return error(request, 400, e.code, str(e))
        local = (request.args.get(b"local") or [b"0"])[0]
        if local not in (b"0", b"1"):
            return error(request, 400, "bad_request", "local must be 0 or 1")
        return self._answer(request, self.node.pin(root, local == b"1"), 201)

    def render_DELETE(self, request: server.Request) -> bytes | int:
        try:
            root = parse_root(self.key)
            d = self.node.unpin(root)
        except (MalformedKey, FileNotFound) as e:
            return error(request, 400 if isinstance(e, MalformedKey) else 404, e.code, str(e))
        return self._answer(request, d, 200)

    def _answer(self, request: server.Request, d: Any, status: int) -> int:
        def done(answer: dict[str, Any]) -> None:
            request.write(json_body(request, status, answer))
            request.finish()

        def failed(f: Failure) -> None:
            if f.check(PinRefused):
                request.write(error(request, 409, f.value.code, f.getErrorMessage()))
            elif f.check(BlockNotFound):
                request.write(error(request, 404, "not_found", "no node could send this file's blocks"))
            else:
                log.failure("pinning failed", f)
                request.write(error(request, 500, "internal", f"pinning failed: {f.getErrorMessage()}"))
            request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class Guard(resource.Resource):
    """Checks the bearer token (constant time) before handing the request on."""

    def __init__(self, token: str, inner: resource.Resource) -> None:
        super().__init__()
        self._token = token.encode("ascii")
        self._inner = inner

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        if not check_token(request, self._token):
            return _Unauthorized()
        request.prepath.pop()
        request.postpath.insert(0, path)
        return resource.getChildForRequest(self._inner, request)


class _Unauthorized(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"www-authenticate", b'Bearer realm="cas"')
        return error(request, 401, "unauthorized", "missing or wrong API token (see api.token in the data dir)")


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return error(request, 404, "not_found", "no such route")


class _Routes(resource.Resource):
    """A directory of routes; anything else is a JSON 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return _NotFound()

    def render(self, request: server.Request) -> bytes:
        return error(request, 404, "not_found", "no such route")


class ApiSite(server.Site):
    """The API's site: HTTP/1.1 channels, streaming uploads, and an access log with keys redacted."""

    protocol = ApiChannel
    requestFactory = ApiRequest
    displayTracebacks = False

    def __init__(self, node: Node, token: str, reactor: Any = None) -> None:
        v1 = _Routes()
        v1.putChild(b"status", Status(node))
        v1.putChild(b"files", Files(node))
        v1.putChild(b"uploads", Uploads(node))
        v1.putChild(b"peers", Peers(node))
        v1.putChild(b"pins", Pins(node))
        root = _Routes()
        root.putChild(b"v1", v1)
        super().__init__(Guard(token, root), timeout=IDLE_TIMEOUT, reactor=reactor)
        self.node = node
        self.token = token.encode("ascii")

    def log(self, request: http.Request) -> None:
        line = http.combinedLogFormatter(self._logDateTime, request)
        log.info("{line}", line=redact(line))


def make_site(node: Node, token: str, reactor: Any = None) -> ApiSite:
    return ApiSite(node, token, reactor)

