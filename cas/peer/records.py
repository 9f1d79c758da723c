"""Signed peer records: which addresses a node can be reached at, signed by the node's own key.

Records are gossiped (``HELLO``, ``PEERS``), so everything in one is untrusted until ``decode_record`` has
checked it: canonical CBOR only, exact fields and types, size and count limits, a live expiry, and the
Ed25519 signature of the key the record names. Addresses learned this way become endpoints only through
``Address.endpoint``, built from validated IP literals (never ``clientFromString``). See docs/peers.md.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

import attrs
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from cas.base.errors import CasError
from cas.base.identity import Identity, node_id_of
from cas.base.nodeid import parse_node_id
from cas.peer.frames import CBOR_NO_TAGS

DOMAIN = "cas/peer-record/v1"
MAX_RECORD_SIZE = 2048
MAX_ADDRESSES = 16
MAX_TTL = 24 * 3600
KEY_SIZE = 32
SIGNATURE_SIZE = 64
U64 = (1 << 64) - 1
FIELDS = frozenset({"key", "addrs", "seq", "expires", "sig"})
# Addresses of kinds this version does not know: kept (so records of newer nodes stay valid and can be passed
# on) but never dialled. Their elements are limited to plain values.
MAX_UNKNOWN_ITEMS = 8
MAX_KIND_LEN = 32


class InvalidRecord(CasError):
    """A peer record or address that must not be used; ``str(e)`` is a one-line reason."""

    code = "invalid_record"


# -- addresses -----------------------------------------------------------------------------------------------


def _check_ip(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``host`` must be an IPv4 or IPv6 literal in its canonical text form, usable as a peer address."""
    if not isinstance(host, str):
        raise InvalidRecord("address host must be text")
    if "%" in host:
        raise InvalidRecord(f"address host {host[:64]!r}: IPv6 zone ids are not allowed")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRecord(f"address host {host[:64]!r} is not an IP address (names are not allowed)") from None
    if str(ip) != host:
        raise InvalidRecord(f"address host {host!r} is not in canonical form ({ip})")
    if ip.is_unspecified or ip.is_multicast:
        raise InvalidRecord(f"address host {host} cannot be dialled")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise InvalidRecord(f"address host {host}: write an IPv4-mapped address as IPv4 ({ip.ipv4_mapped})")
    return ip


def _check_port(port: object) -> int:
    if type(port) is not int or not 1 <= port <= 65535:
        raise InvalidRecord("address port must be an integer in 1..65535")
    return port


@attrs.frozen
class Address:
    """A dialable address. Version 1 knows one kind: ``tcp`` with an IPv4 or IPv6 literal (canonical text,
    no zone id, not unspecified or multicast) and a port in 1..65535. Construction validates, raising
    InvalidRecord, so every Address can be dialled safely."""

    kind: str
    host: str
    port: int

    def __attrs_post_init__(self) -> None:
        if self.kind != "tcp":
            raise InvalidRecord(f"unknown address kind {str(self.kind)[:MAX_KIND_LEN]!r}")
        _check_ip(self.host)
        _check_port(self.port)

    @classmethod
    def tcp(cls, host: str, port: int) -> Address:
        return cls("tcp", host, port)

    def to_cbor(self) -> list:
        return [self.kind, self.host, self.port]

    @classmethod
    def from_cbor(cls, value: object) -> Address:
        """A known (``tcp``) address; anything else, unknown kinds included, raises InvalidRecord. Records
        use ``decode_address``, which keeps unknown kinds as UnknownAddress."""
        if not isinstance(value, list) or not value or not isinstance(value[0], str):
            raise InvalidRecord("an address must be an array [kind, ...]")
        if value[0] != "tcp":
            raise InvalidRecord(f"unknown address kind {value[0][:MAX_KIND_LEN]!r}")
        if len(value) != 3:
            raise InvalidRecord("a tcp address must be [\"tcp\", host, port]")
        return cls(value[0], value[1], value[2])

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def endpoint(self, reactor: object, timeout: float = 30) -> IStreamClientEndpoint:
        """A TCP client endpoint for this address (the fields were validated when it was made)."""
        if self.is_ipv6:
            return TCP6ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        return TCP4ClientEndpoint(reactor, self.host, self.port, timeout=timeout)

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{self.kind}:{host}:{self.port}"


@attrs.frozen
class UnknownAddress:
    """An address of a kind this version does not know: kept in its record exactly, never dialled."""

    value: tuple

    @property
    def kind(self) -> str:
        return self.value[0]

    def to_cbor(self) -> list:
        return list(self.value)

    def __str__(self) -> str:
        return f"{self.kind}:(unknown kind)"


AnyAddress = Address | UnknownAddress


def decode_address(value: object) -> AnyAddress:
    """An address from a record: ``tcp`` is checked strictly; another kind (text of 1..32 characters other
    than ``tcp``) with at most 7 plain values (text, bytes, integers) is kept as an UnknownAddress."""
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise InvalidRecord("an address must be an array [kind, ...]")
    if value[0] == "tcp":
        return Address.from_cbor(value)
    if not 1 <= len(value[0]) <= MAX_KIND_LEN or len(value) > MAX_UNKNOWN_ITEMS:
        raise InvalidRecord("an address of unknown kind has too long a kind or too many values")
    for item in value[1:]:
        if type(item) not in (str, bytes, int) or (type(item) is int and not -(1 << 64) <= item <= U64):
            raise InvalidRecord("an address of unknown kind may hold only text, bytes and 64-bit integers")
    return UnknownAddress(tuple(value))


_HOST_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _check_hostname(host: str) -> None:
    if len(host) > 253:
        raise ValueError("host name longer than 253 characters")
    for label in host.rstrip(".").split("."):
        if not 1 <= len(label) <= 63 or not set(label.lower()) <= _HOST_LABEL_CHARS or label[0] == "-" or label[-1] == "-":
            raise ValueError(f"{host!r} is not a host name or IP address")


def parse_operator_address(text: str) -> tuple[bytes | None, str, int]:
    """Parse an address typed by an operator (``--bootstrap``): ``[NODEID@]HOST:PORT``, where HOST is a name,
    an IPv4 literal or an IPv6 literal in brackets (``[::1]:3000``) and NODEID the human form of a node id.
    Returns (node id or None, host, port), the host without brackets; raises ValueError with a clear message.
    """
    if not isinstance(text, str):
        raise ValueError("expected an address [NODEID@]HOST:PORT")
    s = text.strip()
    node_id = None
    if "@" in s:
        id_text, _, s = s.partition("@")
        try:
            node_id = parse_node_id(id_text)
        except ValueError as e:
            raise ValueError(f"bad node id before '@' in {text.strip()!r}: {e}") from None
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text.strip()!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
        if "%" in host:
            raise ValueError(f"{text.strip()!r}: IPv6 zone ids are not supported")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text.strip()!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text.strip()!r}: write an IPv6 address in brackets, as in [::1]:3000")
        if all(c.isdigit() or c == "." for c in host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        else:
            _check_hostname(host)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text.strip()!r}: the port must be a number in 1..65535")
    return node_id, host, int(port_text)


# -- records -------------------------------------------------------------------------------------------------


def signed_bytes(public_key: bytes, addresses: Sequence[AnyAddress], seq: int, expires: int) -> bytes:
    """What the signature covers: canonical CBOR of [DOMAIN, key, [address...], seq, expires]."""
    return cbor2.dumps([DOMAIN, public_key, [a.to_cbor() for a in addresses], seq, expires], canonical=True)


@attrs.frozen
class PeerRecord:
    public_key: bytes  # raw Ed25519 public key
    addresses: tuple[AnyAddress, ...]
    seq: int  # strictly increasing per node (see next_seq)
    expires: int  # Unix time, seconds
    signature: bytes  # Ed25519 over signed_bytes(...)

    @property
    def node_id(self) -> bytes:
        return node_id_of(Ed25519PublicKey.from_public_bytes(self.public_key))

    @property
    def dialable(self) -> tuple[Address, ...]:
        """The addresses this version can dial (UnknownAddress entries left out)."""
        return tuple(a for a in self.addresses if isinstance(a, Address))

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.public_key, self.addresses, self.seq, self.expires)

    def encode(self) -> bytes:
        """The wire form: canonical CBOR map {"key", "addrs", "seq", "expires", "sig"}."""
        return cbor2.dumps(
            {
                "key": self.public_key,
                "addrs": [a.to_cbor() for a in self.addresses],
                "seq": self.seq,
                "expires": self.expires,
                "sig": self.signature,
            },
            canonical=True,
        )


def next_seq(last: int | None, now: float) -> int:
    """The sequence number of a node's next record: its clock in milliseconds, and always above the last."""
    now_ms = math.floor(now * 1000)
    return now_ms if last is None else max(last + 1, now_ms)


def sign_record(identity: Identity, addresses: Sequence[AnyAddress], seq: int, expires: int) -> PeerRecord:
    """Sign a record for this node. Raises ValueError for values decode_record would refuse (other than time)."""
    addresses = tuple(addresses)
    if not all(isinstance(a, (Address, UnknownAddress)) for a in addresses):
        raise ValueError("addresses must be Address or UnknownAddress values")
    if len(addresses) > MAX_ADDRESSES:
        raise ValueError(f"a record holds at most {MAX_ADDRESSES} addresses")
    if len(set(addresses)) != len(addresses):
        raise ValueError("an address is listed twice")
    for what, v in (("seq", seq), ("expires", expires)):
        if type(v) is not int or not 0 <= v <= U64:
            raise ValueError(f"{what} must be an integer in 0..2**64-1")
    key = identity.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = identity.key.sign(signed_bytes(key, addresses, seq, expires))
    record = PeerRecord(key, addresses, seq, expires, sig)
    if len(record.encode()) > MAX_RECORD_SIZE:
        raise ValueError(f"record larger than {MAX_RECORD_SIZE} bytes")
    return record


def _uint(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= U64:
        raise InvalidRecord(f"record field {what!r} must be an integer in 0..2**64-1")
    return v


def decode_record(data: bytes, now: float, max_ttl: int = MAX_TTL) -> PeerRecord:
    """Decode and verify a record received from the network at time ``now`` (Unix seconds). Raises
    InvalidRecord with a one-line reason for anything but a live, canonical, correctly signed record."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidRecord("a record must be bytes")
    data = bytes(data)
    if len(data) > MAX_RECORD_SIZE:
        raise InvalidRecord(f"record larger than {MAX_RECORD_SIZE} bytes")
    try:
        obj = cbor2.loads(data, max_depth=4, allow_indefinite=False, allow_duplicate_keys=False, **CBOR_NO_TAGS)
    except Exception as e:  # cbor2 raises several types on garbage
        raise InvalidRecord(f"record is not valid CBOR ({e.__class__.__name__})") from None
    try:
        canonical = cbor2.dumps(obj, canonical=True)
    except Exception:
        raise InvalidRecord("record holds values cas never writes") from None
    if canonical != data:
        raise InvalidRecord("record is not in canonical CBOR form")
    if not isinstance(obj, dict) or set(obj) != FIELDS:
        raise InvalidRecord("record must be a map with exactly the keys key, addrs, seq, expires, sig")
    key, addrs, sig = obj["key"], obj["addrs"], obj["sig"]
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise InvalidRecord(f"record key must be {KEY_SIZE} bytes")
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
        raise InvalidRecord(f"record signature must be {SIGNATURE_SIZE} bytes")
    seq = _uint(obj["seq"], "seq")
    expires = _uint(obj["expires"], "expires")
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRESSES:
        raise InvalidRecord(f"record addresses must be an array of at most {MAX_ADDRESSES}")
    addresses = tuple(decode_address(a) for a in addrs)
    if len(set(addresses)) != len(addresses):
        raise InvalidRecord("record lists an address twice")
    if expires <= now:
        raise InvalidRecord("record has expired")
    if expires > now + max_ttl:
        raise InvalidRecord(f"record expires more than {max_ttl} s from now")
    record = PeerRecord(key, addresses, seq, expires, sig)
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, record.signed_bytes())
    except (InvalidSignature, ValueError):
        raise InvalidRecord("record signature does not verify") from None
    return record
