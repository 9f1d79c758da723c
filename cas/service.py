"""The running node: starts the core, listens on the peer and API endpoints, and says where it is."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from cas.api import make_site
from cas.network.announce import Announcer
from cas.network.audit import Auditor
from cas.network.release import Releaser
from cas.network.renewal import Renewer
from cas.network.repair import Repairer
from cas.node.core import Node
from cas.peer.advertise import Advertiser
from cas.peer.interfaces import Lister, is_wildcard, list_interfaces
from cas.peer.peers import Bootstrap, PeerManager, PeerSettings
from cas.peer.peertls import server_creator, wrap_server
from cas.peer.records import Address

log = Logger()


def describe(port: IListeningPort) -> str:
    h = port.getHost()
    host = getattr(h, "host", None)
    return f"{h.type.lower()}:{host}:{h.port}" if host is not None else str(h)


class NodeService(service.Service):
    def __init__(
        self, node: Node, reactor: Any, peer_endpoint: str, api_endpoint: str,
        advertise: list[Address] | None = None, bootstrap: list[Bootstrap] | None = None,
        settings: PeerSettings | None = None, interfaces: Lister = list_interfaces,
    ) -> None:
        self.node = node
        self.reactor = reactor
        self.peer_endpoint = peer_endpoint
        self.api_endpoint = api_endpoint
        self.advertise = advertise  # None: derived from the peer port once bound
        self.interfaces = interfaces
        self.advertiser: Advertiser | None = None  # the peer port is bound on every interface
        self.peers = PeerManager(
            node, reactor, bootstrap=bootstrap or [], settings=settings, table_path=node.datadir.join("peers.json"),
        )
        node.peers = self.peers
        self.releaser = node.releaser = Releaser(node.index, self.peers, node.clock, me=node.identity.node_id,
                                                 release_here=node.release)
        self.renewer = node.renewer = Renewer(node, self.peers, node.clock)
        self.announcer = Announcer(node, self.peers, node.clock)
        self.repairer = node.repairer = Repairer(node, self.peers, node.clock, node.repair_after, node.repair_rate)
        self.auditor = node.auditor = Auditor(node, self.peers, node.reactor)
        self.ports: list[IListeningPort] = []
        self.api_url: str | None = None

    def _listen(self, description: str, factory: Factory, what: str, tls: bool = False) -> IListeningPort:
        endpoint = endpoints.serverFromString(self.reactor, description)
        if tls:  # the peer port: TLS 1.3 with client certificates, whatever the endpoint kind
            endpoint = wrap_server(server_creator(self.node.identity), endpoint)
        d = endpoint.listen(factory)
        result: list[Any] = []
        d.addBoth(result.append)
        if not result:
            raise SystemExit(f"cas: listening on {what} endpoint {description!r} did not complete at start-up")
        port = result[0]
        if not IListeningPort.providedBy(port):
            err = port.value
            if isinstance(err, CannotListenError):
                why = getattr(err.socketError, "strerror", None) or str(err.socketError) or str(err)
            else:
                why = str(err)
            raise SystemExit(f"cas: cannot listen on {what} endpoint {description!r}: {why}")
        self.ports.append(port)
        return port

    def privilegedStartService(self) -> None:
        # Bind here so that a busy port stops twistd with a one-line error before the reactor runs.
        super().privilegedStartService()
        lock = self.node.datadir.lock
        if lock is not None:
            lock.write_pid()  # twistd may have forked into a daemon since the lock was taken
            if not lock.still_held():
                self.node.stop()
                raise SystemExit(f"cas: the lock on data dir {self.node.datadir.path} was lost when twistd forked "
                                 "(is it on a network filesystem?); use a local data dir, or run twistd -n")
        try:
            peer = self._listen(self.peer_endpoint, self.peers.server_factory(), "peer", tls=True)
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
        if self.advertise is None:
            h = peer.getHost()
            if isinstance(h, (IPv4Address, IPv6Address)) and h.type == "TCP" and is_wildcard(h.host):
                self.advertiser = Advertiser(self.peers, self.reactor, h.host, h.port, self.interfaces)
                self.advertise = list(self.advertiser.current)
            else:
                self.advertise = default_advertise(peer)
            if not self.advertise:
                log.warn(
                    "the peer port {peer} has no address to advertise: other nodes cannot dial this one first (it "
                    "can still dial them) and it is no placement member; give --advertise HOST:PORT",
                    peer=describe(peer),
                )
        self.peers.advertise = list(self.advertise)
        log.info(
            "cas node {node_id} listening for peers on {peer} (advertised: {adv}), API on {api}, data dir {dir}",
            node_id=self.node.node_id, peer=describe(peer), adv=", ".join(map(str, self.advertise)) or "none",
            api=describe(api), dir=self.node.datadir.path,
        )

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        self.node.start()
        self.peers.start()
        self.releaser.start()
        self.renewer.start()
        self.announcer.start()
        self.repairer.start()
        self.node.scrubber.start()
        self.auditor.start()
        if self.advertiser is not None:
            self.advertiser.start()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.advertiser is not None:
            self.advertiser.stop()
        self.releaser.stop()
        self.renewer.stop()
        self.announcer.stop()
        self.repairer.stop()
        self.node.scrubber.stop()
        self.auditor.stop()
        d = gatherResults([maybeDeferred(p.stopListening) for p in self.ports])
        self.ports = []
        d.addBoth(lambda _: self.peers.stop())
        d.addBoth(lambda _: self.node.stop())
        return d


def default_advertise(port: IListeningPort) -> list[Address]:
    """The bound address when it is a specific IP (tcp:3000:interface=10.0.0.5), else nothing (a wildcard
    address advertises its interfaces' candidates instead: ``cas.peer.interfaces``)."""
    h = port.getHost()
    if not isinstance(h, (IPv4Address, IPv6Address)) or h.type != "TCP" or is_wildcard(h.host):
        return []
    return [Address("tcp", h.host, h.port)]
