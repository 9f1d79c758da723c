"""The running node: starts the core, listens on the peer and API endpoints, and says where it is."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from .api import make_site
from .node import Node

log = Logger()


class _NotYet(Protocol):
    """The peer protocol lands with the peers issue; until then a peer connection is closed at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def describe(port: IListeningPort) -> str:
    h = port.getHost()
    host = getattr(h, "host", None)
    return f"{h.type.lower()}:{host}:{h.port}" if host is not None else str(h)


class NodeService(service.Service):
    def __init__(self, node: Node, reactor: Any, peer_endpoint: str, api_endpoint: str) -> None:
        self.node = node
        self.reactor = reactor
        self.peer_endpoint = peer_endpoint
        self.api_endpoint = api_endpoint
        self.ports: list[IListeningPort] = []
        self.api_url: str | None = None

    def _listen(self, description: str, factory: Factory, what: str) -> IListeningPort:
        d = endpoints.serverFromString(self.reactor, description).listen(factory)
        result: list[Any] = []
        d.addBoth(result.append)
        if not result:
            raise SystemExit(f"cas: listening on {what} endpoint {description!r} did not complete at start-up")
        port = result[0]
        if not IListeningPort.providedBy(port):
            err = port.value
            why = err.socketError.strerror if isinstance(err, CannotListenError) and hasattr(err.socketError, "strerror") else str(err)
            raise SystemExit(f"cas: cannot listen on {what} endpoint {description!r}: {why}")
        self.ports.append(port)
        return port

    def privilegedStartService(self) -> None:
        # Bind here so that a busy port stops twistd with a one-line error before the reactor runs.
        super().privilegedStartService()
        try:
            peer = self._listen(self.peer_endpoint, Factory.forProtocol(_NotYet), "peer")
            api = self._listen(self.api_endpoint, make_site(self.node, self.node.datadir.read_token(), self.reactor), "API")
        except SystemExit:
            for p in self.ports:
                p.stopListening()
            self.node.stop()
            raise
        h = api.getHost()
        host = getattr(h, "host", "127.0.0.1")
        if ":" in host:
            host = f"[{host}]"
        self.api_url = f"http://{host}:{h.port}/" if hasattr(h, "port") else None
        if self.api_url:
            self.node.datadir.write_public("api.url", self.api_url + "\n")
        log.info(
            "cas node {node_id} listening for peers on {peer}, API on {api}, data dir {dir}",
            node_id=self.node.node_id, peer=describe(peer), api=describe(api), dir=self.node.datadir.path,
        )

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        self.node.start()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        d = gatherResults([maybeDeferred(p.stopListening) for p in self.ports])
        self.ports = []
        d.addBoth(lambda _: self.node.stop())
        return d
