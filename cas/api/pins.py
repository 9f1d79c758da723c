"""``/v1/pins``: files of other nodes this node keeps alive with its leases (docs/api.md)."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import resource, server

from cas.api.common import Collection, answer_when_done, error, json_body, parse_root
from cas.api.files import Health
from cas.base.errors import (
    BlockNotFound,
    FileNotFound,
    MalformedKey,
    PinRefused,
)

log = Logger()


class Pins(Collection):
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
        return answer_when_done(request, d, status, "pinning", (
            (PinRefused, 409, "stored_here", None),
            (BlockNotFound, 404, "not_found", "no node could send this file's blocks"),
        ))
