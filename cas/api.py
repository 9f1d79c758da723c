"""The node's local HTTP API (twisted.web). This issue serves ``GET /v1/status``; files, peers and the rest
of the routes arrive with the API issue. Every route needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.web import resource, server

from .node import Node


def json_body(request: server.Request, code: int, obj: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


def error(request: server.Request, code: int, name: str, message: str) -> bytes:
    return json_body(request, code, {"error": name, "message": message})


class Status(resource.Resource):
    isLeaf = True

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: server.Request) -> bytes:
        return json_body(request, 200, self.node.status())


class Guard(resource.Resource):
    """Checks the bearer token (constant time) before handing the request on."""

    def __init__(self, token: str, inner: resource.Resource) -> None:
        super().__init__()
        self._token = token.encode("ascii")
        self._inner = inner

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        auth = request.getHeader(b"authorization") or b""
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
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


def make_site(node: Node, token: str) -> server.Site:
    v1 = _Routes()
    v1.putChild(b"status", Status(node))
    root = _Routes()
    root.putChild(b"v1", v1)
    site = server.Site(Guard(token, root))
    site.displayTracebacks = False
    return site
