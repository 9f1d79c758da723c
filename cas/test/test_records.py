"""Tests for the human form of node ids (cas/base/nodeid.py) and signed peer records (cas/peer/records.py).

The test vectors pinned here are the ones printed in docs/peers.md; ``test_document_shows_vectors`` checks
that the document still shows them.
"""

from __future__ import annotations

import os
import random

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cas.base import identity, nodeid
from cas.base.identity import Identity, make_certificate, node_id_of
from cas.base.nodeid import (
    ALPHABET,
    MalformedNodeId,
    format_node_id,
    parse_node_id,
    short_node_id,
)
from cas.peer.records import (
    DOMAIN,
    MAX_ADDRESSES,
    MAX_RECORD_SIZE,
    MAX_TTL,
    Address,
    InvalidRecord,
    PeerRecord,
    UnknownAddress,
    decode_address,
    decode_record,
    next_seq,
    parse_operator_address,
    sign_record,
)

from .util import property_settings

FAST = property_settings(200)

U64 = (1 << 64) - 1

# -- test vectors (also printed in docs/peers.md) -----------------------------------------------------------
VEC_ID_BYTES = bytes(range(32))
VEC_ID_TEXT = "aaaqea-yeauda-ocajbi-fqydio-b4ibce-qtcqkr-mfyyde-nbwha5-dypqmy"

# Ed25519 private key bytes(32) (all zero); its public key and node id:
VEC_PUBLIC_KEY = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
VEC_NODE_ID = "wty5cu-bcvius-eyhxse-g2vbfi-zui5ja-ij3l64-ij3fb6-ppjwak-3ewady"
# addresses tcp:192.0.2.1:3000 and tcp:[2001:db8::1]:3000, seq 1767225600000, expires 1767312000
VEC_ADDRESSES = (Address("tcp", "192.0.2.1", 3000), Address("tcp", "2001:db8::1", 3000))
VEC_SEQ = 1767225600000
VEC_EXPIRES = 1767312000
VEC_NOW = 1767225600  # the record is checked at this time (its expiry is exactly MAX_TTL later)
VEC_SIGNED = (
    "85726361732f706565722d7265636f72642f763158203b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a6"
    "3ac048a18b59da29828363746370693139322e302e322e31190bb883637463706b323030313a6462383a3a31190b"
    "b81b0000019b76daa8001a69570a80"
)
VEC_RECORD = (
    "a5636b657958203b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29637365711b0000"
    "019b76daa800637369675840013fe18110f62cfb17df10d98518db8e870aad782ee9eecb4b453120ecf3ab5383f9"
    "717a94affa6b1e91b9a536ab59f942f5cbdfcfa06cea4326a5b37ec9730c656164647273828363746370693139322e"
    "302e322e31190bb883637463706b323030313a6462383a3a31190bb867657870697265731a69570a80"
)


def make_identity(seed: bytes = bytes(32)) -> Identity:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return Identity(key, make_certificate(key))


def raw_key(ident: Identity) -> bytes:
    return ident.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_record(ident: Identity, addrs: list, seq: object = VEC_SEQ, expires: object = VEC_EXPIRES, **fields: object) -> bytes:
    """A correctly signed record built from raw CBOR values, bypassing every check of sign_record."""
    key = raw_key(ident)
    sig = ident.key.sign(cbor2.dumps([DOMAIN, key, addrs, seq, expires], canonical=True))
    obj = {"key": key, "addrs": addrs, "seq": seq, "expires": expires, "sig": sig}
    obj.update(fields)
    return cbor2.dumps({k: v for k, v in obj.items() if v is not None}, canonical=True)


ids = st.binary(min_size=32, max_size=32)


class NodeIdTests(SynchronousTestCase):
    def test_vector(self) -> None:
        self.assertEqual(format_node_id(VEC_ID_BYTES), VEC_ID_TEXT)
        self.assertEqual(parse_node_id(VEC_ID_TEXT), VEC_ID_BYTES)
        self.assertEqual(short_node_id(VEC_ID_BYTES), "aaaqea")
        self.assertEqual(identity.format_node_id(VEC_ID_BYTES), VEC_ID_TEXT)

    @FAST
    @given(ids)
    def test_round_trip(self, raw: bytes) -> None:
        text = format_node_id(raw)
        self.assertEqual(len(text), 62)
        groups = text.split("-")
        self.assertEqual([len(g) for g in groups], [6] * 9)
        self.assertTrue(set("".join(groups)) <= set(ALPHABET))
        self.assertEqual(parse_node_id(text), raw)
        self.assertEqual(short_node_id(raw), groups[0])

    @FAST
    @given(ids, st.data())
    def test_case_dashes_and_whitespace_ignored(self, raw: bytes, data: st.DataObject) -> None:
        compact = format_node_id(raw).replace("-", "")
        cased = "".join(c.upper() if data.draw(st.booleans()) else c for c in compact)
        dashed = "".join(c + ("-" if data.draw(st.booleans()) else "") for c in cased)
        for text in (compact, compact.upper(), cased, dashed, f"  {dashed}\n", f"\t{format_node_id(raw).upper()} "):
            self.assertEqual(parse_node_id(text), raw)

    def _substitutions(self, raw: bytes):
        text = format_node_id(raw).replace("-", "")
        for i, old in enumerate(text):
            for c in ALPHABET:
                if c != old:
                    yield text[:i] + c + text[i + 1 :]

    def _rejected(self, text: str) -> bool:
        try:
            parse_node_id(text)
        except MalformedNodeId as e:
            self.assertIn("check characters do not match: a typo?", str(e))
            return True
        return False

    def test_every_single_substitution_is_caught(self) -> None:
        """54 positions x 31 other characters = 1,674 typos per id, on fixed and random ids: all caught."""
        rng = random.Random(1)
        samples = [VEC_ID_BYTES, bytes(32), b"\xff" * 32, bytes.fromhex(VEC_PUBLIC_KEY)]
        samples += [rng.randbytes(32) for _ in range(20)]
        total = caught = 0
        for raw in samples:
            for typo in self._substitutions(raw):
                total += 1
                caught += self._rejected(typo)
        self.assertEqual(total, len(samples) * 54 * 31)
        self.assertEqual(caught, total)

    @FAST
    @given(ids, st.integers(0, 53), st.integers(1, 31))
    def test_single_substitution_property(self, raw: bytes, pos: int, delta: int) -> None:
        text = format_node_id(raw).replace("-", "")
        c = ALPHABET[(ALPHABET.index(text[pos]) + delta) % 32]
        self.assertTrue(self._rejected(text[:pos] + c + text[pos + 1 :]))

    @FAST
    @given(ids)
    def test_every_adjacent_swap_is_caught(self, raw: bytes) -> None:
        text = format_node_id(raw).replace("-", "")
        for i in range(53):
            if text[i] != text[i + 1]:
                self.assertTrue(self._rejected(text[:i] + text[i + 1] + text[i] + text[i + 2 :]), i)

    def test_double_substitutions_mostly_caught(self) -> None:
        """Two typos at once get past the checks about once in a thousand (5 bits of hash, 5 linear)."""
        rng = random.Random(2)
        trials, slipped = 20_000, 0
        for _ in range(trials):
            text = list(format_node_id(rng.randbytes(32)).replace("-", ""))
            for i in rng.sample(range(54), 2):
                text[i] = rng.choice([c for c in ALPHABET if c != text[i]])
            slipped += not self._rejected("".join(text))
        self.assertLess(slipped / trials, 0.002)

    def test_malformed(self) -> None:
        good = VEC_ID_TEXT.replace("-", "")
        cases = {
            "": "expected 54 characters",
            good[:52]: "no check characters",
            good[:53]: "got 53",
            good + "a": "got 55",
            VEC_ID_TEXT + "-aaaaaa": "got 60",
            "0" + good[1:]: "not base32",
            "1" + good[1:]: "not base32",
            good[:10] + "8" + good[11:]: "not base32",
            good[:10] + "é" + good[11:]: "not base32",
            good[:27] + " " + good[28:]: "not base32",
            good[:27] + "=" + good[28:]: "not base32",
            good[:-1] + ("a" if good[-1] != "a" else "b"): "typo",
            good[:-2] + ("a" if good[-2] != "a" else "b") + good[-1]: "typo",
        }
        for text, reason in cases.items():
            e = self.assertRaises(MalformedNodeId, parse_node_id, text)
            self.assertIn(reason, str(e), text)
            self.assertIsInstance(e, ValueError)
            self.assertNotIn("\n", str(e))
        self.assertRaises(MalformedNodeId, parse_node_id, VEC_ID_TEXT.encode())
        self.assertRaises(MalformedNodeId, parse_node_id, None)

    def test_non_canonical_last_data_character(self) -> None:
        """The 52nd character carries 1 bit and 4 zero bits: other bits are refused, never ignored."""
        text = VEC_ID_TEXT.replace("-", "")
        for c in ALPHABET:
            if ALPHABET.index(c) & 0x0F and c != text[51]:
                self.assertRaises(MalformedNodeId, parse_node_id, text[:51] + c + text[52:])

    @FAST
    @given(st.text(max_size=80))
    def test_garbage_raises_only_malformed(self, text: str) -> None:
        try:
            parse_node_id(text)
        except MalformedNodeId:
            pass

    def test_format_refuses_wrong_length(self) -> None:
        for bad in (b"", bytes(31), bytes(33)):
            self.assertRaises(ValueError, format_node_id, bad)

    def test_identity_uses_human_form(self) -> None:
        ident = make_identity()
        self.assertEqual(str(ident), VEC_NODE_ID)
        self.assertEqual(parse_node_id(str(ident)), ident.node_id)


class AddressTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for value, text in (
            (["tcp", "1.2.3.4", 3000], "tcp:1.2.3.4:3000"),
            (["tcp", "::1", 3000], "tcp:[::1]:3000"),
            (["tcp", "127.0.0.1", 1], "tcp:127.0.0.1:1"),
            (["tcp", "2001:db8::1", 65535], "tcp:[2001:db8::1]:65535"),
            (["tcp", "fe80::1", 443], "tcp:[fe80::1]:443"),
        ):
            a = Address.from_cbor(value)
            self.assertEqual(a.to_cbor(), value)
            self.assertEqual(str(a), text)
            self.assertEqual(decode_address(value), a)
            self.assertEqual(Address(*value), a)

    def test_invalid(self) -> None:
        bad = [
            ["tcp", "example.com", 3000],
            ["tcp", "localhost", 3000],
            ["tcp", "1.2.3.4", 0],
            ["tcp", "1.2.3.4", 70000],
            ["tcp", "1.2.3.4", -1],
            ["tcp", "1.2.3.4", True],
            ["tcp", "1.2.3.4", "3000"],
            ["tcp", "1.2.3.4", 3000.0],
            ["tcp", "fe80::1%eth0", 3000],
            ["tcp", "fe80::1%1", 3000],
            ["tcp", "[::1]", 3000],
            ["tcp", "::0001", 3000],  # not canonical
            ["tcp", "2001:DB8::1", 3000],  # not canonical
            ["tcp", "01.2.3.4", 3000],
            ["tcp", "1.2.3", 3000],
            ["tcp", " 1.2.3.4", 3000],
            ["tcp", "0.0.0.0", 3000],
            ["tcp", "::", 3000],
            ["tcp", "224.0.0.1", 3000],
            ["tcp", "ff02::1", 3000],
            ["tcp", "::ffff:1.2.3.4", 3000],
            ["tcp", b"1.2.3.4", 3000],
            ["tcp", 16909060, 3000],
            ["tcp", "1.2.3.4"],
            ["tcp", "1.2.3.4", 3000, 1],
            ["tcp"],
            [],
            [b"tcp", "1.2.3.4", 3000],
            "tcp:1.2.3.4:3000",
            {"tcp": 1},
            None,
        ]
        for value in bad:
            self.assertRaises(InvalidRecord, Address.from_cbor, value)
            self.assertRaises(InvalidRecord, decode_address, value)
        self.assertRaises(InvalidRecord, Address, "tcp", "localhost", 3000)
        self.assertRaises(InvalidRecord, Address, "udp", "1.2.3.4", 3000)

    def test_unknown_kind_kept_not_dialled(self) -> None:
        value = ["quic", "1.2.3.4", 443, b"\x01"]
        self.assertRaises(InvalidRecord, Address.from_cbor, value)
        a = decode_address(value)
        self.assertIsInstance(a, UnknownAddress)
        self.assertEqual((a.kind, a.to_cbor()), ("quic", value))
        self.assertFalse(hasattr(a, "endpoint"))
        self.assertEqual(str(a), "quic:(unknown kind)")
        for bad in (
            ["", 1],
            ["x" * 33, 1],
            ["onion", [1]],
            ["onion", {"a": 1}],
            ["onion", 1.5],
            ["onion", None],
            ["onion", True],
            ["onion", 1 << 64],
            ["onion"] + [1] * 8,
        ):
            self.assertRaises(InvalidRecord, decode_address, bad)

    def _connect(self, address: Address):
        reactor = MemoryReactor()
        endpoint = address.endpoint(reactor, timeout=7)
        endpoint.connect(Factory.forProtocol(Protocol))
        [(host, port, _, timeout, _)] = reactor.tcpClients
        return endpoint, host, port, timeout

    def test_endpoint_v4(self) -> None:
        endpoint, host, port, timeout = self._connect(Address("tcp", "192.0.2.1", 3000))
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        self.assertEqual((host, port, timeout), ("192.0.2.1", 3000, 7))

    def test_endpoint_v6(self) -> None:
        """An IPv6 literal connects at once: no name resolution is ever attempted."""
        endpoint, host, port, timeout = self._connect(Address("tcp", "2001:db8::1", 443))
        self.assertIsInstance(endpoint, TCP6ClientEndpoint)
        self.assertEqual((host, port, timeout), ("2001:db8::1", 443, 7))


class OperatorAddressTests(SynchronousTestCase):
    def test_valid(self) -> None:
        nid = VEC_ID_BYTES
        cases = {
            "1.2.3.4:3000": (None, "1.2.3.4", 3000),
            " 1.2.3.4:3000\n": (None, "1.2.3.4", 3000),
            "example.com:80": (None, "example.com", 80),
            "localhost:3000": (None, "localhost", 3000),
            "node-1.example.org.:65535": (None, "node-1.example.org.", 65535),
            "[::1]:3000": (None, "::1", 3000),
            "[2001:DB8:0::1]:1": (None, "2001:db8::1", 1),
            f"{VEC_ID_TEXT}@1.2.3.4:3000": (nid, "1.2.3.4", 3000),
            f"{VEC_ID_TEXT.upper().replace('-', '')}@[::1]:3000": (nid, "::1", 3000),
            f"{VEC_ID_TEXT}@seed.example.net:4000": (nid, "seed.example.net", 4000),
        }
        for text, expected in cases.items():
            self.assertEqual(parse_operator_address(text), expected, text)

    def test_invalid(self) -> None:
        typo = VEC_ID_TEXT[:-1] + ("a" if VEC_ID_TEXT[-1] != "a" else "b")
        cases = {
            "": "HOST:PORT",
            "1.2.3.4": "HOST:PORT",
            ":3000": "HOST:PORT",
            "1.2.3.4:": "port",
            "1.2.3.4:0": "port",
            "1.2.3.4:65536": "port",
            "1.2.3.4:-1": "port",
            "1.2.3.4:+80": "port",
            "1.2.3.4:3000x": "port",
            "1.2.3.4: 80": "port",
            "1.2.3.4:٣": "port",  # a non-ASCII digit
            "1.2.3.999:3000": "not an IPv4 address",
            "::1:3000": "brackets",
            "[::1]3000": "[IPV6]:PORT",
            "[::1:3000": "[IPV6]:PORT",
            "[1.2.3.4]:3000": "not an IPv6 address",
            "[fe80::1%eth0]:3000": "zone",
            "bad_host:3000": "not a host name",
            "-bad.example:3000": "not a host name",
            "a..b:3000": "not a host name",
            f"{'a' * 64}.example:3000": "not a host name",
            "exa mple.com:3000": "not a host name",
            "@1.2.3.4:3000": "bad node id",
            "nodeid@1.2.3.4:3000": "bad node id",
            f"{typo}@1.2.3.4:3000": "a typo?",
            f"{VEC_ID_TEXT[:-3]}@1.2.3.4:3000": "bad node id",
        }
        for text, reason in cases.items():
            e = self.assertRaises(ValueError, parse_operator_address, text)
            self.assertIn(reason, str(e), text)
            self.assertNotIn("\n", str(e))


class RecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ident = make_identity()
        self.record = sign_record(self.ident, VEC_ADDRESSES, VEC_SEQ, VEC_EXPIRES)

    def assertInvalid(self, data: bytes, reason: str, now: float = VEC_NOW, **kw: int) -> None:
        e = self.assertRaises(InvalidRecord, decode_record, data, now, **kw)
        self.assertIn(reason, str(e))
        self.assertNotIn("\n", str(e))

    def test_vector(self) -> None:
        self.assertEqual(raw_key(self.ident).hex(), VEC_PUBLIC_KEY)
        self.assertEqual(format_node_id(self.record.node_id), VEC_NODE_ID)
        self.assertEqual(self.record.node_id, self.ident.node_id)
        self.assertEqual(self.record.signed_bytes().hex(), VEC_SIGNED)
        self.assertEqual(self.record.encode().hex(), VEC_RECORD)
        decoded = decode_record(bytes.fromhex(VEC_RECORD), VEC_NOW)
        self.assertEqual(decoded, self.record)
        self.assertEqual([str(a) for a in decoded.addresses], ["tcp:192.0.2.1:3000", "tcp:[2001:db8::1]:3000"])
        self.assertEqual(decoded.dialable, VEC_ADDRESSES)

    def test_vector_is_standard_ed25519(self) -> None:
        """The signature is plain Ed25519 (RFC 8032) over the signed bytes: any library can check it."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        obj = cbor2.loads(bytes.fromhex(VEC_RECORD))
        self.assertEqual(cbor2.loads(bytes.fromhex(VEC_SIGNED)), [DOMAIN, obj["key"], obj["addrs"], obj["seq"], obj["expires"]])
        Ed25519PublicKey.from_public_bytes(obj["key"]).verify(obj["sig"], bytes.fromhex(VEC_SIGNED))

    @FAST
    @given(
        st.lists(
            st.one_of(
                st.builds(lambda b, p: Address("tcp", f"10.{b[0]}.{b[1]}.{b[2]}", p), st.binary(min_size=3, max_size=3), st.integers(1, 65535)),
                st.builds(lambda p: Address("tcp", "2001:db8::" + format(p, "x"), p), st.integers(1, 65535)),
            ),
            max_size=MAX_ADDRESSES,
            unique=True,
        ),
        st.integers(0, U64),
        st.integers(1, MAX_TTL),
    )
    def test_round_trip(self, addresses: list, seq: int, ttl: int) -> None:
        record = sign_record(self.ident, addresses, seq, VEC_NOW + ttl)
        data = record.encode()
        self.assertLessEqual(len(data), MAX_RECORD_SIZE)
        self.assertEqual(decode_record(data, VEC_NOW), record)
        self.assertEqual(decode_record(data, VEC_NOW + ttl - 0.5), record)

    def test_tampering_any_field_breaks_signature(self) -> None:
        r = self.record
        other_key = raw_key(make_identity(b"\x01" * 32))
        a1, a2 = VEC_ADDRESSES
        flipped = bytes([r.signature[0] ^ 1]) + r.signature[1:]
        variants = {
            "key": PeerRecord(other_key, r.addresses, r.seq, r.expires, r.signature),
            "addrs order": PeerRecord(r.public_key, (a2, a1), r.seq, r.expires, r.signature),
            "addrs dropped": PeerRecord(r.public_key, (a1,), r.seq, r.expires, r.signature),
            "addrs none": PeerRecord(r.public_key, (), r.seq, r.expires, r.signature),
            "addrs added": PeerRecord(r.public_key, (a1, a2, Address("tcp", "192.0.2.66", 3000)), r.seq, r.expires, r.signature),
            "addrs port": PeerRecord(r.public_key, (a1, Address("tcp", "2001:db8::1", 3001)), r.seq, r.expires, r.signature),
            "seq": PeerRecord(r.public_key, r.addresses, r.seq + 1, r.expires, r.signature),
            "expires": PeerRecord(r.public_key, r.addresses, r.seq, r.expires - 1, r.signature),
            "sig": PeerRecord(r.public_key, r.addresses, r.seq, r.expires, flipped),
        }
        for what, variant in variants.items():
            with self.subTest(what):
                self.assertInvalid(variant.encode(), "signature does not verify")

    def test_every_bit_flip_rejected(self) -> None:
        data = bytearray(self.record.encode())
        for i in range(len(data) * 8):
            data[i // 8] ^= 1 << (i % 8)
            self.assertRaises(InvalidRecord, decode_record, bytes(data), VEC_NOW)
            data[i // 8] ^= 1 << (i % 8)

    def test_signed_by_another_key(self) -> None:
        """A record signed by key A but naming key B fails, and so does B's signature on A's record."""
        b = make_identity(b"\x02" * 32)
        r = self.record
        claim_b = PeerRecord(raw_key(b), r.addresses, r.seq, r.expires, r.signature)
        self.assertInvalid(claim_b.encode(), "signature does not verify")
        b_sig = sign_record(b, r.addresses, r.seq, r.expires).signature
        self.assertInvalid(PeerRecord(r.public_key, r.addresses, r.seq, r.expires, b_sig).encode(), "signature does not verify")

    def test_domain_separation(self) -> None:
        """A signature over the bare fields (no domain string) is not a record signature."""
        key = raw_key(self.ident)
        addrs = [a.to_cbor() for a in VEC_ADDRESSES]
        sig = self.ident.key.sign(cbor2.dumps([key, addrs, VEC_SEQ, VEC_EXPIRES], canonical=True))
        self.assertInvalid(PeerRecord(key, VEC_ADDRESSES, VEC_SEQ, VEC_EXPIRES, sig).encode(), "signature")

    def test_expiry(self) -> None:
        data = self.record.encode()
        self.assertInvalid(data, "expired", now=VEC_EXPIRES)
        self.assertInvalid(data, "expired", now=VEC_EXPIRES + 1e-3)
        self.assertInvalid(data, "expired", now=VEC_EXPIRES + 10**9)
        decode_record(data, VEC_EXPIRES - 1e-3)
        decode_record(data, VEC_EXPIRES - MAX_TTL)  # exactly the limit
        self.assertInvalid(data, "from now", now=VEC_EXPIRES - MAX_TTL - 1e-3)
        self.assertInvalid(data, "from now", now=0)
        self.assertInvalid(data, "3600 s from now", now=VEC_NOW, max_ttl=3600)
        decode_record(data, VEC_EXPIRES - 3600, max_ttl=3600)

    def test_non_canonical_rejected(self) -> None:
        r = self.record
        fields = {"key": r.public_key, "addrs": [a.to_cbor() for a in r.addresses], "seq": r.seq,
                  "expires": r.expires, "sig": r.signature}
        canonical = r.encode()
        sorted_alpha = cbor2.dumps(dict(sorted(fields.items())))  # keys in plain order, not length-first
        self.assertNotEqual(sorted_alpha, canonical)
        self.assertEqual(cbor2.loads(sorted_alpha), cbor2.loads(canonical))
        self.assertInvalid(sorted_alpha, "canonical")
        # expires 1767312000 as a 64-bit integer instead of 32-bit
        long_int = canonical.replace(bytes.fromhex("1a69570a80"), bytes.fromhex("1b0000000069570a80"))
        self.assertInvalid(long_int, "canonical")
        # the address port 3000 as a 32-bit integer instead of 16-bit
        self.assertInvalid(canonical.replace(bytes.fromhex("190bb8"), bytes.fromhex("1a00000bb8"), 1), "canonical")
        # text key "key" as a byte string
        self.assertInvalid(canonical.replace(b"\x63key", b"\x43key"), "")
        # indefinite-length array of addresses
        indefinite = canonical.replace(bytes.fromhex("656164647273" "82"), bytes.fromhex("656164647273" "9f"))
        indefinite = indefinite[:-len("expires") - 6] + b"\xff" + indefinite[-len("expires") - 6:]
        self.assertInvalid(indefinite, "CBOR")
        self.assertInvalid(canonical + b"\x00", "CBOR")
        self.assertInvalid(canonical[:-1], "CBOR")
        # a duplicated key: six pairs announced, "seq" twice
        dup = b"\xa6" + canonical[1:] + cbor2.dumps("seq") + cbor2.dumps(r.seq)
        self.assertInvalid(dup, "CBOR")
        # the same record as a CBOR tag
        self.assertInvalid(cbor2.dumps(cbor2.CBORTag(24, canonical)), "CBOR")  # tags are refused while decoding

    def test_fields_and_types(self) -> None:
        i = self.ident
        addrs = [a.to_cbor() for a in VEC_ADDRESSES]
        self.assertEqual(decode_record(raw_record(i, addrs), VEC_NOW), self.record)
        cases = [
            (raw_record(i, addrs, extra=1), "exactly the keys"),
            (raw_record(i, addrs, sig=None), "exactly the keys"),
            (raw_record(i, addrs, key=raw_key(i)[:31]), "key must be 32 bytes"),
            (raw_record(i, addrs, key=raw_key(i).hex()), "key must be 32 bytes"),
            (raw_record(i, addrs, sig=b"\x00" * 63), "signature must be 64 bytes"),
            (raw_record(i, addrs, sig="x" * 64), "signature must be 64 bytes"),
            (raw_record(i, addrs, seq=-1), "'seq'"),
            (raw_record(i, addrs, seq=True), "'seq'"),
            (raw_record(i, addrs, seq=1.0), "'seq'"),
            (raw_record(i, addrs, seq="1"), "'seq'"),
            (raw_record(i, addrs, seq=1 << 64), ""),  # a bignum tag
            (raw_record(i, addrs, expires=float(VEC_EXPIRES)), "'expires'"),
            (raw_record(i, addrs, expires=None), "exactly the keys"),
            (raw_record(i, {"a": 1}), "addresses must be an array"),
            (raw_record(i, [["tcp", "1.2.3.4", p] for p in range(1, MAX_ADDRESSES + 2)]), "at most 16"),
            (raw_record(i, [addrs[0], addrs[0]]), "twice"),
            (cbor2.dumps([1, 2, 3, 4, 5], canonical=True), "map"),
            (cbor2.dumps("record", canonical=True), "map"),
            (b"", "CBOR"),
        ]
        for data, reason in cases:
            self.assertInvalid(data, reason)
        self.assertRaises(InvalidRecord, decode_record, "text", VEC_NOW)

    def test_bad_addresses_rejected_even_when_signed(self) -> None:
        good = ["tcp", "192.0.2.1", 3000]
        for bad in (
            ["tcp", "example.com", 3000],
            ["tcp", "localhost", 3000],
            ["tcp", "1.2.3.4", 0],
            ["tcp", "1.2.3.4", 70000],
            ["tcp", "fe80::1%eth0", 3000],
            ["tcp", "1.2.3.4", "3000"],
            ["tcp", b"\x01\x02\x03\x04", 3000],
            ["tcp", "1.2.3.4"],
            ["onion", [1, 2]],
            [1, "1.2.3.4", 3000],
            "tcp:1.2.3.4:3000",
        ):
            with self.subTest(repr(bad)):
                self.assertInvalid(raw_record(self.ident, [good, bad]), "address")

    def test_unknown_address_kinds_kept(self) -> None:
        addrs = [["tcp", "192.0.2.1", 3000], ["quic", "192.0.2.1", 443], ["onion", "abc.onion", 80, b"\x00"]]
        data = raw_record(self.ident, addrs)
        r = decode_record(data, VEC_NOW)
        self.assertEqual([a.to_cbor() for a in r.addresses], addrs)
        self.assertEqual(r.dialable, (Address("tcp", "192.0.2.1", 3000),))
        self.assertEqual(r.encode(), data)  # passed on unchanged
        again = sign_record(self.ident, r.addresses, VEC_SEQ, VEC_EXPIRES)
        self.assertEqual(again.encode(), data)

    def test_empty_address_list_allowed(self) -> None:
        """A record with no address withdraws the node's earlier addresses (with a higher seq)."""
        r = sign_record(self.ident, [], VEC_SEQ + 1, VEC_EXPIRES)
        self.assertEqual(decode_record(r.encode(), VEC_NOW).addresses, ())

    def test_oversize_rejected(self) -> None:
        big = [["blob", bytes([i]) * 200] for i in range(MAX_ADDRESSES)]
        data = raw_record(self.ident, big)
        self.assertGreater(len(data), MAX_RECORD_SIZE)
        self.assertInvalid(data, "larger than 2048")
        self.assertInvalid(data + b"\x00" * 10_000, "larger than 2048")
        self.assertInvalid(b"\x00" * (MAX_RECORD_SIZE + 1), "larger than 2048")
        e = self.assertRaises(ValueError, sign_record, self.ident, [UnknownAddress(tuple(a)) for a in big], 1, VEC_EXPIRES)
        self.assertIn("larger than", str(e))

    def test_sign_record_refuses_what_decode_refuses(self) -> None:
        a = VEC_ADDRESSES[0]
        many = [Address("tcp", "192.0.2.1", p) for p in range(1, MAX_ADDRESSES + 2)]
        for args in (
            (many, 1, VEC_EXPIRES),
            ([a, a], 1, VEC_EXPIRES),
            (["tcp:1.2.3.4:5"], 1, VEC_EXPIRES),
            ([a], -1, VEC_EXPIRES),
            ([a], 1 << 64, VEC_EXPIRES),
            ([a], True, VEC_EXPIRES),
            ([a], 1, float(VEC_EXPIRES)),
        ):
            self.assertRaises(ValueError, sign_record, self.ident, *args)
        self.assertEqual(len(sign_record(self.ident, many[:MAX_ADDRESSES], 1, VEC_EXPIRES).addresses), MAX_ADDRESSES)

    def test_next_seq(self) -> None:
        self.assertEqual(next_seq(None, 1767225600.1234), 1767225600123)
        self.assertEqual(next_seq(1767225600123, 1767225600.1234), 1767225600124)  # same millisecond
        self.assertEqual(next_seq(1767225600200, 1767225600.1), 1767225600201)  # clock went back
        self.assertEqual(next_seq(5, 1767225600.0), 1767225600000)

    def test_node_id(self) -> None:
        key = self.ident.key.public_key()
        self.assertEqual(self.record.node_id, node_id_of(key))

    @FAST
    @given(st.binary(max_size=3000))
    def test_random_bytes_raise_only_invalid_record(self, data: bytes) -> None:
        try:
            decode_record(data, VEC_NOW)
        except InvalidRecord:
            pass

    @FAST
    @given(st.data())
    def test_mutated_record_raises_only_invalid_record(self, data: st.DataObject) -> None:
        raw = bytearray(bytes.fromhex(VEC_RECORD))
        for _ in range(data.draw(st.integers(1, 4))):
            op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
            pos = data.draw(st.integers(0, len(raw) - 1))
            if op == "set":
                raw[pos] = data.draw(st.integers(0, 255))
            elif op == "insert":
                raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=9))
            elif op == "delete":
                del raw[pos]
            else:
                del raw[pos:]
            if not raw:
                break
        try:
            decode_record(bytes(raw), VEC_NOW)
        except InvalidRecord:
            pass

    @FAST
    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=40),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
        max_leaves=30,
    ))
    def test_random_cbor_raises_only_invalid_record(self, value: object) -> None:
        try:
            data = cbor2.dumps(value, canonical=True)
        except Exception:
            return
        try:
            decode_record(data, VEC_NOW)
        except InvalidRecord:
            pass

    def test_document_shows_vectors(self) -> None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "docs", "peers.md")
        if not os.path.exists(path):
            raise SkipTest("docs/peers.md is not next to the package (installed copy)")
        with open(path, encoding="utf-8") as f:
            doc = "".join(f.read().split())  # long hex strings may be wrapped in the document
        for value in (VEC_ID_TEXT, VEC_PUBLIC_KEY, VEC_NODE_ID, VEC_SIGNED, VEC_RECORD, str(VEC_SEQ),
                      str(VEC_EXPIRES), nodeid.CHECK_DOMAIN.decode(), DOMAIN):
            with self.subTest(value[:16]):
                self.assertIn(value, doc)
