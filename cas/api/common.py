"""Shared pieces of the API: error and JSON bodies, the token check, redaction, base resources."""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from cas.base.cid import CID
from cas.base.errors import (
    BlockNotFound,
    Busy,
    CorruptBlock,
    DiskFull,
    FileNotFound,
    InvalidMetadata,
    MalformedKey,
    MalformedManifest,
    OffsetMismatch,
    RangeNotSatisfiable,
    SessionBusy,
    SessionNotFound,
    StorageLimitExceeded,
    TamperedData,
    TooFewReplicas,
)
from cas.content.capability import ReadCap
from cas.node.core import Node

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


class JsonResource(resource.Resource):
    """Answers methods it does not implement with a JSON 405."""

    def render(self, request: server.Request) -> Any:
        try:
            return super().render(request)
        except server.UnsupportedMethod as e:
            request.setHeader(b"allow", b", ".join(e.allowedMethods))
            return error(request, 405, "method_not_allowed", f"{request.method.decode('ascii', 'replace')} is not allowed here")


class NodeResource(JsonResource):
    """A JSON resource answering from the node."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node


class Collection(NodeResource):
    """``/v1/NAME`` answers itself; ``/v1/NAME/ITEM`` is ``item(ITEM)``; anything deeper is a JSON 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if path == b"" and not request.postpath:
            return self
        if request.postpath:
            return NotFound()
        return self.item(path)

    def item(self, path: bytes) -> resource.Resource:
        raise NotImplementedError


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


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return error(request, 404, "not_found", "no such route")


def answer_when_done(request: server.Request, d: Any, status: int, what: str,
                     known: tuple[tuple[type[BaseException], int, str, str | None], ...] = ()) -> int:
    """Answer ``request`` with ``d``'s result as JSON (``status``), or with the error of the first ``known``
    (exception class, status, code, message or None for the exception's own) it failed with; anything else is
    logged and answered 500 "``what`` failed"."""
    def done(answer: dict[str, Any]) -> None:
        request.write(json_body(request, status, answer))
        request.finish()

    def failed(f: Failure) -> None:
        for exc, code_status, code, message in known:
            if f.check(exc):
                request.write(error(request, code_status, code, message or f.getErrorMessage()))
                break
        else:
            log.failure("{what} failed", f, what=what)
            request.write(error(request, 500, "internal", f"{what} failed: {f.getErrorMessage()}"))
        request.finish()

    d.addCallbacks(done, failed)
    return server.NOT_DONE_YET
