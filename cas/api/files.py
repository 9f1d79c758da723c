"""``/v1/files``: list, upload, read (ranges), forget, and ``/v1/files/KEY/health`` (docs/api.md)."""

from __future__ import annotations

import hmac
import re
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from cas.api.common import (
    Collection,
    JsonResource,
    answer_when_done,
    error,
    file_json,
    json_body,
    parse_root,
    status_for,
)
from cas.api.request import narrow_sends, widen_sends
from cas.base.errors import (
    BlockNotFound,
    MalformedKey,
    RangeNotSatisfiable,
)
from cas.content.capability import ReadCap
from cas.node.core import Node
from cas.node.download import OpenFile

log = Logger()


class Files(Collection):
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


class File(JsonResource):
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


class Health(JsonResource):
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
        return answer_when_done(request, self.node.health(root), 200, "checking a file's health",
                                ((BlockNotFound, 404, "not_found", "no node could send this file's manifests"),))
