"""Reachability: this node learns its own address from what peers observe and checks it by dial-back; it also
dials back the peers that ask.

Each side of a connection says in its HELLO where it sees the other (``observed``). Once peers in 3 distinct
networks saw this node at one IP (``cas.peer.observed``), it asks one of them, with a ``PING`` carrying
``dial_back`` (its listen port), to dial it there; the peer dials the IP the asking connection comes from,
never another, expecting the asker's node id, and answers ``{"dial_back": true}`` or ``false`` with a reason.
Only then is the IP advertised, with the node's own listen port (never the observed port, a NAT's). A peer of
an older version answers the PING without ``dial_back`` (unknown header keys are ignored): that counts as no.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.nodeid import short_node_id
from cas.peer import frames
from cas.peer.connection import BAD_REQUEST, BUSY, RemoteError, Response
from cas.peer.observed import NEEDED, ObservedAddresses
from cas.peer.records import Address

log = Logger()
DIAL_BACK_TIMEOUT = 20.0  # seconds for a peer to dial us back (and for us to dial a peer back)
DIAL_BACK_SPACING = 60.0  # a peer may ask us for one dial-back per this many seconds
RETRY_AFTER = 1800.0  # an IP no reporter could dial back is tried again after this long
MAX_ASKERS = 1024  # peers remembered for the spacing rule


class Reachability:
    """Learns this node's address from what its peers observe, checks it by dial-back, and answers the dial-backs
    its peers ask for. ``port`` is the node's listen port when it chooses its own addresses (bound to a wildcard
    address, no ``--advertise``); None leaves the addresses to the operator and learns nothing."""

    def __init__(self, manager: Any, reactor: Any) -> None:
        self.manager = manager
        self.reactor = reactor
        self.port: int | None = None
        self.on_verified: Callable[[str], None] | None = None
        self.observed = ObservedAddresses()
        self.verified: set[str] = set()
        self._checking: str | None = None
        self._retry_at: dict[str, float] = {}  # ip -> reactor time before which it is not checked again
        self._answering: set[bytes] = set()  # peers we are dialling back now
        self._asked: dict[bytes, float] = {}  # peer -> when it last asked for a dial-back

    # -- our address -----------------------------------------------------------------------------------------
    def seen(self, conn: Any) -> None:
        """A peer's HELLO arrived: note where it sees us, and check that IP once enough networks agree."""
        info = conn.hello_info
        if self.port is None or info is None or info.observed is None or conn.remote_ip is None:
            return
        ip = info.observed
        self.observed.report(conn.peer_id, conn.remote_ip, ip)
        if ip in self.verified or self._checking is not None or self._retry_at.get(ip, 0.0) > self.reactor.seconds():
            return
        if self.observed.confirmed(ip):
            self._check(ip)

    def _check(self, ip: str) -> None:
        self._checking = ip
        port = self.port

        async def ask() -> bytes | None:
            for reporter in self.observed.reporters(ip)[:NEEDED + 1]:
                conn = self.manager.connections.get(reporter)
                if conn is None or not conn.accepted or conn.closing:
                    continue
                try:
                    answer = await conn.request(frames.PING, {"dial_back": port}, timeout=DIAL_BACK_TIMEOUT * 1.5)
                except Exception:  # gone, or too old to know dial_back: ask the next one
                    continue
                if answer.header.get("dial_back") is True:  # an older peer answers a plain PING: {}
                    return reporter
            return None

        def done(reporter: bytes | None) -> None:
            self._checking = None
            if reporter is None:
                self._retry_at[ip] = self.reactor.seconds() + RETRY_AFTER
                log.info("peers see this node at {ip}, but none could dial it back there at port {port}: "
                         "not advertised", ip=ip, port=port)
                return
            self.verified.add(ip)
            log.info("peers in {n} networks see this node at {ip} and node {peer} dialled it back at port {port}: "
                     "advertised", n=NEEDED, ip=ip, peer=short_node_id(reporter), port=port)
            if self.on_verified is not None:
                self.on_verified(ip)

        def failed(f: Failure) -> None:
            self._checking = None
            log.failure("checking an observed address failed", f)

        ensureDeferred(ask()).addCallbacks(done, failed)

    # -- a peer's address ------------------------------------------------------------------------------------
    def answer(self, conn: Any, header: dict[str, Any]) -> Deferred[Response]:
        """``PING`` with ``dial_back`` PORT: dial the asking peer at the IP its connection comes from and that
        port, expecting its node id. Only its own IP: a peer cannot make this node dial anywhere else."""
        port = header.get("dial_back")
        if type(port) is not int or not 1 <= port <= 65535:
            raise RemoteError(BAD_REQUEST, "dial_back must be a port number")
        if conn.remote_ip is None:
            raise RemoteError(BAD_REQUEST, "this connection has no IP address to dial back")
        peer = conn.peer_id
        now = self.reactor.seconds()
        if peer in self._answering or now - self._asked.get(peer, -DIAL_BACK_SPACING) < DIAL_BACK_SPACING:
            raise RemoteError(BUSY, f"one dial-back per {DIAL_BACK_SPACING:g} s")
        if len(self._asked) >= MAX_ASKERS:
            self._asked = {p: t for p, t in self._asked.items() if now - t < DIAL_BACK_SPACING}
            if len(self._asked) >= MAX_ASKERS:
                raise RemoteError(BUSY, "too many dial-backs asked for")
        self._asked[peer] = now
        self._answering.add(peer)
        address = Address("tcp", conn.remote_ip, port)
        d = self.manager.dial(address.endpoint(self.reactor, DIAL_BACK_TIMEOUT), peer)

        def ok(_conn: Any) -> Response:
            return Response({"dial_back": True}, b"")

        def no(f: Failure) -> Response:
            return Response({"dial_back": False, "reason": f.getErrorMessage()[:200]}, b"")

        def end(result: Response) -> Response:
            self._answering.discard(peer)
            return result

        return d.addCallbacks(ok, no).addCallback(end)
