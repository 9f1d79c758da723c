"""Peer TLS over real 127.0.0.1 sockets: key-hash identities, pinning, and everything the server must refuse."""

from __future__ import annotations

import collections
import datetime
import hashlib
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, DeferredQueue
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
    wrapServerTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from cas.base.identity import Identity, make_certificate
from cas.peer import peertls
from cas.peer.peertls import PeerVerificationError, client_creator, peer_node_id, server_creator


def new_identity(now: datetime.datetime | None = None) -> Identity:
    key = Ed25519PrivateKey.generate()
    return Identity(key, make_certificate(key, now))


def self_signed(key: Any, name: str = "x", issuer_key: Any = None, issuer: str | None = None) -> x509.Certificate:
    """A certificate for `key`, self-signed unless an issuer key and name are given."""
    now = datetime.datetime.now(datetime.timezone.utc)
    signer = issuer_key or key
    algorithm = None if isinstance(signer, Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(signer, algorithm)
    )


@implementer(IHandshakeListener)
class Peer(Protocol):
    """One end of a test connection: the client sends b"hi", the server echoes; records what it saw."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.received = b""
        self.handshake_id: bytes | None = None
        self.handshaken = False
        self.got_data: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()  # fires with None: the reason is in self.reason
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        if not self.echo:
            self.transport.write(b"hi")  # type: ignore[union-attr]  # buffered until the handshake is done

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        self.handshake_id = peer_node_id(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]
        if not self.got_data.called:
            self.got_data.callback(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


class Servers(Factory):
    def __init__(self) -> None:
        self.accepted: DeferredQueue[Peer] = DeferredQueue()

    def buildProtocol(self, addr: Any) -> Peer:
        p = Peer(echo=True)
        self.accepted.put(p)
        return p


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A client that does not follow our rules: no certificate, another key type, a chain, or old TLS."""

    def __init__(self, cert: x509.Certificate | None = None, key: Any = None, chain: Sequence[x509.Certificate] = (), max_version: int = 0) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        if max_version:
            ctx.set_max_proto_version(max_version)
        if cert is not None:
            ctx.use_certificate(cert)
            ctx.use_privatekey(key)
        for c in chain:
            ctx.add_extra_chain_cert(c)
        ctx.set_verify(SSL.VERIFY_NONE)
        self.ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_connect_state()
        return conn


@implementer(IOpenSSLServerConnectionCreator)
class ContextServer:
    """A server on a given context (here: one that also sends a CA certificate)."""

    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.ctx, None)


@implementer(IOpenSSLClientConnectionCreator)
class Resuming:
    """Wraps a creator and offers the session saved from an earlier connection, trying to resume it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session: SSL.Session | None = None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = self.inner.clientConnectionForTLS(tlsProtocol)
        if self.session is not None:
            conn.set_session(self.session)
        return conn


class PeerTLSTests(TestCase):
    timeout = 10

    async def listen(self, identity: Identity) -> tuple[Servers, int]:
        servers = Servers()
        endpoint = wrapServerTLS(server_creator(identity), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        port = await endpoint.listen(servers)
        self.addCleanup(port.stopListening)
        return servers, port.getHost().port

    async def dial(self, creator: Any, port: int) -> Peer:
        client = Peer(echo=False)
        self.addCleanup(self.close, client)
        await connectProtocol(wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port)), client)
        return client

    async def accept(self, servers: Servers) -> Peer:
        server = await servers.accepted.get()
        self.addCleanup(self.close, server)
        return server

    async def close(self, p: Peer) -> None:
        """Cleanup for a test that failed half-way: no connection left behind."""
        if not p.lost.called and p.transport is not None:
            p.transport.abortConnection()  # type: ignore[attr-defined]
            await p.lost

    async def echoed(self, client: Peer) -> None:
        """Wait for the echo of b"hi", failing at once (not at the timeout) if the connection is lost instead."""
        await DeferredList([client.got_data, client.lost], fireOnOneCallback=True)
        self.assertEqual(client.received, b"hi", f"no echo; connection lost: {client.reason}")

    async def exchange(self, server_identity: Identity, creator: Any) -> tuple[Peer, Peer]:
        """Connect, send b"hi", get it echoed, then close both ends cleanly."""
        servers, port = await self.listen(server_identity)
        client = await self.dial(creator, port)
        server = await self.accept(servers)
        await self.echoed(client)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost
        await server.lost
        return client, server

    async def refused(self, server_identity: Identity, creator: Any) -> tuple[Peer, Peer]:
        """Connect and expect the handshake to fail: both ends lose the connection, no data crosses."""
        servers, port = await self.listen(server_identity)
        return await self.refused_on(servers, port, creator)

    async def refused_on(self, servers: Servers, port: int, creator: Any) -> tuple[Peer, Peer]:
        client = await self.dial(creator, port)
        server = await self.accept(servers)
        # Fail at once, rather than time out, if the connection is wrongly accepted and the echo comes back.
        await DeferredList([client.lost, client.got_data], fireOnOneCallback=True)
        self.assertEqual(client.received, b"", "the connection was accepted")
        await client.lost
        await server.lost
        self.assertEqual(server.received, b"")
        self.assertEqual(client.received, b"")
        self.assertFalse(server.handshaken)
        return client, server

    async def test_pinned_connect(self) -> None:
        """Each side sees the other's node id, at handshake time and after data."""
        a, b = new_identity(), new_identity()
        mismatches: list[tuple[bytes, bytes]] = []
        servers, port = await self.listen(b)
        client = await self.dial(client_creator(a, b.node_id, lambda e, s: mismatches.append((e, s))), port)
        server = await self.accept(servers)
        await self.echoed(client)
        self.assertEqual(server.received, b"hi")
        self.assertEqual(client.handshake_id, b.node_id)
        self.assertEqual(server.handshake_id, a.node_id)
        self.assertEqual(peer_node_id(client.transport), b.node_id)
        self.assertEqual(peer_node_id(server.transport), a.node_id)
        self.assertEqual(mismatches, [])
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost
        await server.lost

    async def test_impostor_refused(self) -> None:
        """Dialling id X and meeting key Y fails the handshake, reports (X, Y), and the reason carries both."""
        a, x, y = new_identity(), new_identity(), new_identity()
        mismatches: list[tuple[bytes, bytes]] = []
        client, _ = await self.refused(y, client_creator(a, x.node_id, lambda e, s: mismatches.append((e, s))))
        self.assertEqual(mismatches, [(x.node_id, y.node_id)])
        self.assertFalse(client.handshaken)
        assert client.reason is not None
        err = client.reason.value
        self.assertIsInstance(err, PeerVerificationError)
        self.assertEqual((err.expected, err.seen), (x.node_id, y.node_id))

    async def test_client_without_certificate_refused(self) -> None:
        await self.refused(new_identity(), RawClient())

    async def test_client_with_p256_certificate_refused(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        _, server = await self.refused(new_identity(), RawClient(self_signed(key), key))
        assert server.reason is not None
        self.assertIsInstance(server.reason.value, PeerVerificationError)

    async def test_client_chain_refused(self) -> None:
        """An Ed25519 leaf signed by a CA, with the CA certificate sent along, is refused: no chains."""
        ca_key, leaf_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        ca = self_signed(ca_key, "ca")
        leaf = self_signed(leaf_key, "leaf", issuer_key=ca_key, issuer="ca")
        _, server = await self.refused(new_identity(), RawClient(leaf, leaf_key, chain=[ca]))
        assert server.reason is not None
        self.assertIsInstance(server.reason.value, PeerVerificationError)
        self.assertIn("chain", str(server.reason.value))

    async def test_server_chain_refused_by_client(self) -> None:
        """The same rule on the client side, for a server presenting a chain (TOFU: any id would do)."""
        ca_key, leaf_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        ca = self_signed(ca_key, "ca")
        leaf = self_signed(leaf_key, "leaf", issuer_key=ca_key, issuer="ca")
        chained = peertls._context(Identity(leaf_key, leaf), None, None)
        chained.add_extra_chain_cert(ca)
        servers = Servers()
        endpoint = wrapServerTLS(ContextServer(chained), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        port = await endpoint.listen(servers)
        self.addCleanup(port.stopListening)
        client, _ = await self.refused_on(servers, port.getHost().port, client_creator(new_identity(), None))
        assert client.reason is not None
        self.assertIsInstance(client.reason.value, PeerVerificationError)

    async def test_trust_on_first_use(self) -> None:
        a, b = new_identity(), new_identity()
        client, server = await self.exchange(b, client_creator(a, None))
        self.assertEqual(client.handshake_id, b.node_id)
        self.assertEqual(server.handshake_id, a.node_id)

    async def test_tls12_client_refused(self) -> None:
        a = new_identity()
        client, _ = await self.refused(new_identity(), RawClient(a.certificate, a.key, max_version=SSL.TLS1_2_VERSION))
        self.assertFalse(client.handshaken)

    async def test_expired_certificates_accepted(self) -> None:
        """Dates are not checked: the key is what counts, on both sides."""
        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=365 * 20)
        a, b = new_identity(long_ago), new_identity(long_ago)
        self.assertLess(b.certificate.not_valid_after_utc, datetime.datetime.now(datetime.timezone.utc))
        client, server = await self.exchange(b, client_creator(a, b.node_id))
        self.assertEqual(client.handshake_id, b.node_id)
        self.assertEqual(server.handshake_id, a.node_id)

    async def test_every_connection_verifies_both_certificates(self) -> None:
        """A second connection offering the first one's session still checks both certificates (no resumption)."""
        seen: list[bytes | None] = []
        check = peertls._check_leaf

        def counting(conn: SSL.Connection, cert: X509, depth: int, *rest: Any) -> bool:
            if depth == 0:
                seen.append(peertls._key_id(cert))
            return check(conn, cert, depth, *rest)

        self.patch(peertls, "_check_leaf", counting)
        a, b = new_identity(), new_identity()
        servers, port = await self.listen(b)
        creator = Resuming(client_creator(a, b.node_id))
        for attempt in range(2):
            del seen[:]
            client = await self.dial(creator, port)
            server = await self.accept(servers)
            await self.echoed(client)
            self.assertIn(b.node_id, seen)  # the client checked the server's key
            self.assertIn(a.node_id, seen)  # the server checked the client's key
            self.assertEqual(peer_node_id(server.transport), a.node_id)
            if attempt == 0:
                creator.session = client.transport.getHandle().get_session()  # type: ignore[union-attr]
            client.transport.loseConnection()  # type: ignore[union-attr]
            await client.lost
            await server.lost

    def test_peer_node_id_without_tls(self) -> None:
        self.assertIsNone(peer_node_id(object()))

    def test_expected_id_length(self) -> None:
        self.assertRaises(ValueError, client_creator, new_identity(), b"short")


# -- PeerTLSProtocol: bulk writes and decrypting into the receiver's buffer ----------------------------------------

STREAM = hashlib.sha256(b"stream").digest() * (3 * (1 << 20) // 32 + 7)  # 3 MiB and a bit, not record-aligned


class Sink(Protocol):
    """Collects what arrives through ``dataReceived`` (a protocol without ``IReceiveBuffer``)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


@implementer(peertls.IReceiveBuffer)
class BufferSink(Sink):
    """Collects through ``get_buffer``/``buffer_updated``, with buffers of awkward sizes (1 byte to 70,000)."""

    SIZES = (1, 7, 4096, 16383, 16385, 70000)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self._buf = memoryview(bytearray(0))

    def dataReceived(self, data: bytes) -> None:
        raise AssertionError("dataReceived called on a protocol that gives its buffer")

    def get_buffer(self) -> memoryview:
        self._buf = memoryview(bytearray(self.SIZES[self.calls % len(self.SIZES)]))
        return self._buf

    def buffer_updated(self, n: int) -> None:
        assert 0 < n <= len(self._buf), n
        self.calls += 1
        self.data += self._buf[:n]


class BigBufferSink(BufferSink):
    """Offers 1 MiB buffers, as a frame body is; records how much each ``buffer_updated`` brought."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def get_buffer(self) -> memoryview:
        self._buf = memoryview(bytearray(1 << 20))
        return self._buf

    def buffer_updated(self, n: int) -> None:
        self.sizes.append(n)
        super().buffer_updated(n)


class AnsweringSink(BigBufferSink):
    """Writes a byte back for every ``buffer_updated``, as a peer answers a request from inside it: OpenSSL
    is called (SSL_write) between the receive loop's last SSL_read and its look at that read's outcome."""

    def buffer_updated(self, n: int) -> None:
        super().buffer_updated(n)
        self.transport.write(b"!")  # type: ignore[union-attr]


@implementer(IHandshakeListener)
class Sender(Protocol):
    """Writes ``STREAM`` as bytes and memoryview pieces of several sizes, then closes cleanly."""

    def handshakeCompleted(self) -> None:
        view, pos, sizes = memoryview(STREAM), 0, (1, 100, 1 << 20, 16384, 70001)
        for i in itertools.count():
            if pos >= len(view):
                break
            piece = view[pos:pos + sizes[i % len(sizes)]]
            self.transport.write(piece if i % 2 else bytes(piece))  # type: ignore[union-attr]
            pos += len(piece)
        self.transport.loseConnection()  # type: ignore[union-attr]


class CountingLib:
    """Stands in for pyOpenSSL's binding in ``cas.peer.peertls``: counts the direct calls, passes them on."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.counts: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._lib, name)
        if not callable(real):
            return real  # a constant (SSL_ERROR_WANT_READ)

        def call(*args: Any) -> Any:
            self.counts[name] += 1
            return real(*args)

        return call


class PeerTLSStreamTests(TestCase):
    """Megabytes through ``PeerTLSProtocol`` on 127.0.0.1 arrive intact and in order, both ways of receiving,
    with OpenSSL called directly (the default) and through pyOpenSSL's public methods."""

    timeout = 30
    direct = True

    def setUp(self) -> None:
        self.patch(peertls.PeerTLSProtocol, "direct", self.direct)
        self.lib = CountingLib(peertls._ssl_lib)
        self.patch(peertls, "_ssl_lib", self.lib)
        self.raised: list[str] = []  # error checks that cas.peer.peertls called itself (each raises)
        for name in ("_raise_ssl_error", "_handle_bio_errors"):
            real = getattr(SSL.Connection, name)

            def counted(conn: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
                caller = sys._getframe(1)
                if caller.f_code.co_filename == peertls.__file__:
                    self.raised.append(f"{_name} from {caller.f_code.co_name}")
                return _real(conn, *args)

            self.patch(SSL.Connection, name, counted)

    async def send_to(self, sink: Sink) -> None:
        """``Sender``'s stream over peer TLS on 127.0.0.1 to ``sink``, until ``sink`` has lost its connection."""
        a, b = new_identity(), new_identity()
        factory = Factory.forProtocol(lambda: sink)
        endpoint = peertls.wrap_server(server_creator(b), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        client = peertls.wrap_client(client_creator(a, b.node_id), TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        await connectProtocol(client, Sender())
        await sink.lost

    async def stream_to(self, sink: Sink) -> None:
        """``send_to``, and the whole stream arrived intact with a clean close."""
        await self.send_to(sink)
        self.assertIsNotNone(sink.reason)
        self.assertTrue(sink.reason.check(ConnectionDone), sink.reason)  # a clean TLS close, not an error
        self.assertEqual(len(sink.data), len(STREAM))
        self.assertTrue(sink.data == STREAM, "the stream arrived changed")

    async def test_into_buffer(self) -> None:
        sink = BufferSink()
        await self.stream_to(sink)
        self.assertGreater(sink.calls, len(STREAM) // 16384)
        used = self.lib.counts
        if self.direct:
            self.assertGreater(used["SSL_read"], len(STREAM) // 16384)
            self.assertGreater(used["SSL_write"], 0)
            self.assertGreater(used["BIO_read"], 0)
            # Ciphertext into the BIO directly; the ends of read loops and empty BIOs told without exceptions.
            self.assertGreater(used["BIO_write"], 0)
            self.assertGreater(used["SSL_get_error"], 0)
            self.assertGreater(used["BIO_should_retry"], 0)
            self.assertLessEqual(len(self.raised), 1, f"only the clean close raises: {self.raised}")
        else:
            self.assertEqual(used, {})

    async def test_records_fill_one_buffer(self) -> None:
        """Directly, the records OpenSSL has are decrypted one after the other into the buffer offered and
        announced with one ``buffer_updated`` (not one per 16 KiB record); through the public API, one each."""
        sink = BigBufferSink()
        await self.stream_to(sink)
        if self.direct:
            self.assertGreater(max(sink.sizes), 1 << 14)
            self.assertLess(len(sink.sizes), len(STREAM) // (1 << 14) // 2)
        else:
            self.assertLessEqual(max(sink.sizes), 1 << 14)

    async def test_protocol_writing_as_it_reads(self) -> None:
        """A protocol that writes from ``buffer_updated`` gets the whole stream and a clean close (the outcome
        of the last SSL_read is read before the protocol runs)."""
        sink = AnsweringSink()
        await self.stream_to(sink)
        self.assertEqual(sum(sink.sizes), len(STREAM))

    async def test_empty_buffer_refused(self) -> None:
        """A protocol whose ``get_buffer`` offers nothing fails its connection instead of spinning the loop."""

        class Empty(BigBufferSink):
            def get_buffer(self) -> memoryview:
                return memoryview(bytearray(0))

        sink = Empty()
        await self.send_to(sink)
        self.assertEqual(bytes(sink.data), b"")
        self.assertTrue(sink.reason.check(SSL.Error), sink.reason)
        self.assertIn("offered no room", str(sink.reason.value))

    async def test_protocol_releasing_its_buffer(self) -> None:
        """The TLS layer holds no export of the buffer while the protocol runs: it may release its view."""

        class Releasing(BigBufferSink):
            def buffer_updated(self, n: int) -> None:
                super().buffer_updated(n)
                self._buf.release()  # BufferError if anything still exported it

        sink = Releasing()
        await self.stream_to(sink)

    async def test_reads_a_quarter_mebibyte_at_a_time(self) -> None:
        """The TCP transports under peer TLS read up to RECV_SIZE per call (Twisted's default is 64 KiB)."""
        sink = BufferSink()
        seen: list[int] = []
        real = peertls.PeerTLSProtocol.dataReceived

        def counted(tls: peertls.PeerTLSProtocol, data: bytes) -> None:
            seen.append(tls.transport.bufferSize)
            real(tls, data)

        self.patch(peertls.PeerTLSProtocol, "dataReceived", counted)
        await self.stream_to(sink)
        self.assertEqual(set(seen), {peertls.RECV_SIZE})
        self.assertGreater(peertls.RECV_SIZE, 1 << 16)

    async def test_data_received(self) -> None:
        """A protocol without ``IReceiveBuffer`` gets Twisted's own receive loop, and the same bytes."""
        sink = Sink()
        await self.stream_to(sink)
        self.assertEqual(self.lib.counts["SSL_read"], 0)

    async def test_tampered_record_closes_only_that_connection(self) -> None:
        """Bytes injected under TLS (a forged record) fail that connection with a TLS error on the receiving side,
        nothing is delivered from them, and the listener goes on accepting: the next stream arrives intact."""
        await self.tampered_record(BufferSink)

    async def test_tampered_record_with_a_protocol_that_answers(self) -> None:
        """The same when the receiving protocol writes from ``buffer_updated`` (as a peer answers a request): the
        bytes before the forged record still arrive, and the reason stays OpenSSL's (not a failed write's)."""
        await self.tampered_record(AnsweringSink)

    async def tampered_record(self, make_sink: Callable[[], BufferSink]) -> None:
        a, b = new_identity(), new_identity()
        sinks: DeferredQueue[BufferSink] = DeferredQueue()

        def build() -> BufferSink:
            sink = make_sink()
            sinks.put(sink)
            return sink

        endpoint = peertls.wrap_server(server_creator(b), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        port = await endpoint.listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        dial = peertls.wrap_client(client_creator(a, b.node_id), TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))

        @implementer(IHandshakeListener)
        class Forger(Protocol):
            def handshakeCompleted(self) -> None:
                self.transport.write(b"genuine")  # type: ignore[union-attr]
                # Under the TLS layer: an application-data record whose tag cannot verify.
                self.transport.transport.write(bytes.fromhex("1703030020") + b"\x5a" * 32)  # type: ignore[union-attr]

        await connectProtocol(dial, Forger())
        victim = await sinks.get()
        await victim.lost
        self.assertIsNotNone(victim.reason)
        self.assertTrue(victim.reason.check(SSL.Error), victim.reason)
        self.assertEqual(bytes(victim.data), b"genuine")
        await connectProtocol(dial, Sender())
        next_one = await sinks.get()
        await next_one.lost
        self.assertTrue(next_one.reason.check(ConnectionDone), next_one.reason)
        self.assertTrue(next_one.data == STREAM)

    def memory_pair(self) -> tuple[Any, Any, list[bytes]]:
        """A server ``PeerTLSProtocol`` over a transport recording its writes, and a client pyOpenSSL connection,
        handshaken by hand over memory."""
        a, b = new_identity(), new_identity()
        writes: list[bytes] = []

        class Recording(StringTransport):
            def write(self, data: bytes) -> None:
                assert isinstance(data, bytes)
                writes.append(data)

        proto = peertls.PeerTLSFactory(server_creator(a), False, Factory.forProtocol(Protocol)).buildProtocol(None)
        proto.makeConnection(Recording())
        client = client_creator(b, a.node_id).clientConnectionForTLS(None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            while True:
                try:
                    proto.dataReceived(client.bio_read(1 << 20))
                except SSL.WantReadError:
                    break
            for w in writes:
                client.bio_write(w)
            writes.clear()
        self.assertTrue(proto._handshakeDone)
        return proto, client, writes

    @staticmethod
    def received(client: Any, writes: list[bytes]) -> bytes:
        for w in writes:
            client.bio_write(w)
        got = bytearray()
        while True:
            try:
                got += client.recv(1 << 20)
            except SSL.WantReadError:
                return bytes(got)

    def test_write_sequence_is_one_transport_write(self) -> None:
        """A frame's head and payload (a memoryview) written together reach the TCP transport as one ``bytes``
        (directly; Twisted would then send it without joining), and decrypt to the same bytes."""
        proto, client, writes = self.memory_pair()
        payload = STREAM[: 1 << 20]
        proto.wrappedProtocol.transport.writeSequence([b"head", memoryview(payload)])
        if self.direct:
            self.assertEqual(len(writes), 1, "one write for head and payload")
        self.assertTrue(self.received(client, writes) == b"head" + payload)
        writes.clear()
        proto.wrappedProtocol.transport.write(memoryview(payload))  # a large write alone: one piece too
        if self.direct:
            self.assertEqual(len(writes), 1)
        self.assertTrue(self.received(client, writes) == payload)

    def test_gathering_past_the_estimate(self) -> None:
        """Should the records outgrow the gather buffer, what it holds is handed on first: more writes, same bytes."""
        if self.direct:
            real = peertls._Gather.__init__

            def small(g: Any, plaintext: int) -> None:
                real(g, plaintext)
                g.size = 70_000  # about four records

            self.patch(peertls._Gather, "__init__", small)
        proto, client, writes = self.memory_pair()
        payload = STREAM[: 1 << 20]
        proto.wrappedProtocol.transport.writeSequence([b"head", memoryview(payload), b"tail"])
        if self.direct:
            self.assertGreater(len(writes), 10)
        self.assertTrue(self.received(client, writes) == b"head" + payload + b"tail")

    def test_write_sequence_checks_every_piece_first(self) -> None:
        proto, client, writes = self.memory_pair()
        self.assertRaises(TypeError, proto.wrappedProtocol.transport.writeSequence, [b"head", 12345])
        self.assertEqual(self.received(client, writes), b"", "nothing of it was written")

    def test_direct_calls_available(self) -> None:
        """The pyOpenSSL in use has the private names the fast path needs (else it silently runs slower)."""
        self.assertTrue(peertls._DIRECT)


class PeerTLSStreamPublicTests(PeerTLSStreamTests):
    direct = False
