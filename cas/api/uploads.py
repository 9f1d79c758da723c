"""``/v1/uploads``: resumable uploads (docs/api.md)."""

from __future__ import annotations

from typing import Any

from twisted.web import resource, server

from cas.api.common import Collection, NodeResource, error, json_body, status_for
from cas.api.request import BAD_UPLOAD_OPTIONS, upload_options
from cas.base.errors import (
    CasError,
)
from cas.node.core import Node
from cas.store.index import Session


class Uploads(Collection):
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


class UploadSession(NodeResource):
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
