"""The peer layer of a node: connections, dialling, bootstrap, failure detection and membership.

``PeerManager`` is the ``PeerHost`` of every ``PeerProtocol``. It keeps at most one connection per peer
(two nodes dialling each other at once keep the connection dialled by the lower node id), opens connections
on demand (``connect``) and closes idle ones, answers block and gossip requests, probes peers in turn to
detect failures (suspect at the first failed contact, dead after ``dead_after`` seconds of failures), retries
with exponential backoff and jitter, and tells subscribers when membership changes. Addresses learned from
the network are dialled only through ``records.Address.endpoint`` (an allow-list), never ``clientFromString``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas import __version__
from cas.base.cid import CID
from cas.base.errors import BlockNotFound, CorruptBlock, MalformedKey, NotInRank, StorageFull, WrongPlacementKey
from cas.base.nodeid import format_node_id, short_node_id
from cas.peer import frames
from cas.peer.connection import (
    BAD_REQUEST,
    BUSY,
    INTERNAL,
    NOT_FOUND,
    OVER_QUOTA,
    REQUEST_TIMEOUT,
    TOO_LARGE,
    ConnectionClosed,
    PeerError,
    PeerProtocol,
    RemoteError,
    Response,
    SelfConnection,
    peer_text,
)
from cas.peer.gossip import Gossip, TokenBucket
from cas.peer.peertable import ALIVE, CONNECTED, DEAD, NEW, SUSPECT, PeerEntry, PeerTable
from cas.peer.peertls import client_creator, wrap_client
from cas.peer.reach import Reachability
from cas.peer.records import Address, InvalidRecord, PeerRecord, decode_record, next_seq, sign_record
from cas.peer.track import TrackRecords
from cas.store.blockstore import MAX_BLOCK_SIZE
from cas.store.leases import LEGACY

log = Logger()

MAX_HAS = 1024
MAX_KEY_SIZE = 128  # bytes of a placement key in PUT_BLOCK (cas's are 38 for a stripe, 51 for a manifest)
MAX_LEASE_KEYS = 1024  # keys per LEASE or RELEASE
MAX_CARRIED = 16  # leases a repair PUT_BLOCK carries at most
MAX_N = 16  # copies a file may want (--replicas is 0 to 16)
MAX_ANNOUNCED = 2048  # block ids per LEASE that announces a file stored before leases (a 64 KiB header holds ~1,700)
MAX_LEASE_SECONDS = 0xFFFFFFFF  # a lease asked for (a holder grants at most its --max-lease-time)
PEERS_PER_SECOND = 5  # PEERS requests a connection may make (a burst of 5, then 5 per second)
REPORTS_PER_MINUTE = 10  # REPORTs a connection may make (a burst of 10, then 10 a minute)
CHALLENGES_PER_MINUTE = 10  # CHALLENGEs a connection may make (a burst of 10, then 10 a minute)
MAX_CHALLENGE = 64 << 10  # bytes of a block one CHALLENGE may cover
VOLUNTARY_REASONS = frozenset({"idle", "duplicate connection", "too many connections"})
SAVE_SPACING = 1.0  # seconds between two saves of the peer table prompted by membership changes


@attrs.define
class Bootstrap:
    """An operator-given contact: ``host:port``, with the node id to pin or None (trust on first use)."""

    node_id: bytes | None
    host: str
    port: int
    done: bool = False
    failures: int = 0
    next_attempt: float = 0.0
    is_self: bool = False

    def address(self) -> Address | None:
        """As a dialable address, when the host is an IP address (a name is not kept: it may change)."""
        try:
            return Address("tcp", self.host, self.port)
        except (ValueError, InvalidRecord):
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (format_node_id(self.node_id) + "@" if self.node_id else "") + f"{host}:{self.port}"


@attrs.frozen
class MembershipChange:
    node_id: bytes
    member: bool  # True: joined (or came back), False: left (dead, or its record expired)


@attrs.define
class PeerSettings:
    gossip_interval: float = 5.0
    probe_interval: float = 2.0
    dead_after: float = 30.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    max_connections: int = 64
    idle_close: float = 120.0
    record_ttl: int = 3600
    duplicate_grace: float = 5.0
    connect_timeout: float = 10.0


class PeerManager:
    def __init__(
        self,
        node: Any,
        reactor: Any,
        advertise: Sequence[Address] = (),
        bootstrap: Sequence[Bootstrap] = (),
        settings: PeerSettings | None = None,
        table_path: str | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.reactor = reactor
        self.identity = node.identity
        self.node_id: bytes = node.identity.node_id
        self.advertise = list(advertise)
        self.bootstrap = list(bootstrap)
        self.settings = settings or PeerSettings()
        self.rng = rng or random.Random()
        self.wall = wall
        self.table = PeerTable(table_path, self.node_id)
        self.connections: dict[bytes, PeerProtocol] = {}  # the one accepted connection per peer
        self.all: set[PeerProtocol] = set()  # every open connection, accepted or not, duplicates too
        self._dialing: dict[bytes, list[Deferred[PeerProtocol]]] = {}  # waiters of the dial in progress
        self._subscribers: list[Callable[[MembershipChange], None]] = []
        self._on_connect: list[Callable[[bytes], None]] = []
        self._members: set[bytes] = set()
        self._probe_queue: list[bytes] = []
        self._timers: dict[str, IDelayedCall] = {}
        self._stopping = False
        self._dials: set[Deferred[Any]] = set()
        self._grace: dict[PeerProtocol, IDelayedCall] = {}  # duplicates closed after a grace period
        self._peers_asked: dict[PeerProtocol, TokenBucket] = {}  # PEERS allowance of each connection
        self._reports: dict[PeerProtocol, TokenBucket] = {}  # REPORT allowance of each connection
        self._challenges: dict[PeerProtocol, TokenBucket] = {}  # CHALLENGE allowance of each connection
        self.track = TrackRecords(lambda: self.wall())  # audits and false reports, per peer (bounded)
        self.gossip = Gossip(
            self.table, reactor, wall, self._send_records, self._publish, rng=self.rng,
            interval=self.settings.gossip_interval,
        )
        self.own_record: PeerRecord | None = None
        self.reach = Reachability(self, reactor)  # our address as peers see it; their dial-backs
        self._seq = 0
        self._saved_at = -SAVE_SPACING  # reactor time of the last save of the table

    # -- life ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        n = self.table.load(self.wall())
        if n:
            log.info("peer table: {n} peers from {path}", n=n, path=self.table.path)
        for b in self.bootstrap:  # a contact trusted on first use in an earlier run stays pinned to that key
            address = b.address()
            if b.node_id is None and address is not None:
                for e in self.table:
                    if address in e.operator_addresses:
                        b.node_id = e.node_id
                        log.info("bootstrap {b}: pinned to the node first trusted there", b=str(b))
                        break
        self._sign()
        self._members = {e.node_id for e in self.table.members(self.wall())}
        self.gossip.start()
        self._every("probe", self.settings.probe_interval, self._probe)
        self._every("bootstrap", 1.0, self._bootstrap_tick)
        self._every("save", 10.0, self._save)
        self._bootstrap_tick()

    def stop(self) -> Deferred[None]:
        """Say BYE on every connection, save the table; fires once the connections are closed (at most 2 s)."""
        self._stopping = True
        self.gossip.stop()
        for t in self._timers.values():
            if t.active():
                t.cancel()
        self._timers.clear()
        for d in list(self._dials):
            d.cancel()
        for t in self._grace.values():
            if t.active():
                t.cancel()
        self._grace.clear()
        waits = []
        for conn in list(self.all):
            waits.append(conn.when_closed())
            conn.close("shutting down")
        self._save()
        done: Deferred[None] = Deferred()
        timer = self.reactor.callLater(2.0, lambda: done.called or done.callback(None))

        def all_closed(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        DeferredList(waits).addCallback(all_closed)
        for conn in list(self.all):  # whatever did not close within the grace period is cut
            done.addCallback(lambda _r, c=conn: c.fail("shutting down") if c.is_open else None)
        return done

    def _every(self, name: str, interval: float, f: Callable[[], Any]) -> None:
        def tick() -> None:
            try:
                f()
            except Exception:
                log.failure("peer layer: {name} failed", name=name)
            if not self._stopping:
                self._timers[name] = self.reactor.callLater(interval * self.rng.uniform(0.75, 1.25), tick)

        self._timers[name] = self.reactor.callLater(interval * self.rng.uniform(0.5, 1.0), tick)

    def _save(self) -> None:
        if self.table.dirty:
            self._saved_at = self.reactor.seconds()
            try:
                self.table.save()
            except OSError as e:
                log.warn("cannot save the peer table: {e}", e=e.strerror)

    def _save_soon(self) -> None:
        """Membership changed: save now, so that a node killed next restarts knowing it; but at most once a
        second (one write and fsync however fast a large network churns), the changes in between saved
        together at the end of that second."""
        if self._stopping or ("save_soon" in self._timers and self._timers["save_soon"].active()):
            return
        wait = min(SAVE_SPACING, self._saved_at + SAVE_SPACING - self.reactor.seconds())  # a clock stepped back
        if wait <= 0:
            try:
                self._save()
            except Exception:  # called from connection callbacks: a bug here must not break them
                log.failure("saving the peer table failed")
            return

        def save() -> None:
            self._timers.pop("save_soon", None)
            self._save()

        self._timers["save_soon"] = self.reactor.callLater(wait, save)

    def set_advertise(self, addresses: Sequence[Address]) -> None:
        """Advertise other addresses from now on: a new signed record, which gossip spreads. If it cannot be
        signed (ValueError: too many addresses), nothing changes."""
        old, self.advertise = self.advertise, list(addresses)
        try:
            self._sign()
        except ValueError:
            self.advertise = old
            raise

    def _sign(self) -> None:
        now = self.wall()
        self._seq = next_seq(max(self._seq, self.table.own_seq) or None, now)
        self.table.own_seq = self._seq
        self.table.dirty = True
        self.own_record = sign_record(self.identity, self.advertise, self._seq, int(now) + self.settings.record_ttl)
        self.gossip.own_record = self.own_record

    # -- PeerHost ------------------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        if self.own_record is None or self.own_record.expires - self.wall() < self.settings.record_ttl / 2:
            self._sign()
        assert self.own_record is not None
        return {
            "software": f"cas/{__version__}",
            "addresses": [a.to_cbor() for a in self.advertise],
            "record": self.own_record.encode(),
        }

    def server_factory(self) -> Factory:
        """Protocol factory for the listening endpoint (wrapped in TLS by ``listen_endpoint``)."""
        manager = self

        class PeerFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> PeerProtocol | None:  # type: ignore[override]
                if manager._stopping:
                    return None
                p = PeerProtocol(manager, manager.reactor, initiator=False)
                p.factory = self
                manager.all.add(p)
                return p

        return PeerFactory()

    def accepted(self, conn: PeerProtocol) -> None:
        peer = conn.peer_id
        assert peer is not None and conn.hello_info is not None
        existing = self.connections.get(peer)
        if existing is not None and existing is not conn and existing.accepted and not existing.closing:
            # Two connections to one peer: keep the one dialled by the lower node id (and, if one side dialled
            # twice, with the lower nonce). Both sides compute the same keys, so they keep the same connection.
            if existing.dialler_key(self.node_id) <= conn.dialler_key(self.node_id):
                keep, drop = existing, conn
            else:
                keep, drop = conn, existing
            self.connections[peer] = keep
            self._grace[drop] = self.reactor.callLater(
                self.settings.duplicate_grace, self._close_voluntarily, drop, "duplicate connection")
            if keep is existing:
                return
        if self.table.get(peer) is None and not conn.initiator:
            # A new identity dialling in: one address cannot introduce identities faster than gossip allows.
            host = conn.remote.rsplit(":", 1)[0]
            if not self.gossip.allow_new(b"addr:" + host.encode()):
                conn.fail("too many new node identities from this address")
                return
        self.connections[peer] = conn
        entry = self.table.add(peer)
        if conn.hello_info.record is not None:
            try:
                record = decode_record(conn.hello_info.record, self.wall())
            except InvalidRecord as e:
                log.info("{peer} sent an invalid record in HELLO: {e}", peer=conn.label(), e=str(e))
            else:
                if record.node_id == peer:
                    self.gossip.apply(record, None)
        if entry is not None:
            entry.software = peer_text(conn.hello_info.software, 64)
            self._contact_ok(entry)
            entry.state = CONNECTED
        log.info("{peer} connected ({dir}, {sw})", peer=conn.label(), dir="out" if conn.initiator else "in",
                 sw=peer_text(conn.hello_info.software, 64))
        self._publish()
        self._enforce_connection_limit()
        self.reach.seen(conn)
        for cb in list(self._on_connect):
            cb(peer)

    def lost(self, conn: PeerProtocol, reason: str) -> None:
        self.all.discard(conn)
        self._peers_asked.pop(conn, None)
        self._reports.pop(conn, None)
        self._challenges.pop(conn, None)
        t = self._grace.pop(conn, None)
        if t is not None and t.active():
            t.cancel()
        peer = conn.peer_id
        if peer is None or self.connections.get(peer) is not conn:
            return
        del self.connections[peer]
        entry = self.table.get(peer)
        if entry is None:
            return
        # Closed on purpose by either side (idle, duplicate, too many connections) is not a failure; a peer
        # that said it is shutting down is suspect until it answers again.
        if conn.our_bye in VOLUNTARY_REASONS or conn.peer_bye in VOLUNTARY_REASONS or self._stopping:
            entry.state = ALIVE
        else:
            log.info("lost {peer}: {reason}", peer=conn.label(), reason=reason)
            self._contact_failed(entry, reason)
        self._publish()

    def handle(self, conn: PeerProtocol, frame: frames.Frame) -> Deferred[Response] | Response:
        h = frame.header
        if frame.type == frames.PING:  # one with a header: a plain PING is answered by the connection
            if "proof" in h:
                return self.reach.proof(conn, h["proof"])
            if "dial_back" in h:
                return self.reach.answer(conn, h)
            return Response({}, b"")  # keys of a later version: ignored
        if frame.type == frames.PEERS:
            # A gossip exchange walks the table: a few per second per connection is plenty.
            now = self.reactor.seconds()
            bucket = self._peers_asked.get(conn)
            if bucket is None:
                bucket = self._peers_asked[conn] = TokenBucket(PEERS_PER_SECOND, 1.0, now)
            if not bucket.take(now):
                raise RemoteError(BUSY, f"at most {PEERS_PER_SECOND} PEERS requests per second")
            try:
                self.gossip.receive(conn.peer_id, h.get("records"))  # type: ignore[arg-type]
            except ValueError as e:
                raise RemoteError(TOO_LARGE if "at most" in str(e) else BAD_REQUEST, str(e)) from None
            return Response({"records": self.gossip.sample(exclude=conn.peer_id)}, b"")
        if frame.type == frames.GET_BLOCK:
            cid = _cid(h.get("cid"))
            d = self.node.serve_block(cid)
            d.addCallbacks(lambda block: Response({}, block), _block_error, errbackArgs=(False,))
            return d
        if frame.type == frames.PUT_BLOCK:
            cid = _cid(h.get("cid"))
            if len(frame.payload) > MAX_BLOCK_SIZE:  # the store's own limit, answered before any work
                raise RemoteError(TOO_LARGE, f"a block is at most {MAX_BLOCK_SIZE} bytes")
            assert conn.peer_id is not None
            key = h.get("key")  # the placement key (optional in version 1)
            if key is not None:
                _check_key(key)
            lease = h.get("lease")  # seconds (version 2; a version-1 node's blocks get --max-lease-time)
            if conn.version >= 2:
                if key is None or lease is None:
                    raise RemoteError(BAD_REQUEST, "PUT_BLOCK needs a key and a lease")
                if not isinstance(lease, int) or not 0 < lease <= MAX_LEASE_SECONDS:
                    raise RemoteError(BAD_REQUEST, f"lease must be an integer of 1 to {MAX_LEASE_SECONDS} seconds")
            else:
                lease = None
            origin, n, carried = _placement_info(h) if conn.version >= 2 else (None, None, [])
            d = self.node.hold_block(conn.peer_id.hex(), cid, frame.payload, key, lease, origin, n, carried)
            d.addCallbacks(lambda _stored: Response({}, b""), _block_error, errbackArgs=(True,))
            return d
        if frame.type in (frames.LEASE, frames.RELEASE):
            keys = h.get("keys")
            if not isinstance(keys, list):
                raise RemoteError(BAD_REQUEST, "keys must be a list")
            if len(keys) > MAX_LEASE_KEYS:
                raise RemoteError(TOO_LARGE, f"at most {MAX_LEASE_KEYS} keys per {frames.TYPE_NAMES[frame.type]}")
            for k in keys:
                _check_key(k)
            assert conn.peer_id is not None
            if frame.type == frames.RELEASE:
                return Response({"released": bitmap(self.node.release(conn.peer_id, keys))}, b"")
            lease = h.get("time")
            if not isinstance(lease, int) or not 0 < lease <= MAX_LEASE_SECONDS:
                raise RemoteError(BAD_REQUEST, f"time must be an integer of 1 to {MAX_LEASE_SECONDS} seconds")
            announced = _announced(h.get("cids"), len(keys))
            return self.node.lease(conn.peer_id, keys, lease, announced).addCallback(
                lambda r: Response({"time": r[0], "granted": bitmap(r[1]), "complete": bitmap(r[2])}, b""))
        if frame.type == frames.REPORT:
            # The reporter received bytes from us that did not match the id: check our copy. Rate-limited, and a
            # report of a good copy counts against the reporter.
            self._per_minute(self._reports, conn, REPORTS_PER_MINUTE, "REPORT")
            cid = _cid(h.get("cid"))
            assert conn.peer_id is not None
            peer = conn.peer_id
            return self.node.check_reported(cid).addCallback(lambda found: self._reported(peer, cid, found))
        if frame.type == frames.CHALLENGE:
            # Prove we hold the block: BLAKE3 keyed with the challenger's fresh nonce over a range of it.
            self._per_minute(self._challenges, conn, CHALLENGES_PER_MINUTE, "CHALLENGE")
            cid = _cid(h.get("cid"))
            nonce, offset, length = h.get("nonce"), h.get("offset"), h.get("length")
            if not isinstance(nonce, bytes) or len(nonce) != 32:
                raise RemoteError(BAD_REQUEST, "nonce must be 32 bytes")
            if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0
                    and 0 < length <= MAX_CHALLENGE):
                raise RemoteError(BAD_REQUEST, f"offset and length (1 to {MAX_CHALLENGE}) must be integers")
            d = self.node.prove(cid, nonce, offset, length)
            d.addCallbacks(lambda mac: Response({"mac": mac}, b""), _block_error, errbackArgs=(False,))
            return d
        if frame.type == frames.HAS:
            cids = h.get("cids")
            if not isinstance(cids, list):
                raise RemoteError(BAD_REQUEST, "cids must be a list")
            if len(cids) > MAX_HAS:
                raise RemoteError(TOO_LARGE, f"at most {MAX_HAS} ids per HAS")
            parsed = [_cid(c) for c in cids]
            if conn.version >= 2:  # version 2 also says which are held under a live lease
                return self.node.has_leased(parsed).addCallback(
                    lambda r: Response({"bitmap": bitmap(r[0]), "leased": bitmap(r[1])}, b""))
            return self.node.has_blocks(parsed).addCallback(lambda held: Response({"bitmap": bitmap(held)}, b""))
        raise RemoteError(BAD_REQUEST, f"{frames.TYPE_NAMES.get(frame.type, frame.type)} is not a request")

    # -- connecting ----------------------------------------------------------------------------------------
    def connect(self, node_id: bytes) -> Deferred[PeerProtocol]:
        """An accepted connection to ``node_id``: the open one, or a new one dialled at its addresses."""
        if node_id == self.node_id:
            return fail(PeerError("a node does not dial itself"))
        c = self.connections.get(node_id)
        if c is not None and c.accepted and not c.closing:
            return succeed(c)
        if self._stopping:
            return fail(ConnectionClosed("the node is stopping"))
        waiter: Deferred[PeerProtocol] = Deferred()
        if node_id in self._dialing:  # one dial per peer; every caller gets its outcome
            self._dialing[node_id].append(waiter)
            return waiter
        entry = self.table.get(node_id)
        addresses = entry.dial_addresses() if entry is not None else ()
        if not addresses:
            return fail(PeerError(f"no address known for node {short_node_id(node_id)}"))
        waiters = self._dialing[node_id] = [waiter]

        def done(result: Any) -> None:
            del self._dialing[node_id]
            if isinstance(result, Failure):
                e = self.table.get(node_id)
                if e is not None and not self._stopping:
                    self._contact_failed(e, result.getErrorMessage())
                    self._publish()
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        self._dial_addresses(addresses, node_id).addBoth(done)
        return waiter

    def _dial_addresses(self, addresses: Sequence[Address], expected: bytes) -> Deferred[PeerProtocol]:
        async def attempt() -> PeerProtocol:
            errors = []
            for a in addresses:
                if self._stopping:
                    raise ConnectionClosed("the node is stopping")
                try:
                    return await self.dial(a.endpoint(self.reactor, timeout=self.settings.connect_timeout), expected)
                except CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - every failure means: try the next address
                    errors.append(f"{a}: {e}")
            raise PeerError(f"cannot reach node {short_node_id(expected)}: " + "; ".join(errors))

        return Deferred.fromCoroutine(attempt())

    def dial(self, endpoint: IStreamClientEndpoint, expected: bytes | None, new: bool = False) -> Deferred[PeerProtocol]:
        """Connect over TLS to ``endpoint`` expecting node ``expected`` (None: trust on first use); fires
        with the accepted connection to that peer (the surviving one, if two raced; with ``new``, the one this
        dial opened, even if it is the duplicate to be closed: a dial-back must use the path it tested)."""

        def mismatch(want: bytes, seen: bytes) -> None:
            log.warn("dropped a connection: the peer presented node {seen}, expected {want}",
                     seen=format_node_id(seen), want=format_node_id(want))

        proto = PeerProtocol(self, self.reactor, initiator=True, expected=expected)
        tls = wrap_client(client_creator(self.identity, expected, mismatch), endpoint)
        d = tls.connect(_OneConnection(proto))
        self._dials.add(d)

        def connected(_p: Any) -> Deferred[PeerProtocol]:
            self._dials.discard(d)
            self.all.add(proto)
            if self._stopping:
                proto.fail("shutting down")
            return proto.ready

        def not_connected(f: Failure) -> Failure:
            self._dials.discard(d)
            return f

        def winner(p: PeerProtocol) -> PeerProtocol:
            assert p.peer_id is not None
            return self.connections.get(p.peer_id, p)

        d.addCallbacks(connected, not_connected)
        return d if new else d.addCallback(winner)

    def _close_voluntarily(self, conn: PeerProtocol, reason: str) -> None:
        """Close a healthy connection for ``reason`` (one of VOLUNTARY_REASONS: not a failure of the peer)."""
        self._grace.pop(conn, None)
        conn.close(reason)

    def _enforce_connection_limit(self) -> None:
        now = self.reactor.seconds()
        conns = [c for c in self.connections.values() if c.accepted and not c.closing]
        for c in conns:
            if now - c.idle_since > self.settings.idle_close:
                self._close_voluntarily(c, "idle")
        conns = [c for c in conns if not c.closing]
        excess = len(conns) - self.settings.max_connections
        if excess > 0:
            for c in sorted(conns, key=lambda c: c.idle_since)[:excess]:
                self._close_voluntarily(c, "too many connections")

    # -- health --------------------------------------------------------------------------------------------
    def _contact_ok(self, entry: PeerEntry) -> None:
        entry.last_seen = self.wall()
        entry.failures = 0
        entry.suspect_since = None
        entry.next_attempt = 0.0
        if entry.state != CONNECTED:
            entry.state = CONNECTED if entry.node_id in self.connections else ALIVE
        self.table.dirty = True

    def _contact_failed(self, entry: PeerEntry, reason: str) -> None:
        c = self.connections.get(entry.node_id)
        if c is not None and c.accepted and not c.closing:
            return  # a dial to an old address failed, but the node is connected (it dialled us meanwhile)
        now = self.wall()
        entry.failures += 1
        if entry.state in (NEW, CONNECTED, ALIVE):
            entry.state = SUSPECT
            entry.suspect_since = now
            log.info("node {peer} is suspect: {reason}", peer=short_node_id(entry.node_id), reason=reason)
        elif entry.state == SUSPECT:
            self._maybe_dead(entry, now)
        if entry.state == SUSPECT:
            # Probe a suspect again soon, so that it is confirmed dead (or alive) about dead_after later.
            delay = min(self.settings.dead_after / 3, self.settings.backoff_base * 2 ** min(entry.failures, 16))
        else:
            delay = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** min(entry.failures, 16))
        entry.next_attempt = self.reactor.seconds() + delay * self.rng.uniform(0.5, 1.5)
        self.table.dirty = True

    def _maybe_dead(self, entry: PeerEntry, now: float) -> None:
        """A suspect that has not been reached for ``dead_after`` seconds is dead."""
        if entry.state == SUSPECT and entry.suspect_since is not None and now - entry.suspect_since >= self.settings.dead_after \
                and entry.node_id not in self.connections:
            entry.state = DEAD
            entry.dead_since = now
            self.table.dirty = True
            log.info("node {peer} is dead: unreachable for {s:.0f} s", peer=short_node_id(entry.node_id), s=now - entry.suspect_since)

    def _probe(self) -> None:
        """Contact one peer: a suspect (or a never-reached peer) that is due first, so that failures are
        confirmed about ``dead_after`` after they start whatever the size of the table; else the next peer of
        a shuffled round. Connect if need be, then PING."""
        self._enforce_connection_limit()
        self._expire()
        now = self.reactor.seconds()
        wall = self.wall()
        due = [e for e in self.table if e.state in (SUSPECT, NEW) and e.next_attempt <= now
               and e.node_id not in self.connections and e.node_id not in self._dialing and e.dial_addresses()]
        if due:
            due.sort(key=lambda e: (e.state != SUSPECT, e.next_attempt))
            self._ping(due[0].node_id)
            return
        for _ in range(2):
            while self._probe_queue:
                node_id = self._probe_queue.pop()
                e = self.table.get(node_id)
                if e is None or e.next_attempt > now or not e.dial_addresses() and node_id not in self.connections:
                    continue
                c = self.connections.get(node_id)
                if c is not None and c.accepted and now - c.last_heard < self.settings.probe_interval:
                    continue  # heard from it just now
                if c is None and e.state == ALIVE and e.last_seen is not None and wall - e.last_seen < self.settings.dead_after / 2:
                    continue  # reached a moment ago (its connection was closed as idle): no need to dial again yet
                self._ping(node_id)
                return
            self._probe_queue = [e.node_id for e in self.table]
            self.rng.shuffle(self._probe_queue)

    def _ping(self, node_id: bytes) -> Deferred[Any]:
        """A failed dial is recorded by ``connect``; an unanswered PING cuts the connection (half-open), which
        ``lost`` records. So only success needs recording here."""

        def ok(rtt: float) -> None:
            e = self.table.get(node_id)
            if e is not None:
                e.rtt = rtt
                self._contact_ok(e)
                self._publish()

        def pinged(c: PeerProtocol) -> Deferred[Any]:
            d = c.ping(timeout=min(10.0, self.settings.dead_after / 2))

            def unanswered(f: Failure) -> None:
                c.fail(f"no answer to PING: {f.getErrorMessage()}")

            return d.addCallbacks(ok, unanswered)

        d = self.connect(node_id)
        d.addCallback(pinged)
        d.addErrback(lambda _f: None)
        return d

    def _expire(self) -> None:
        now = self.wall()
        changed = False
        for e in self.table:
            if e.state == SUSPECT:  # also those that cannot be dialled (no address): time alone decides
                before = e.state
                self._maybe_dead(e, now)
                changed = changed or e.state != before
            if e.record is not None and e.record.expires <= now and e.state != CONNECTED:
                # An expired record is no longer a member; its addresses are kept to ask for a fresh one.
                e.record = None
                changed = True
            if e.state == DEAD and e.record is None and not e.pinned and e.last_seen is not None and now - e.last_seen > 7 * 86400:
                self.table.remove(e.node_id)
        if self.own_record is not None and self.own_record.expires - now < self.settings.record_ttl / 2:
            self._sign()
        if changed:
            self.table.dirty = True
            self._publish()

    # -- bootstrap -----------------------------------------------------------------------------------------
    def _bootstrap_tick(self) -> None:
        now = self.reactor.seconds()
        if not self.connections and not any(e.member(self.wall()) for e in self.table):
            for b in self.bootstrap:  # alone again: go back to the bootstrap contacts
                b.done = False
        for b in self.bootstrap:
            if b.done or b.is_self or b.next_attempt > now:
                continue
            b.next_attempt = float("inf")  # one attempt at a time
            self._try_bootstrap(b)

    def _try_bootstrap(self, b: Bootstrap) -> None:
        if b.node_id is not None and (b.node_id in self.connections or b.node_id in self._dialing):
            b.done = True
            return
        endpoint = bootstrap_endpoint(self.reactor, b.host, b.port, self.settings.connect_timeout)
        d = self.dial(endpoint, b.node_id)

        def ok(conn: PeerProtocol) -> None:
            b.done, b.failures = True, 0
            b.next_attempt = 0.0
            assert conn.peer_id is not None
            if b.node_id is None:
                log.info("bootstrap {b}: trusting node {peer} on first use (no node id given); pinned from now on",
                         b=str(b), peer=format_node_id(conn.peer_id))
                b.node_id = conn.peer_id  # later dials of this contact check this key
            e = self.table.get(conn.peer_id)
            if e is not None:
                e.pinned = True
                address = b.address()
                if address is not None and address not in e.operator_addresses:
                    e.operator_addresses += (address,)  # kept (and saved): the node may advertise no address
                self.table.dirty = True
                self._save_soon()  # the pin too: membership (saved at once) changed before it was set
            self.gossip.exchange(conn.peer_id)

        def failed(f: Failure) -> None:
            if self._stopping:
                return
            if f.check(SelfConnection):
                b.is_self = True
                log.info("bootstrap {b} is this node: skipped", b=str(b))
                return
            b.failures += 1
            delay = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** min(b.failures, 16)) * self.rng.uniform(0.5, 1.5)
            b.next_attempt = self.reactor.seconds() + delay
            log.info("bootstrap {b} unreachable ({e}); retrying in {d:.0f} s", b=str(b), e=f.getErrorMessage(), d=delay)

        d.addCallbacks(ok, failed)

    # -- requests to peers ---------------------------------------------------------------------------------
    def request(
        self, node_id: bytes, type: int, header: dict[str, Any], payload: bytes | memoryview = b"",
        timeout: float = REQUEST_TIMEOUT,
    ) -> Deferred[Response]:
        """A request to ``node_id`` on its connection, opened if need be. If that connection was being closed
        cleanly (idle, duplicate, the peer's BYE) as the request crossed it, it is sent once more on a new one.

        No closure here refers to itself: a reference cycle would keep ``payload`` (a 1 MiB block) alive until
        the cyclic garbage collector runs, which large buffers do not prompt (measured: +150 MiB on an upload)."""

        def again(f: Failure) -> Any:
            f.trap(ConnectionClosed)
            if not f.value.clean or self._stopping:  # type: ignore[attr-defined]
                return f
            return self._attempt(node_id, type, header, payload, timeout)

        return self._attempt(node_id, type, header, payload, timeout).addErrback(again)

    def _attempt(
        self, node_id: bytes, type: int, header: dict[str, Any], payload: bytes | memoryview, timeout: float,
    ) -> Deferred[Response]:
        return self.connect(node_id).addCallback(lambda c: c.request(type, header, payload, timeout))

    def _send_records(self, node_id: bytes, records: list[bytes]) -> Deferred[Any]:
        d = self.request(node_id, frames.PEERS, {"records": records})
        return d.addCallback(lambda r: r.header.get("records"))

    def put_block(
        self, node_id: bytes, cid: CID, block: bytes | memoryview, timeout: float = REQUEST_TIMEOUT,
        key: bytes | None = None, lease: int | None = None, origin: bytes | None = None, n: int | None = None,
        leases: list[tuple[bytes, int]] | None = None,
    ) -> Deferred[bool]:
        """Place ``block`` on ``node_id`` under our lease of ``lease`` seconds on its placement ``key``. Fires
        with whether the copy is under our lease: False from a node of protocol version 1, which ignores the
        lease and keeps blocks for its own --max-lease-time (such a copy is not a replica we can keep)."""
        header: dict[str, Any] = {"cid": cid.to_bytes()}
        if key is not None:
            header["key"] = key
        if lease is not None:
            header["lease"] = lease
        if origin is not None and n is not None:  # who uploaded the file and how many copies it wants (repair)
            header["origin"], header["n"] = origin, n
        if leases:  # the leases a repairer knows on the key, carried to the new copy
            header["leases"] = [[h, t] for h, t in leases[:MAX_CARRIED]]
        d = self.request(node_id, frames.PUT_BLOCK, header, block, timeout)
        return d.addCallback(lambda _r: self.version_of(node_id) != 1)

    def version_of(self, node_id: bytes) -> int | None:
        """The protocol version of the open connection to ``node_id`` (None without one)."""
        c = self.connections.get(node_id)
        return None if c is None else c.version

    def get_block(
        self, node_id: bytes, cid: CID, timeout: float = REQUEST_TIMEOUT, verify: bool = True,
    ) -> Deferred[bytes | memoryview]:
        """A block from ``node_id``, checked against its id (a peer cannot feed us other bytes). A read-only
        view of the received frame, not a copy: copying each 1 MiB block cost more than the check.

        ``verify=False`` leaves the check to the caller (``Retriever`` hashes on a worker thread instead of
        this one); the bytes are then whatever the peer sent."""
        d = self.request(node_id, frames.GET_BLOCK, {"cid": cid.to_bytes()}, b"", timeout)
        if not verify:
            return d.addCallback(lambda r: r.payload)

        def check(r: Response) -> bytes | memoryview:
            data = r.payload
            if not cid.verify(data):
                self.report(node_id, cid)
                raise CorruptBlock(f"node {short_node_id(node_id)} sent bytes that do not match block {cid}")
            return data

        return d.addCallback(check)

    def _per_minute(self, buckets: dict[PeerProtocol, TokenBucket], conn: PeerProtocol, rate: int, what: str) -> None:
        """A request of a kind a connection may make ``rate`` times a minute (a burst of ``rate``): else busy."""
        now = self.reactor.seconds()
        bucket = buckets.get(conn)
        if bucket is None:
            bucket = buckets[conn] = TokenBucket(rate, 60.0, now)
        if not bucket.take(now):
            raise RemoteError(BUSY, f"at most {rate} {what}s a minute")

    def _reported(self, peer: bytes, cid: CID, found: str) -> Response:
        if found == "good":
            n = self.track.false_report(peer)
            log.info("node {peer} reported block {cid} as corrupt, but the copy here is good ({n} such report(s))",
                     peer=short_node_id(peer), cid=str(cid), n=n)
        return Response({"found": found}, b"")

    def report(self, node_id: bytes, cid: CID) -> None:
        """Tell ``node_id`` that what it sent for ``cid`` did not match the id (protocol version 3; an older
        node is not told). Fire and forget: the holder checks its copy."""
        if (self.version_of(node_id) or 0) < 3:
            return
        d = self.request(node_id, frames.REPORT, {"cid": cid.to_bytes()}, b"")
        d.addErrback(lambda f: log.debug("reporting {cid} to {n} failed: {e}", cid=str(cid), n=short_node_id(node_id),
                                         e=f.getErrorMessage()))

    def in_flight(self, node_id: bytes) -> int:
        """Our requests waiting for an answer on the connection to ``node_id`` (0 without one)."""
        c = self.connections.get(node_id)
        return c.in_flight if c is not None else 0

    def has(self, node_id: bytes, cids: Sequence[CID]) -> Deferred[list[bool]]:
        if len(cids) > MAX_HAS:
            raise ValueError(f"at most {MAX_HAS} ids per HAS")
        d = self.request(node_id, frames.HAS, {"cids": [c.to_bytes() for c in cids]})
        return d.addCallback(lambda r: unpack_bitmap(r.header.get("bitmap"), len(cids)))

    def has_leased(self, node_id: bytes, cids: Sequence[CID]) -> Deferred[tuple[list[bool], list[bool] | None]]:
        """HAS with the version-2 answer: per block, whether the node has it and whether it holds it under a
        live lease (None from a version-1 node, which cannot say)."""
        if len(cids) > MAX_HAS:
            raise ValueError(f"at most {MAX_HAS} ids per HAS")
        d = self.request(node_id, frames.HAS, {"cids": [c.to_bytes() for c in cids]})

        def answer(r: Response) -> tuple[list[bool], list[bool] | None]:
            held = unpack_bitmap(r.header.get("bitmap"), len(cids))
            leased = r.header.get("leased")
            return held, None if leased is None else [a and b for a, b in zip(held, unpack_bitmap(leased, len(cids)))]

        return d.addCallback(answer)

    # -- membership ----------------------------------------------------------------------------------------
    def members(self) -> list[bytes]:
        return sorted(e.node_id for e in self.table.members(self.wall()))

    def recently_dead(self, within: float) -> set[bytes]:
        """Peers dead for less than ``within`` seconds (repair counts them as still holding what they held)."""
        return {d for d, since in self.dead_for().items() if since < within}

    def dead_for(self) -> dict[bytes, float]:
        """Peers found dead, and for how many seconds (the repairer waits ``--repair-after`` before it replaces
        their copies)."""
        now = self.wall()
        return {e.node_id: max(0.0, now - e.dead_since) for e in self.table
                if e.state == DEAD and e.dead_since is not None}

    def on_connect(self, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Call ``callback(node_id)`` whenever a connection to a peer is accepted (a peer that was away is
        back, even before it counts as a member again); returns a function that unsubscribes."""
        self._on_connect.append(callback)
        return lambda: self._on_connect.remove(callback) if callback in self._on_connect else None

    def subscribe(self, callback: Callable[[MembershipChange], None]) -> Callable[[], None]:
        """Call ``callback`` on every membership change; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _publish(self) -> None:
        now = self.wall()
        current = {e.node_id for e in self.table.members(now)}
        joined, left = current - self._members, self._members - current
        self._members = current
        if joined or left:
            self._save_soon()
        for node_id in sorted(joined):
            self._notify(MembershipChange(node_id, True))
        for node_id in sorted(left):
            self._notify(MembershipChange(node_id, False))

    def _notify(self, change: MembershipChange) -> None:
        for cb in list(self._subscribers):
            try:
                cb(change)
            except Exception:
                log.failure("a membership subscriber failed")

    def describe(self) -> list[dict[str, Any]]:
        """The table as shown by ``GET /v1/peers`` and ``cas peers``."""
        now = self.wall()
        out = []
        for e in sorted(self.table, key=lambda e: e.node_id):
            c = self.connections.get(e.node_id)
            rtt, seen = e.rtt, e.last_seen
            if c is not None and c.accepted:
                rtt = c.rtt if c.rtt is not None else rtt
                seen = now - max(0.0, self.reactor.seconds() - c.last_heard)  # the last frame received
            out.append({
                "node_id": format_node_id(e.node_id),
                "state": e.state,
                "member": e.member(now),
                "addresses": [str(a) for a in e.addresses],
                "last_seen": seen,
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
                "software": e.software,
                "connected": c is not None and c.accepted,
                "record_seq": e.record.seq if e.record else None,
                "record_expires": e.record.expires if e.record else None,
                "audits": self.track.describe(e.node_id),  # None: nothing noted (cas/peer/track.py)
            })
        return out


class _OneConnection(Factory):
    """Client factory for one dial: hands out the given protocol, quietly (no log line per dial)."""

    noisy = False

    def __init__(self, proto: PeerProtocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        return self.proto


def _cid(value: Any) -> CID:
    if not isinstance(value, bytes):
        raise RemoteError(BAD_REQUEST, "cid must be a byte string")
    try:
        return CID.from_bytes(value)
    except MalformedKey as e:
        raise RemoteError(BAD_REQUEST, str(e)) from None


def _check_key(key: Any) -> None:
    if not (isinstance(key, bytes) and 0 < len(key) <= MAX_KEY_SIZE):
        raise RemoteError(BAD_REQUEST, f"a key must be a byte string of 1 to {MAX_KEY_SIZE} bytes")
    if key.startswith(LEGACY):
        raise RemoteError(BAD_REQUEST, "keys starting with cas/legacy/ are this node's own")


def _block_error(f: Failure, put: bool) -> Any:
    if f.check(CancelledError):
        return f  # the connection went away: nobody to answer, nothing to log
    if f.check(BlockNotFound):
        raise RemoteError(NOT_FOUND, "no such block here")
    if f.check(WrongPlacementKey, NotInRank):
        raise RemoteError(BAD_REQUEST, f.getErrorMessage())
    if f.check(CorruptBlock):
        if put:  # the sender's bytes do not match the id (or the block is too large)
            raise RemoteError(BAD_REQUEST, f.getErrorMessage())
        raise RemoteError(NOT_FOUND, "the copy here was corrupt (quarantined)")
    if f.check(StorageFull):
        raise RemoteError(OVER_QUOTA, f.getErrorMessage())
    if f.check(RemoteError):
        return f
    log.failure("serving a block failed", f)
    raise RemoteError(INTERNAL, "the node failed to read or write the block")


def bitmap(flags: Sequence[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, held in enumerate(flags):
        if held:
            out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def _placement_info(h: dict[str, Any]) -> tuple[bytes | None, int | None, list[tuple[bytes, int]]]:
    """PUT_BLOCK's optional ``origin`` (the uploader's node id) and ``n`` (the copies its file wants), and
    ``leases``: [[lease holder's node id, seconds left]] a repairer carries to the new copy."""
    origin, n, leases = h.get("origin"), h.get("n"), h.get("leases")
    if origin is not None or n is not None:
        if not (isinstance(origin, bytes) and len(origin) == 32 and isinstance(n, int) and 1 <= n <= MAX_N):
            raise RemoteError(BAD_REQUEST, f"origin must be a 32-byte node id and n an integer of 1 to {MAX_N}")
    carried: list[tuple[bytes, int]] = []
    if leases is not None:
        if not isinstance(leases, list) or len(leases) > MAX_CARRIED:
            raise RemoteError(BAD_REQUEST, f"leases must be a list of at most {MAX_CARRIED} [node id, seconds]")
        for item in leases:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes) and len(item[0]) == 32
                    and isinstance(item[1], int) and 0 < item[1] <= MAX_LEASE_SECONDS):
                raise RemoteError(BAD_REQUEST, "each carried lease is [32-byte node id, seconds]")
            carried.append((item[0], item[1]))
    return origin, n, carried


def _announced(value: Any, n: int) -> list[list[CID]] | None:
    """LEASE's optional ``cids``: per key, the ids of the blocks the sender placed under it (an origin announcing
    a file stored before leases), at most ``MAX_ANNOUNCED`` in all."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, list) for v in value):
        raise RemoteError(BAD_REQUEST, "cids must be a list of lists of block ids, one per key")
    if sum(len(v) for v in value) > MAX_ANNOUNCED:
        raise RemoteError(TOO_LARGE, f"at most {MAX_ANNOUNCED} block ids per LEASE")
    return [[_cid(c) for c in v] for v in value]


def unpack_bitmap(value: Any, n: int) -> list[bool]:
    if not isinstance(value, bytes) or len(value) != (n + 7) // 8:
        raise PeerError("HAS answer: the bitmap does not match the request")
    return [bool(value[i // 8] & (0x80 >> (i % 8))) for i in range(n)]


def bootstrap_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """The operator typed this address, so a host name is allowed here (never for addresses from peers)."""
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)

