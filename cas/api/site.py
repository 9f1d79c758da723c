"""The site: routes, the token guard in front of them, node status and peers."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import http, resource, server

from cas.api.common import IDLE_TIMEOUT, NodeResource, NotFound, check_token, error, json_body, redact
from cas.api.files import Files
from cas.api.pins import Pins
from cas.api.request import ApiChannel, ApiRequest
from cas.api.uploads import Uploads
from cas.node.core import Node

log = Logger()


class Status(NodeResource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return json_body(request, 200, self.node.status())


class Drain(NodeResource):
    """``POST /v1/drain``: hand every held key to the next nodes in rank before this node leaves."""

    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes:
        repairer = self.node.repairer
        if repairer is None:
            return error(request, 409, "no_peers", "this node runs without peers: there is nobody to hand keys to")
        repairer.drain()
        return json_body(request, 202, {"draining": True, **(repairer.draining or {})})


class Peers(NodeResource):
    """``/v1/peers``: the peer table (docs/api.md)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        peers = self.node.peers.describe() if self.node.peers is not None else []
        members = sum(1 for p in peers if p["member"])
        return json_body(request, 200, {"node_id": self.node.node_id, "members": members, "peers": peers})


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


class _Routes(resource.Resource):
    """A directory of routes; anything else is a JSON 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return NotFound()

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
        v1.putChild(b"drain", Drain(node))
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
