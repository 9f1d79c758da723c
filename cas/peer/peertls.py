"""TLS between peers: TLS 1.3 only, both sides present a self-signed Ed25519 certificate, identity = key hash.

There is no CA and no host name: a peer is who its key says it is (`node_id_of`), and TLS 1.3's
CertificateVerify proves it holds that key. Certificate chains are refused; the dates and the self-signature
of the leaf are not checked, so a node can renew (or let expire) its certificate and keep its id.
See docs/protocol.md, "Transport and identity".

Under TLS 1.3 a client finishes its handshake before the server has checked the client's certificate, so the
caller must count a peer as accepted only once its first application message has arrived.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from OpenSSL import SSL
from OpenSSL.crypto import X509
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from cas.base.identity import Identity, format_node_id, node_id_of

log = Logger()

OnMismatch = Callable[[bytes, bytes], None]


class PeerVerificationError(Exception):
    """The peer's certificate was refused during the handshake; `expected`/`seen` are set for a pin mismatch.

    It is the reason given to the protocol's connectionLost on the side that refused."""

    def __init__(self, message: str, expected: bytes | None = None, seen: bytes | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.seen = seen


def _key_id(cert: X509) -> bytes | None:
    """The node id of a certificate's key, or None unless it is an Ed25519 key.

    Only the key is parsed (not the whole certificate with cryptography's stricter parser): the key is what counts.
    """
    key = cert.get_pubkey().to_cryptography_key()
    if not isinstance(key, Ed25519PublicKey):
        return None
    return node_id_of(key)


def _fail(conn: SSL.Connection, error: PeerVerificationError) -> None:
    """Abort the TLS protocol driving `conn` with `error` as the reason its application protocol will see."""
    tls = conn.get_app_data()  # Twisted's TLSMemoryBIOProtocol, set by its connection factory
    fail = getattr(tls, "failVerification", None)
    if fail is not None:
        fail(Failure(error))


def _check_leaf(conn: SSL.Connection, cert: X509, depth: int, expected: bytes | None, on_mismatch: OnMismatch | None) -> bool:
    """The verification policy for one call of OpenSSL's verify callback (module-level so tests can observe it)."""
    if depth > 0:
        # Only one certificate: anything above the leaf means the peer sent a chain.
        _fail(conn, PeerVerificationError("certificate chains are refused"))
        return False
    seen = _key_id(cert)
    if seen is None:
        _fail(conn, PeerVerificationError("peer certificate key is not Ed25519"))
        return False
    if expected is not None and not hmac.compare_digest(seen, expected):
        if on_mismatch is not None:
            try:
                on_mismatch(expected, seen)
            except Exception:
                log.failure("in the node id mismatch callback")
        _fail(
            conn,
            PeerVerificationError(f"peer is {format_node_id(seen)}, expected {format_node_id(expected)}", expected, seen),
        )
        return False
    # At depth 0 OpenSSL reports "self-signed", "expired", "unable to get issuer"...: all fine, the key counts.
    return True


def _verifier(expected: bytes | None, on_mismatch: OnMismatch | None) -> Callable[[SSL.Connection, X509, int, int, int], bool]:
    """An OpenSSL verify callback applying `_check_leaf`; it never raises (pyOpenSSL would re-raise a
    non-SSL exception out of the handshake, past Twisted's error handling)."""

    def verify(conn: SSL.Connection, cert: X509, errno: int, depth: int, ok: int) -> bool:
        try:
            return _check_leaf(conn, cert, depth, expected, on_mismatch)
        except BaseException:
            log.failure("while verifying a peer certificate")
            return False

    return verify


def _context(identity: Identity, expected: bytes | None, on_mismatch: OnMismatch | None) -> SSL.Context:
    """A TLS 1.3-only context presenting `identity` and requiring the peer's certificate."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    # No resumption: a resumed TLS 1.3 session (PSK) skips the certificates, so the peer's key would not be
    # checked again on that connection. No tickets and no session cache, so every handshake is a full one and
    # authenticates both certificates. (Our clients never offer a saved session either.)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verifier(expected, on_mismatch))
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """Accepts any peer with one self-signed Ed25519 leaf; who it is is read after the handshake."""

    def __init__(self, identity: Identity) -> None:
        self._context = _context(identity, None, None)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        # Twisted's TLS factory sets the accept state and app data (the TLS protocol) on what we return.
        return SSL.Connection(self._context, None)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Dials one peer: checks its key against the expected node id, if any, during the handshake."""

    def __init__(self, identity: Identity, expected: bytes | None, on_mismatch: OnMismatch | None) -> None:
        self._context = _context(identity, expected, on_mismatch)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_connect_state()
        return conn


def server_creator(identity: Identity) -> IOpenSSLServerConnectionCreator:
    """For wrapServerTLS: one context (built now) for every accepted connection."""
    return _ServerCreator(identity)


def client_creator(identity: Identity, expected: bytes | None, on_mismatch: OnMismatch | None = None) -> IOpenSSLClientConnectionCreator:
    """For wrapClientTLS: pin the server's key to `expected` (32-byte node id), or trust on first use if None.

    On a mismatch `on_mismatch(expected, seen)` is called and the handshake fails; the client protocol's
    connectionLost gets a PeerVerificationError. No host name is checked: peers are ids, not names.
    """
    if expected is not None and len(expected) != 32:
        raise ValueError("expected node id must be 32 bytes")
    return _ClientCreator(identity, expected, on_mismatch)


def peer_node_id(transport: object) -> bytes | None:
    """The node id of the peer's certificate key on a TLS transport, or None (not TLS, or no certificate).

    Call it once the handshake has completed (IHandshakeListener.handshakeCompleted or later).
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
        return None if cert is None else _key_id(cert)
    except Exception:  # e.g. the TLS connection is already torn down
        return None


# -- the TLS transport of peer links -----------------------------------------------------------------------

try:  # pyOpenSSL's cffi binding (cryptography's): private, so every name is checked and the public API remains
    from OpenSSL.SSL import _ffi as _ssl_ffi
    from OpenSSL.SSL import _lib as _ssl_lib

    _DIRECT = all(hasattr(_ssl_lib, name) for name in (
        "SSL_read", "SSL_write", "SSL_get_error", "SSL_ERROR_WANT_READ", "BIO_read", "BIO_write", "BIO_should_retry",
        "BIO_get_mem_data", "ERR_clear_error",
    )) and all(hasattr(SSL.Connection, name) for name in ("_raise_ssl_error", "_handle_bio_errors"))
    _CHARS = _ssl_ffi.typeof("char[]")  # for from_buffer: resolved once, not parsed from a string per call
    _uninitialized = _ssl_ffi.new_allocator(should_clear_after_alloc=False)  # filled by BIO_read before use
except ImportError:  # pragma: no cover - a pyOpenSSL without them: the public methods are used
    _DIRECT = False

WRITE_CHUNK = 1 << 16  # plaintext handed to OpenSSL per call (it cuts 16 KiB records): fastest measured, 16-256 KiB
GATHER_EVERY = 4 * WRITE_CHUNK  # a large write's records leave the BIO for the gather buffer this often
BIO_CHUNK = WRITE_CHUNK + 4096  # ciphertext read from the memory BIO per call: a chunk and its record overheads
READ_CHUNK = 1 << 14  # plaintext asked of OpenSSL per call: one TLS record (SSL_read returns one record at most)
# Ciphertext read from the socket per call (Twisted's default is 64 KiB). A receiver of blocks is the slower side
# of a stream, so its socket holds more than 64 KiB at nearly every read (bench/peers.py: 64.4 KiB on average);
# each read costs a round of Python calls, and 256 KiB reads cut the receive path's CPU by 9% (docs/network.md).
RECV_SIZE = 1 << 18


class IReceiveBuffer(Interface):
    """A protocol that gives the buffer its next bytes go into (as asyncio's ``BufferedProtocol``).

    ``PeerTLSProtocol`` decrypts into it instead of calling ``dataReceived`` with a new ``bytes`` per record.
    """

    def get_buffer() -> memoryview:
        """A writable, non-empty buffer for the next bytes."""

    def buffer_updated(n: int) -> None:
        """``n`` bytes were written at the start of the buffer ``get_buffer`` returned last."""


class _Gather:
    """The TLS records of one large write (a block frame), collected from the memory BIO every
    ``GATHER_EVERY`` bytes of plaintext and handed to the transport as one ``bytes``: Twisted sends a lone
    buffer as it is, but joins a list of pieces into a new one first (a copy of every byte). The BIO holds at
    most ``GATHER_EVERY``'s records (about 260 KiB; OpenSSL's memory BIO never shrinks, so draining it only at
    the end of a frame would keep a frame's worth per connection for its life; draining after every 64 KiB
    call measured 15% slower in process); the gather buffer is freed with the write. Sized for the plaintext
    plus every record's 22 bytes of TLS 1.3 overhead, with room to spare; should more arrive, what is gathered
    is handed on first."""

    __slots__ = ("buf", "size", "used")

    def __init__(self, plaintext: int) -> None:
        self.size = plaintext + (plaintext // (1 << 14) + 4) * 64
        self.buf = _uninitialized("char[]", self.size)  # BIO_read fills what is handed on
        self.used = 0


class PeerTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, with bulk writes made cheaper for 1 MiB block frames.

    Twisted hands OpenSSL 16 KiB at a time, reads the memory BIO 32 KiB at a time and slices ``bytes`` (a copy
    per slice); its default ``BufferingTLSTransport`` also joins whatever is written into one buffer. Here a
    write may be a ``memoryview`` (sliced without copying), OpenSSL gets up to ``WRITE_CHUNK`` per call (it
    cuts the records itself: a memory BIO never blocks), and the BIO is drained completely after each call.
    There is no small-write aggregation: ``PeerProtocol`` writes each frame's head in one piece and batches
    small frames itself. On the way in, a protocol that provides ``IReceiveBuffer`` gets each record decrypted
    straight into its buffer (pyOpenSSL's ``recv_into``: one copy, no ``bytes`` object, no join later).
    Everything else (handshake, shutdown, producers, errors) is Twisted's.
    """

    direct = _DIRECT  # call OpenSSL through pyOpenSSL's binding (tests turn it off to cover the public path)
    _bio_buffer: Any = None  # where the BIO is read, allocated once per connection
    _direct_ok: bool | None = None  # whether this connection calls OpenSSL directly: decided once
    _gather: _Gather | None = None  # while a large write (or writeSequence) is encrypted: its records

    def _direct(self) -> bool:
        ok = self._direct_ok
        if ok is None:
            conn = self._tlsConnection
            ok = self._direct_ok = bool(self.direct and all(hasattr(conn, a) for a in ("_ssl", "_from_ssl", "_into_ssl")))
        return ok

    def makeConnection(self, transport: Any) -> None:
        """Twisted's, after raising the transport's read size (its ``bufferSize``) to ``RECV_SIZE``. The same
        attribute is the write buffer's pause threshold: up to 256 KiB is buffered before producers pause."""
        if isinstance(getattr(transport, "bufferSize", None), int) and transport.bufferSize < RECV_SIZE:
            transport.bufferSize = RECV_SIZE
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        """Twisted's, with the ciphertext written to the memory BIO directly once the handshake is over."""
        if not self._handshakeDone or self._appSendBuffer or not self._direct():
            return super().dataReceived(data)
        conn = self._tlsConnection
        bio = conn._into_ssl
        n = _ssl_lib.BIO_write(bio, data, len(data))  # a memory BIO takes it all, or fails
        if n <= 0:
            conn._handle_bio_errors(bio, n)  # raises, as pyOpenSSL's bio_write would
        self._flushReceiveBIO()

    def _write(self, data: bytes | memoryview) -> None:  # type: ignore[override]
        if self._lostTLSConnection:
            return
        conn = self._tlsConnection
        view = memoryview(data).cast("B")
        sent_total, size = 0, len(view)
        if self._direct():
            ssl, ssl_write, from_buffer = conn._ssl, _ssl_lib.SSL_write, _ssl_ffi.from_buffer
        else:
            ssl = None
        own = ssl is not None and self._gather is None and size > WRITE_CHUNK and self._handshakeDone
        if own:
            self._gather = _Gather(size)
        try:
            while sent_total < size:
                chunk = view[sent_total:sent_total + WRITE_CHUNK]
                try:
                    if ssl is not None:
                        sent = ssl_write(ssl, from_buffer(chunk), len(chunk))
                        if sent <= 0:
                            conn._raise_ssl_error(ssl, sent)  # raises what pyOpenSSL's send would
                            raise SSL.Error([("", "SSL_write", f"returned {sent}")])  # pragma: no cover
                    else:
                        sent = conn.send(chunk)
                except SSL.WantReadError:  # the handshake is not over: Twisted keeps the rest until it is
                    self._bufferedWrite(view[sent_total:])
                    break
                except SSL.Error:
                    self._tlsShutdownFinished(Failure())
                    break
                sent_total += sent
                if self._gather is None or sent_total % GATHER_EVERY == 0:
                    self._flushSendBIO()  # into the gather buffer when there is one (and in _emit)
        finally:
            if own:
                self._emit()

    def writeSequence(self, iovec: Any) -> None:  # type: ignore[override]
        """Each piece encrypted as it is (a ``memoryview`` too: no join, unlike Twisted's), and the records of
        them all handed to the transport as one ``bytes``: a frame's head and its payload become one write."""
        if self.disconnecting and self._producer is None:
            return
        views = [memoryview(piece).cast("B") for piece in iovec]  # a bad piece fails before anything is written
        if self._gather is not None or not self._handshakeDone or self._lostTLSConnection or not self._direct():
            for v in views:
                self._write(v)
            return
        self._gather = _Gather(sum(len(v) for v in views))
        try:
            for v in views:
                self._write(v)
        finally:
            self._emit()

    def _emit(self) -> None:
        """Hand what the gather buffer holds to the transport as one ``bytes``, and stop gathering."""
        if self._gather is not None and not self._lostTLSConnection:
            self._flushSendBIO()  # the records still in the BIO join the gathered ones
        g, self._gather = self._gather, None
        if g is not None and g.used and not self._lostTLSConnection:
            self.transport.write(_ssl_ffi.buffer(g.buf, g.used)[:])

    def _flushReceiveBIO(self) -> None:
        """Twisted's loop, decrypting into the application protocol's buffer when it offers one."""
        proto = self.wrappedProtocol
        if not IReceiveBuffer.providedBy(proto):
            return super()._flushReceiveBIO()
        conn = self._tlsConnection
        get_buffer, updated = proto.get_buffer, proto.buffer_updated
        if self._direct():  # SSL_read straight into the buffer: no temporary, no copy, no error check on success
            ssl, ssl_read, from_buffer, chars = conn._ssl, _ssl_lib.SSL_read, _ssl_ffi.from_buffer, _CHARS
            get_error, want_read = _ssl_lib.SSL_get_error, _ssl_lib.SSL_ERROR_WANT_READ
            clear_errors = _ssl_lib.ERR_clear_error
        else:
            ssl = None
        while not self._lostTLSConnection and not self._aborted:
            buf = get_buffer()
            room = len(buf)
            if not room:  # nothing could ever be read into it: fail the connection rather than spin
                why = f"{type(proto).__name__}.get_buffer() offered no room"
                # the shape Twisted reads
                self._tlsShutdownFinished(Failure(SSL.Error([("", "cas.peer.peertls", why)])))
                break
            try:
                if ssl is not None:
                    # Record after record into the same buffer until it is full or OpenSSL has no more: one
                    # ``buffer_updated`` per buffer (a 1 MiB frame body takes 64 records), not one per record.
                    base, got, n, error = from_buffer(chars, buf, require_writable=True), 0, 1, None
                    clear_errors()  # OpenSSL reads its error queue after a failed call: nothing stale in it
                    while got < room:
                        n = ssl_read(ssl, base + got, min(room - got, READ_CHUNK))
                        if n <= 0:
                            # Told now: SSL_get_error reads the state the last call left, and the protocol
                            # may write (SSL_write) before we act on it.
                            if get_error(ssl, n) != want_read:  # the usual end of a loop: no exception for it
                                try:
                                    conn._raise_ssl_error(ssl, n)  # raises what pyOpenSSL's recv_into would
                                    raise SSL.Error([("", "SSL_read", f"returned {n}")])  # pragma: no cover
                                except SSL.Error as e:
                                    error = e
                            break
                        got += n
                    base = buf = None  # let go of the buffer before the protocol sees it: it may release or resize it
                    if error is not None and not isinstance(error, ZeroReturnError):
                        # The connection fails with OpenSSL's reason first; then the protocol gets the bytes read
                        # before the error, and what it writes in answer is dropped (it cannot replace the reason).
                        self._tlsShutdownFinished(Failure(error))
                        if got:
                            updated(got)
                        break
                    if got:
                        updated(got)
                    if n > 0:
                        continue
                    if error is None or self._lostTLSConnection or self._aborted:
                        break
                    raise error  # the peer's clean close, after the last bytes before it
                n = conn.recv_into(buf, READ_CHUNK)
            except WantReadError:  # nothing more to decrypt until more bytes arrive
                break
            except ZeroReturnError:  # the peer closed TLS cleanly: as Twisted does
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                updated(n)
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        conn = self._tlsConnection
        if not self._handshakeDone or not self._direct():  # handshake flights: no per-connection buffer yet
            while True:
                try:
                    out = conn.bio_read(BIO_CHUNK)
                except SSL.WantReadError:  # the BIO is empty
                    return
                self.transport.write(out)
        bio = conn._from_ssl
        bio_read, should_retry, pending_of = _ssl_lib.BIO_read, _ssl_lib.BIO_should_retry, _ssl_lib.BIO_get_mem_data
        g = self._gather
        while True:
            if g is not None:  # a large write under way: its records go on gathering (see _Gather)
                pending = pending_of(bio, _ssl_ffi.NULL)
                if pending <= 0:
                    return
                if g.used + pending > g.size and g.used:
                    self.transport.write(_ssl_ffi.buffer(g.buf, g.used)[:])  # more than estimated: hand it on
                    g.used = 0
                buf, want = g.buf + g.used, min(pending, g.size - g.used)
            else:  # a small write's records, or a reply sent while reading: through the buffer kept for them,
                # until BIO_read finds the BIO empty
                buf = self._bio_buffer
                if buf is None:
                    buf = self._bio_buffer = _ssl_ffi.new("char[]", BIO_CHUNK)
                want = BIO_CHUNK
            n = bio_read(bio, buf, want)
            if n <= 0:
                if should_retry(bio):  # just empty (the usual case): no exception for it
                    return
                try:
                    conn._handle_bio_errors(bio, n)
                except SSL.WantReadError:  # pragma: no cover - what should_retry said
                    return
                return  # pragma: no cover - _handle_bio_errors always raises
            if g is not None:
                g.used += n
            else:
                self.transport.write(_ssl_ffi.buffer(buf, n)[:])


class PeerTLSFactory(TLSMemoryBIOFactory):
    protocol = PeerTLSProtocol  # type: ignore[assignment]


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    def __init__(self, creator: IOpenSSLServerConnectionCreator, wrapped: IStreamServerEndpoint) -> None:
        self._creator, self._wrapped = creator, wrapped

    def listen(self, factory: IProtocolFactory) -> Deferred:
        return self._wrapped.listen(PeerTLSFactory(self._creator, False, factory))


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    def __init__(self, creator: IOpenSSLClientConnectionCreator, wrapped: IStreamClientEndpoint) -> None:
        self._creator, self._wrapped = creator, wrapped

    def connect(self, factory: IProtocolFactory) -> Deferred:
        d = self._wrapped.connect(PeerTLSFactory(self._creator, True, factory))
        return d.addCallback(lambda tls: tls.wrappedProtocol)


def wrap_server(creator: IOpenSSLServerConnectionCreator, endpoint: IStreamServerEndpoint) -> IStreamServerEndpoint:
    """Like ``endpoints.wrapServerTLS``, with ``PeerTLSProtocol`` as the TLS layer."""
    return _TLSServerEndpoint(creator, endpoint)


def wrap_client(creator: IOpenSSLClientConnectionCreator, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """Like ``endpoints.wrapClientTLS``, with ``PeerTLSProtocol`` as the TLS layer."""
    return _TLSClientEndpoint(creator, endpoint)
