"""Reachability: this node learns its own address from what peers observe and checks it by dial-back; it also
dials back the peers that ask.

Each side of a connection says in its HELLO where it sees the other (``observed``). Once peers in 3 distinct
networks see this node at one IP (``cas.peer.observed``), it asks one of them, with a ``PING`` carrying
``dial_back`` (its listen port), ``ip`` (the IP under test) and a random ``token``, to dial it there. The peer
checks that the asking connection comes from that IP (it never dials another), dials it expecting the asker's
node id, sends the token back over the new connection (a ``PING`` with ``proof``), and answers
``{"dial_back": true}`` or ``false`` with a reason. The asker counts the check as passed only if the token came
back on a connection that reached its listen port: a peer cannot pass it by saying so. Only then is the IP
advertised, with the node's own listen port (never the observed port, a NAT's). A peer of an older version
answers the PING without ``dial_back`` (unknown header keys are ignored): that counts as no.

What a lying verifier can still do: dial this node at another of its addresses and send the token there, so
that an IP which peers in 3 networks claim, and which does not reach the node, is advertised. That takes peers
in 3 networks plus the verifier; the damage is that other nodes dial that IP at this node's port, expecting
this node's key. One observed address per family is kept and it changes at most once per ``CHANGE_SPACING``.
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.nodeid import short_node_id
from cas.peer import frames
from cas.peer.connection import BAD_REQUEST, BUSY, RemoteError, Response
from cas.peer.observed import NEEDED, ObservedAddresses, canonical_ip, family, network_of
from cas.peer.records import Address, InvalidRecord

log = Logger()
DIAL_BACK_TIMEOUT = 20.0  # seconds for a peer to dial us back (and for us to dial a peer back)
DIAL_BACK_SPACING = 60.0  # one dial-back per asking network (/24, /48) per this many seconds
RETRY_AFTER = 1800.0  # an IP no reporter could dial back is tried again after this long
CHANGE_SPACING = 600.0  # after a check, the next one for that family waits this long
MAX_ASKERS = 1024  # asking networks remembered for the spacing rule
MAX_RETRIES = 64  # IPs remembered as failed
TOKEN_SIZE = 16


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
        self.current: dict[int, str] = {}  # family -> the observed IP last verified (and advertised)
        self._checking: str | None = None
        self._next_check: dict[int, float] = {}  # family -> no check before this reactor time
        self._retry_at: OrderedDict[str, float] = OrderedDict()  # ip -> not checked again before this time
        self._token: bytes | None = None  # the token of the dial-back in progress
        self._expected: bytes | None = None  # the peer asked to dial us back
        self._proven = False
        self._answering: set[str] = set()  # networks we are dialling back now
        self._asked: dict[str, float] = {}  # network -> when it last asked for a dial-back

    # -- our address -----------------------------------------------------------------------------------------
    def seen(self, conn: Any) -> None:
        """A peer's HELLO arrived: note where it sees us, and check that IP once enough networks agree."""
        info = conn.hello_info
        if self.port is None or info is None or info.observed is None or conn.remote_ip is None:
            return
        ip = info.observed
        self.observed.report(conn.peer_id, conn.remote_ip, ip)
        now = self.reactor.seconds()
        if self.current.get(family(ip)) == ip or self._checking is not None:
            return
        if self._retry_at.get(ip, 0.0) > now or self._next_check.get(family(ip), 0.0) > now:
            return
        if self.observed.confirmed(ip):
            self._check(ip)

    def _check(self, ip: str) -> None:
        self._checking = ip
        self._next_check[family(ip)] = self.reactor.seconds() + CHANGE_SPACING
        port = self.port

        async def ask() -> bytes | None:
            for reporter in self.observed.reporters(ip)[:NEEDED + 1]:
                conn = self.manager.connections.get(reporter)
                if conn is None or not conn.accepted or conn.closing:
                    continue
                self._token, self._expected, self._proven = os.urandom(TOKEN_SIZE), reporter, False
                header = {"dial_back": port, "ip": ip, "token": self._token}
                try:
                    answer = await conn.request(frames.PING, header, timeout=DIAL_BACK_TIMEOUT * 2)
                except Exception:  # gone, or refused: ask the next one
                    continue
                # An older peer answers a plain PING ({}); a liar may say true: only the token counts.
                if answer.header.get("dial_back") is True and self._proven:
                    return reporter
            return None

        def done(reporter: bytes | None) -> None:
            self._checking, self._token, self._expected = None, None, None
            if reporter is None:
                now = self.reactor.seconds()
                self._retry_at[ip] = now + RETRY_AFTER
                for old in [k for k, t in self._retry_at.items() if t <= now]:
                    del self._retry_at[old]
                while len(self._retry_at) > MAX_RETRIES:
                    self._retry_at.popitem(last=False)
                log.info("peers see this node at {ip}, but none could dial it back there at port {port}: "
                         "not advertised", ip=ip, port=port)
                return
            self.current[family(ip)] = ip
            log.info("peers in {n} networks see this node at {ip} and node {peer} dialled it back at port {port}: "
                     "advertised", n=NEEDED, ip=ip, peer=short_node_id(reporter), port=port)
            if self.on_verified is not None:
                try:
                    self.on_verified(ip)
                except Exception:
                    log.failure("advertising an observed address failed")

        def failed(f: Failure) -> None:
            self._checking, self._token, self._expected = None, None, None
            log.failure("checking an observed address failed", f)

        ensureDeferred(ask()).addCallbacks(done, failed)

    def proof(self, conn: Any, token: Any) -> Response:
        """``PING`` with ``proof``: a peer dialled us back and sends the token we gave it. Only a connection that
        reached our listen port (we did not dial it) from the peer we asked counts."""
        good = (self._token is not None and isinstance(token, bytes) and hmac.compare_digest(token, self._token)
                and not conn.initiator and conn.peer_id == self._expected)
        if good:
            self._proven = True
        return Response({"proof": good}, b"")

    # -- a peer's address ------------------------------------------------------------------------------------
    def answer(self, conn: Any, header: dict[str, Any]) -> Deferred[Response] | Response:
        """``PING`` with ``dial_back`` PORT, ``ip`` and ``token``: dial the asking peer at that IP, which must be
        the one its connection comes from (so a peer cannot make this node dial anywhere else), and that port,
        expecting its node id; send the token back over the new connection."""
        port, token = header.get("dial_back"), header.get("token")
        if type(port) is not int or not 1 <= port <= 65535:
            raise RemoteError(BAD_REQUEST, "dial_back must be a port number")
        if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
            raise RemoteError(BAD_REQUEST, f"token must be {TOKEN_SIZE} bytes")
        ip = conn.remote_ip
        if ip is None:
            raise RemoteError(BAD_REQUEST, "this connection has no IP address to dial back")
        if canonical_ip(header.get("ip")) != ip:
            return Response({"dial_back": False, "reason": f"this connection comes from {ip}"}, b"")
        try:
            address = Address("tcp", ip, port)
        except InvalidRecord as e:
            return Response({"dial_back": False, "reason": str(e)}, b"")
        net = network_of(ip)
        now = self.reactor.seconds()
        if net in self._answering or now - self._asked.get(net, -DIAL_BACK_SPACING) < DIAL_BACK_SPACING:
            raise RemoteError(BUSY, f"one dial-back per network per {DIAL_BACK_SPACING:g} s")
        if len(self._asked) >= MAX_ASKERS:
            self._asked = {n: t for n, t in self._asked.items() if now - t < DIAL_BACK_SPACING}
            if len(self._asked) >= MAX_ASKERS:
                raise RemoteError(BUSY, "too many dial-backs asked for")
        self._asked[net] = now
        self._answering.add(net)
        peer = conn.peer_id

        async def dial_back() -> Response:
            try:
                back = await self.manager.dial(address.endpoint(self.reactor, DIAL_BACK_TIMEOUT), peer, new=True)
                sent = await back.request(frames.PING, {"proof": token}, timeout=DIAL_BACK_TIMEOUT)
            except Exception as e:
                return Response({"dial_back": False, "reason": str(e)[:200]}, b"")
            finally:
                self._answering.discard(net)
            if sent.header.get("proof") is not True:
                return Response({"dial_back": False, "reason": "the token was not taken"}, b"")
            return Response({"dial_back": True}, b"")

        return ensureDeferred(dial_back())
