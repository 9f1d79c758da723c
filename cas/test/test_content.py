"""Tests for the content model: block ids, segment encryption, manifests and capabilities.

The test vectors pinned here are the ones printed in docs/format.md; ``ContentVectorTests`` checks that the
code reproduces them exactly and that the document still shows them.
"""

from __future__ import annotations

import base64
import os

import attrs
import blake3
import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cas.base.cid import CID, CID_STR_LEN, PREFIX
from cas.base.errors import MalformedKey, MalformedManifest, TamperedData
from cas.content import capability, cipher, manifest
from cas.content.capability import TOKEN_LEN, ReadCap
from cas.content.manifest import (
    MAX_DEPTH,
    MAX_LINKS,
    MAX_MANIFEST_SIZE,
    MAX_META_SIZE,
    MAX_NAME_LEN,
    MAX_TYPE_LEN,
    SALT_SIZE,
    VERSION,
    Link,
    ManifestBuilder,
    Metadata,
    Node,
    Root,
    data_links,
    decode_node,
    decode_root,
)

from .util import property_settings

FAST = property_settings(200)

U64 = (1 << 64) - 1
B32 = "abcdefghijklmnopqrstuvwxyz234567"

# -- test vectors (also printed in docs/format.md) ----------------------------------------------------------
EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
EMPTY_CID = "bafkr4ifpcne3t5pzugtkaqcn5i3nzskjtpfslsnnyejlpte2spfoihzsmi"

KEY = bytes(range(32))
SALT = bytes(range(16))  # the placement salt of the tiny-file vector: 000102...0f
# segment 0, last=True, plaintext b"hello cas"
VEC_LAST_BLOCK = "07b3e335110791a2f5562388cef192fc15ea5382d7d73c0fa5"
VEC_LAST_CID = "bafkr4ibnikr7o5guo6ll4wl7c7jez33y5nk2xvlri5udv52jr4sdofj4i4"
# segment 258 (0x0102), last=False, plaintext b"middle segment"
VEC_MIDDLE_BLOCK = "9f02ccae69b5eebfe15582b8710886e37a4a53717b3d42fd90c4d5052afb"
VEC_MIDDLE_CID = "bafkr4igxxvdxb2cmavbjbsgkq5hwy4cuf5aisjbwaqmdktjbaz6usoeo7u"
# Metadata("hello.txt", "text/plain", 9, 1767225600)
VEC_META = (
    "a4646e616d656968656c6c6f2e7478746473697a650964747970656a746578742f706c61696e"
    "67637265617465641a6955b900"
)
VEC_SEALED_META = (
    "4157a6a3de1564006e5372d45a192bd5fa5176412870f88c7add3d1e8a1c09ee084b501d95a0"
    "0bada75596f541e1f97550500be3db70af789bac91308d5f86cece56e6"
)
VEC_ROOT = (
    "a8617602646d65746158434157a6a3de1564006e5372d45a192bd5fa5176412870f88c7add3d"
    "1e8a1c09ee084b501d95a00bada75596f541e1f97550500be3db70af789bac91308d5f86cece"
    "56e66473616c7450000102030405060708090a0b0c0d0e0f647479706564726f6f7465646570"
    "746800656c696e6b738182582401551e202d42a3f774d47796be597f17d24cef78eb55abd571"
    "47683af7498f2437153c47181966626c6f636b73016c7365676d656e745f73697a651a001000"
    "00"
)
VEC_ROOT_CID = "bafkr4ietdf37zemawtj5z5l43piqrziqa5wyycn356ajd2kryarouokdm4"
VEC_READCAP = (
    "cas1afkr4ietdf37zemawtj5z5l43piqrziqa5wyycn356ajd2kryarouokdm4"
    "aacaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6sq43gnq"
)
VEC_CREATED = 1767225600


# -- helpers ------------------------------------------------------------------------------------------------
def cid_n(i: int) -> CID:
    """A distinct, deterministic block id (no hashing needed)."""
    return CID(i.to_bytes(32, "big"))


def b32(raw: bytes) -> str:
    """Independent base32 (RFC 4648, lower case, no padding), as the format document specifies."""
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def enc(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def root_obj(**changes: object) -> dict:
    """The CBOR map of a small valid root (depth 0, two data links)."""
    obj = {
        "v": 2,
        "type": "root",
        "segment_size": 100,
        "blocks": 2,
        "depth": 0,
        "links": [[cid_n(1).to_bytes(), 116], [cid_n(2).to_bytes(), 16]],
        "meta": bytes(40),
        "salt": SALT,
    }
    obj.update(changes)
    return obj


def node_obj(**changes: object) -> dict:
    obj = {"v": 2, "type": "node", "depth": 1, "links": [[cid_n(1).to_bytes(), 5], [cid_n(2).to_bytes(), 1]]}
    obj.update(changes)
    return obj


def meta_obj(**changes: object) -> dict:
    obj = {"name": "a.txt", "type": "text/plain", "size": 5, "created": 1}
    obj.update(changes)
    return obj


def build(fanout: int, links: list[Link], segment_size: int = 100, sealed: bytes = bytes(16), salt: bytes = SALT):
    """Run the builder; returns (root, root cid, root raw, {cid: Node}, emission order of node ids)."""
    b = ManifestBuilder(fanout)
    emitted: list[tuple[CID, bytes]] = []
    for link in links:
        emitted.extend(b.add(link))
    rest, root_cid, root_raw = b.finish(segment_size, sealed, salt)
    emitted.extend(rest)
    nodes = {}
    for cid, raw in emitted:
        assert cid == CID.of(raw), "emitted node id is not the hash of its bytes"
        assert cid not in nodes, "node emitted twice"
        nodes[cid] = decode_node(raw, segment_size)
    assert root_cid == CID.of(root_raw)
    return decode_root(root_raw), root_cid, root_raw, nodes, [cid for cid, _ in emitted]


def data_links_for(n: int, size: int = 116) -> list[Link]:
    return [Link(cid_n(i + 1), size) for i in range(n)]


# -- strategies ---------------------------------------------------------------------------------------------
digests = st.binary(min_size=32, max_size=32)
cids = digests.map(CID)
keys = st.binary(min_size=32, max_size=32)
salts = st.binary(min_size=SALT_SIZE, max_size=SALT_SIZE)
u64 = st.integers(0, U64)
names = st.text(max_size=60)
cbor_leaf = st.one_of(
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, 1, 2, 6, 7, 16, 100, 116, 117, U64, U64 + 1, -1]),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.binary(max_size=40),
    st.sampled_from([PREFIX + bytes(32), b"", bytes(15), bytes(16), bytes(17)]),
    st.text(max_size=8),
    st.sampled_from(["root", "node", "v", "links", "meta", "salt", "name"]),
)
cbor_values = st.recursive(
    cbor_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def roots(draw) -> Root:
    seg = draw(st.integers(1, cipher.SEGMENT_SIZE))
    depth = draw(st.integers(0, MAX_DEPTH))
    n = draw(st.integers(1, 12))
    if depth == 0:
        counts = draw(st.lists(st.integers(cipher.TAG_SIZE, seg + cipher.TAG_SIZE), min_size=n, max_size=n))
    else:
        counts = draw(st.lists(st.integers(1, U64 // 16), min_size=n, max_size=n))
    links = tuple(Link(draw(cids), c) for c in counts)
    blocks = sum(counts) if depth else n
    meta = draw(st.binary(min_size=16, max_size=300))
    return Root(seg, blocks, depth, links, meta, draw(salts))


@st.composite
def nodes_(draw) -> Node:
    depth = draw(st.integers(0, MAX_DEPTH))
    n = draw(st.integers(1, 12))
    if depth == 0:
        counts = draw(st.lists(st.integers(cipher.TAG_SIZE, cipher.SEGMENT_SIZE + cipher.TAG_SIZE), min_size=n, max_size=n))
    else:
        counts = draw(st.lists(st.integers(1, U64), min_size=n, max_size=n))
    return Node(depth, tuple(Link(draw(cids), c) for c in counts))


# ===========================================================================================================
class CIDTests(SynchronousTestCase):
    def test_empty_vector(self) -> None:
        c = CID.of(b"")
        self.assertEqual(c.digest.hex(), EMPTY_BLAKE3)
        self.assertEqual(str(c), EMPTY_CID)
        self.assertEqual(c.to_bytes(), bytes([0x01, 0x55, 0x1E, 0x20]) + bytes.fromhex(EMPTY_BLAKE3))
        self.assertEqual(CID.parse(EMPTY_CID), c)
        self.assertEqual(CID.parse(EMPTY_CID).digest.hex(), EMPTY_BLAKE3)
        self.assertEqual(repr(c), f"CID({EMPTY_CID})")

    @FAST
    @given(st.binary(max_size=3000))
    def test_of_is_blake3(self, data: bytes) -> None:
        c = CID.of(data)
        self.assertEqual(c.digest, blake3.blake3(data).digest())
        self.assertEqual(str(c), "b" + b32(bytes([1, 0x55, 0x1E, 0x20]) + c.digest))

    @FAST
    @given(digests)
    def test_round_trip(self, d: bytes) -> None:
        c = CID(d)
        text = str(c)
        self.assertEqual(len(text), CID_STR_LEN)
        self.assertTrue(text.startswith("bafkr4i"), text)
        self.assertEqual(set(text[1:]) - set(B32), set())
        parsed = CID.parse(text)
        self.assertEqual(parsed, c)
        self.assertEqual(parsed.digest, d)
        self.assertEqual(hash(parsed), hash(c))
        self.assertEqual(CID.from_bytes(c.to_bytes()), c)
        self.assertEqual(len(c.to_bytes()), 36)

    @FAST
    @given(digests, digests)
    def test_equality_is_by_digest(self, a: bytes, b: bytes) -> None:
        self.assertEqual(CID(a) == CID(b), a == b)
        self.assertEqual(len({CID(a), CID(b), CID(a)}), 1 if a == b else 2)
        self.assertNotEqual(CID(a), a)

    @FAST
    @given(st.binary(max_size=200), st.data())
    def test_verify(self, data: bytes, draw) -> None:
        c = CID.of(data)
        self.assertTrue(c.verify(data))
        self.assertFalse(c.verify(data + b"\x00"))
        if data:
            self.assertFalse(c.verify(data[:-1]))
            pos = draw.draw(st.integers(0, len(data) - 1))
            bit = draw.draw(st.integers(0, 7))
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            self.assertFalse(c.verify(bytes(flipped)))

    def test_constructor_checks_length(self) -> None:
        self.assertRaises(ValueError, CID, bytes(31))
        self.assertRaises(ValueError, CID, bytes(33))

    def test_from_bytes_errors(self) -> None:
        good = CID.of(b"x").to_bytes()
        self.assertEqual(CID.from_bytes(good), CID.of(b"x"))
        for raw in (b"", good[:-1], good + b"\x00", b"\x12\x20" + good[4:], bytes([1, 0x70]) + good[2:],
                    bytes([1, 0x55, 0x12, 0x20]) + good[4:], bytes([0, 0x55, 0x1E, 0x20]) + good[4:]):
            self.assertRaises(MalformedKey, CID.from_bytes, raw)

    def test_parse_errors(self) -> None:
        s = EMPTY_CID
        d = bytes.fromhex(EMPTY_BLAKE3)
        bad = {
            "empty": "",
            "wrong multibase prefix": "z" + s[1:],
            "upper-case multibase prefix": "B" + s[1:],
            "upper case": s.upper(),
            "upper case body": "b" + s[1:].upper(),
            "one upper-case char": s[:10] + s[10].upper() + s[11:],
            "too short": s[:-1],
            "too long": s + "a",
            "base58 CIDv0": "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n",
            "digit 1": s[:20] + "1" + s[21:],
            "digit 8": s[:20] + "8" + s[21:],
            "digit 0": s[:20] + "0" + s[21:],
            "padding char": s[:-1] + "=",
            "punctuation": s[:30] + "!" + s[31:],
            "non-ascii": s[:30] + "\u00e9" + s[31:],
            "whitespace": " " + s[1:],
            "sha2-256 multihash": "b" + b32(bytes([1, 0x55, 0x12, 0x20]) + d),
            "dag-pb codec": "b" + b32(bytes([1, 0x70, 0x1E, 0x20]) + d),
            "CIDv0 byte": "b" + b32(bytes([0, 0x55, 0x1E, 0x20]) + d),
        }
        for what, text in bad.items():
            with self.subTest(what):
                self.assertRaises(MalformedKey, CID.parse, text)
        self.assertRaises(MalformedKey, CID.parse, s.encode())
        self.assertRaises(MalformedKey, CID.parse, None)

    def test_parse_rejects_non_canonical_trailing_bits(self) -> None:
        s = EMPTY_CID
        # 36 bytes are 288 bits, 58 base32 characters hold 290: the last character carries 2 unused bits.
        other = s[:-1] + B32[B32.index(s[-1]) ^ 1]
        self.assertNotEqual(other, s)
        # Precondition: a lax decoder reads the same bytes from both strings.
        self.assertEqual(base64.b32decode(other[1:].upper() + "======"), CID.parse(s).to_bytes())
        e = self.assertRaises(MalformedKey, CID.parse, other)
        self.assertIn("non-canonical", str(e))

    @FAST
    @given(st.text(max_size=70))
    def test_parse_arbitrary_text(self, text: str) -> None:
        try:
            c = CID.parse(text)
        except MalformedKey:
            return
        self.assertEqual(str(c), text)

    @FAST
    @given(digests, st.integers(1, CID_STR_LEN - 1), st.sampled_from(B32))
    def test_parse_one_char_changed(self, d: bytes, pos: int, ch: str) -> None:
        s = str(CID(d))
        changed = s[:pos] + ch + s[pos + 1:]
        try:
            c = CID.parse(changed)
        except MalformedKey:
            return  # a changed prefix, or a non-canonical last character
        # Otherwise the change landed in the digest: a different, well-formed id.
        self.assertEqual(str(c), changed)
        self.assertEqual(c == CID(d), changed == s)


# ===========================================================================================================
class CipherTests(SynchronousTestCase):
    def test_nonce_layout(self) -> None:
        self.assertEqual(cipher.segment_nonce(0x0102030405060708, True).hex(), "0102030405060708" "01" "000000")
        self.assertEqual(cipher.segment_nonce(0x0102030405060708, False).hex(), "0102030405060708" "00" "000000")
        self.assertEqual(cipher.segment_nonce(0, False), bytes(12))
        self.assertEqual(cipher.segment_nonce(U64, True).hex(), "ff" * 8 + "01000000")
        self.assertEqual(cipher.META_NONCE.hex(), "00" * 8 + "02" + "000000")
        self.assertRaises(ValueError, cipher.segment_nonce, -1, False)
        self.assertRaises(ValueError, cipher.segment_nonce, U64 + 1, False)
        self.assertRaises(ValueError, cipher.seal_segment, KEY, U64 + 1, True, b"")
        self.assertRaises(ValueError, cipher.open_segment, KEY, -1, True, bytes(16))

    def test_segment_vectors(self) -> None:
        last = cipher.seal_segment(KEY, 0, True, b"hello cas")
        self.assertEqual(last.hex(), VEC_LAST_BLOCK)
        self.assertEqual(str(CID.of(last)), VEC_LAST_CID)
        self.assertEqual(cipher.open_segment(KEY, 0, True, bytes.fromhex(VEC_LAST_BLOCK)), b"hello cas")
        middle = cipher.seal_segment(KEY, 258, False, b"middle segment")
        self.assertEqual(middle.hex(), VEC_MIDDLE_BLOCK)
        self.assertEqual(str(CID.of(middle)), VEC_MIDDLE_CID)
        self.assertEqual(cipher.open_segment(KEY, 258, False, bytes.fromhex(VEC_MIDDLE_BLOCK)), b"middle segment")

    def test_metadata_vector(self) -> None:
        meta = Metadata("hello.txt", "text/plain", 9, VEC_CREATED)
        self.assertEqual(meta.encode().hex(), VEC_META)
        self.assertEqual(cipher.seal_metadata(KEY, meta.encode()).hex(), VEC_SEALED_META)
        self.assertEqual(cipher.open_metadata(KEY, bytes.fromhex(VEC_SEALED_META)), bytes.fromhex(VEC_META))

    @FAST
    @given(keys, st.integers(0, U64), st.booleans(), st.binary(max_size=300))
    def test_layout_matches_spec(self, key: bytes, index: int, last: bool, plaintext: bytes) -> None:
        """Recompute a block with AES-GCM directly from the documented nonce and associated data."""
        flag = 1 if last else 0
        nonce = index.to_bytes(8, "big") + bytes([flag]) + bytes(3)
        ad = b"cas/segment/v1" + index.to_bytes(8, "big") + bytes([flag])
        block = cipher.seal_segment(key, index, last, plaintext)
        self.assertEqual(block, AESGCM(key).encrypt(nonce, plaintext, ad))
        self.assertEqual(len(block), len(plaintext) + cipher.TAG_SIZE)
        self.assertEqual(cipher.open_segment(key, index, last, block), plaintext)

    @FAST
    @given(keys, st.binary(max_size=300))
    def test_metadata_layout_matches_spec(self, key: bytes, plaintext: bytes) -> None:
        sealed = cipher.seal_metadata(key, plaintext)
        self.assertEqual(sealed, AESGCM(key).encrypt(bytes(8) + b"\x02" + bytes(3), plaintext, b"cas/metadata/v1"))
        self.assertEqual(cipher.open_metadata(key, sealed), plaintext)

    @FAST
    @given(keys, st.integers(0, 1000), st.booleans(), st.binary(max_size=100), st.data())
    def test_bit_flip_detected(self, key: bytes, index: int, last: bool, plaintext: bytes, draw) -> None:
        block = bytearray(cipher.seal_segment(key, index, last, plaintext))
        pos = draw.draw(st.integers(0, len(block) - 1))
        block[pos] ^= 1 << draw.draw(st.integers(0, 7))
        e = self.assertRaises(TamperedData, cipher.open_segment, key, index, last, bytes(block))
        self.assertIn(f"segment {index}", str(e))

    def _three(self) -> list[bytes]:
        return [
            cipher.seal_segment(KEY, 0, False, b"first segment!"),
            cipher.seal_segment(KEY, 1, False, b"second segment"),
            cipher.seal_segment(KEY, 2, True, b"last"),
        ]

    def test_blocks_open_in_place(self) -> None:
        b = self._three()
        self.assertEqual(cipher.open_segment(KEY, 0, False, b[0]), b"first segment!")
        self.assertEqual(cipher.open_segment(KEY, 1, False, b[1]), b"second segment")
        self.assertEqual(cipher.open_segment(KEY, 2, True, b[2]), b"last")

    def test_swapped_blocks(self) -> None:
        b = self._three()
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 0, False, b[1])
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 1, False, b[0])
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 3, False, b[2])

    def test_middle_as_last(self) -> None:
        b = self._three()
        # Truncation: the file loses its last block, so the reader opens block 1 as the last one.
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 1, True, b[1])
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 0, True, b[0])

    def test_last_as_middle(self) -> None:
        b = self._three()
        # Extension: something is appended, so the real last block is opened as a middle one.
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 2, False, b[2])

    def test_wrong_key(self) -> None:
        b = self._three()
        other = bytes(32)
        self.assertRaises(TamperedData, cipher.open_segment, other, 0, False, b[0])
        self.assertRaises(TamperedData, cipher.open_segment, other, 2, True, b[2])
        self.assertRaises(TamperedData, cipher.open_metadata, other, bytes.fromhex(VEC_SEALED_META))

    def test_truncated_or_extended_block(self) -> None:
        b = self._three()[2]
        for bad in (b[:-1], b[1:], b + b"\x00", b[:16], b[:15], b""):
            with self.subTest(len(bad)):
                self.assertRaises(TamperedData, cipher.open_segment, KEY, 2, True, bad)

    def test_empty_segment(self) -> None:
        block = cipher.seal_segment(KEY, 0, True, b"")
        self.assertEqual(len(block), cipher.TAG_SIZE)
        self.assertEqual(cipher.open_segment(KEY, 0, True, block), b"")
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 0, False, block)

    def test_domains_are_separate(self) -> None:
        # A metadata blob is never accepted as a segment and vice versa, even at index 0.
        sealed = cipher.seal_metadata(KEY, b"meta")
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 0, True, sealed)
        self.assertRaises(TamperedData, cipher.open_segment, KEY, 0, False, sealed)
        for last in (True, False):
            block = cipher.seal_segment(KEY, 0, last, b"meta")
            self.assertRaises(TamperedData, cipher.open_metadata, KEY, block)

    @FAST
    @given(st.binary(max_size=100), st.data())
    def test_metadata_tamper(self, plaintext: bytes, draw) -> None:
        sealed = bytearray(cipher.seal_metadata(KEY, plaintext))
        pos = draw.draw(st.integers(0, len(sealed) - 1))
        sealed[pos] ^= 1 << draw.draw(st.integers(0, 7))
        self.assertRaises(TamperedData, cipher.open_metadata, KEY, bytes(sealed))
        self.assertRaises(TamperedData, cipher.open_metadata, KEY, bytes(sealed[:-1]))

    def test_new_file_key(self) -> None:
        a, b = cipher.new_file_key(), cipher.new_file_key()
        self.assertEqual(len(a), 32)
        self.assertNotEqual(a, b)


# ===========================================================================================================
class MetadataTests(SynchronousTestCase):
    @FAST
    @given(names, st.text(max_size=30), u64, u64)
    def test_round_trip(self, name: str, ctype: str, size: int, created: int) -> None:
        m = Metadata(name, ctype, size, created)
        raw = m.encode()
        self.assertEqual(Metadata.decode(raw), m)
        self.assertEqual(cbor2.loads(raw), {"name": name, "type": ctype, "size": size, "created": created})

    def test_limits(self) -> None:
        self.assertEqual(Metadata.decode(enc(meta_obj(name="\u00e9" * MAX_NAME_LEN))).name, "\u00e9" * MAX_NAME_LEN)
        self.assertEqual(Metadata.decode(enc(meta_obj(type="x" * MAX_TYPE_LEN))).content_type, "x" * MAX_TYPE_LEN)
        self.assertEqual(Metadata.decode(enc(meta_obj(size=U64, created=U64))).size, U64)
        self.assertRaises(MalformedManifest, Metadata.decode, enc(meta_obj(name="x" * (MAX_NAME_LEN + 1))))
        self.assertRaises(MalformedManifest, Metadata.decode, enc(meta_obj(type="x" * (MAX_TYPE_LEN + 1))))

    def test_strict(self) -> None:
        good = enc(meta_obj())
        self.assertEqual(Metadata.decode(good), Metadata("a.txt", "text/plain", 5, 1))
        extra = meta_obj(x=1)
        missing = meta_obj()
        del missing["created"]
        cases = {
            "extra field": enc(extra),
            "missing field": enc(missing),
            "not a map": enc(["a.txt", "text/plain", 5, 1]),
            "name bytes": enc(meta_obj(name=b"a.txt")),
            "name null": enc(meta_obj(name=None)),
            "type int": enc(meta_obj(type=1)),
            "size negative": enc(meta_obj(size=-1)),
            "size bool": enc(meta_obj(size=True)),
            "size float": enc(meta_obj(size=5.0)),
            "size bignum": enc(meta_obj(size=U64 + 1)),
            "size text": enc(meta_obj(size="5")),
            "created negative": enc(meta_obj(created=-1)),
            "unsorted keys": cbor2.dumps(dict(reversed(list(meta_obj().items())))),
            "long int": good.replace(b"dsize\x05", b"dsize\x18\x05"),
            "trailing byte": good + b"\x00",
            "empty": b"",
            "garbage": b"\xff\xff",
        }
        for what, raw in cases.items():
            with self.subTest(what):
                self.assertNotEqual(raw, good)
                self.assertRaises(MalformedManifest, Metadata.decode, raw)

    @FAST
    @given(st.binary(max_size=200))
    def test_garbage(self, raw: bytes) -> None:
        try:
            m = Metadata.decode(raw)
        except MalformedManifest:
            return
        self.assertEqual(m.encode(), raw)

    @FAST
    @given(st.sampled_from(["name", "type", "size", "created", "extra"]), cbor_values)
    def test_one_field_replaced(self, field: str, value: object) -> None:
        raw = enc(meta_obj(**{field: value}))
        try:
            m = Metadata.decode(raw)
        except MalformedManifest:
            return
        self.assertEqual(m.encode(), raw)


# ===========================================================================================================
class ManifestCodecTests(SynchronousTestCase):
    @FAST
    @given(roots())
    def test_root_round_trip(self, root: Root) -> None:
        raw = root.encode()
        self.assertEqual(decode_root(raw), root)
        self.assertEqual(decode_root(raw).encode(), raw)
        self.assertRaises(MalformedManifest, decode_node, raw)

    @FAST
    @given(nodes_())
    def test_node_round_trip(self, node: Node) -> None:
        raw = node.encode()
        self.assertEqual(decode_node(raw), node)
        self.assertEqual(decode_node(raw).encode(), raw)
        self.assertEqual(node.blocks, sum(l.count for l in node.links) if node.depth else len(node.links))
        self.assertRaises(MalformedManifest, decode_root, raw)

    def test_canonical_key_order(self) -> None:
        raw = enc(root_obj())
        self.assertEqual(list(cbor2.loads(raw)), ["v", "meta", "salt", "type", "depth", "links", "blocks", "segment_size"])
        self.assertEqual(decode_root(raw).encode(), raw)
        nraw = Node(1, (Link(cid_n(1), 3),)).encode()
        self.assertEqual(list(cbor2.loads(nraw)), ["v", "type", "depth", "links"])

    def test_valid_baselines(self) -> None:
        """The objects the strictness tests start from are themselves valid."""
        root = decode_root(enc(root_obj()))
        self.assertEqual(root, Root(100, 2, 0, (Link(cid_n(1), 116), Link(cid_n(2), 16)), bytes(40), SALT))
        self.assertEqual(VERSION, 2)
        self.assertEqual(SALT_SIZE, 16)
        self.assertEqual(decode_root(enc(root_obj(salt=bytes(16)))).salt, bytes(16))
        self.assertEqual(decode_root(enc(root_obj(salt=b"\xff" * 16))).salt, b"\xff" * 16)
        node = decode_node(enc(node_obj()))
        self.assertEqual(node, Node(1, (Link(cid_n(1), 5), Link(cid_n(2), 1))))
        self.assertEqual(node.blocks, 6)
        self.assertEqual(decode_root(enc(root_obj(meta=bytes(16)))).sealed_meta, bytes(16))
        self.assertEqual(len(decode_root(enc(root_obj(meta=bytes(MAX_META_SIZE)))).sealed_meta), MAX_META_SIZE)
        self.assertEqual(decode_root(enc(root_obj(segment_size=cipher.SEGMENT_SIZE))).segment_size, cipher.SEGMENT_SIZE)
        self.assertEqual(decode_node(enc(node_obj(depth=MAX_DEPTH))).depth, MAX_DEPTH)
        deep = root_obj(depth=MAX_DEPTH, blocks=6, links=node_obj()["links"])
        self.assertEqual(decode_root(enc(deep)).depth, MAX_DEPTH)

    def test_root_strict(self) -> None:
        cid1 = cid_n(1).to_bytes()
        cases: dict[str, dict] = {
            "version 1": root_obj(v=1),
            "version 3": root_obj(v=3),
            "version 0": root_obj(v=0),
            "version text": root_obj(v="2"),
            "version bool": root_obj(v=True),
            "version float": root_obj(v=2.0),
            "type node": root_obj(type="node"),
            "type missing": {k: v for k, v in root_obj().items() if k != "type"},
            "extra field": root_obj(extra=0),
            "segment_size 0": root_obj(segment_size=0),
            "segment_size too big": root_obj(segment_size=cipher.SEGMENT_SIZE + 1),
            "segment_size text": root_obj(segment_size="100"),
            "segment_size float": root_obj(segment_size=100.0),
            "blocks negative": root_obj(blocks=-2),
            "blocks bool": root_obj(blocks=True, links=[[cid1, 16]]),
            "blocks mismatch": root_obj(blocks=3),
            "blocks mismatch depth 1": root_obj(depth=1, blocks=133, links=[[cid1, 116], [cid1, 16]]),
            "depth too big": root_obj(depth=MAX_DEPTH + 1, blocks=132),
            "depth negative": root_obj(depth=-1),
            "depth bool": root_obj(depth=False),
            "links empty": root_obj(links=[], blocks=0),
            "links not a list": root_obj(links={"a": 1}),
            "link not a list": root_obj(links=[cid1], blocks=1),
            "link too long": root_obj(links=[[cid1, 16, 0]], blocks=1),
            "link too short": root_obj(links=[[cid1]], blocks=1),
            "link id text": root_obj(links=[[str(cid_n(1)), 16]], blocks=1),
            "link id sha256": root_obj(links=[[bytes([1, 0x55, 0x12, 0x20]) + bytes(32), 16]], blocks=1),
            "link id short": root_obj(links=[[cid1[:-1], 16]], blocks=1),
            "data block too big": root_obj(links=[[cid1, 117]], blocks=1),
            "data block smaller than tag": root_obj(links=[[cid1, 15]], blocks=1),
            "data size negative": root_obj(links=[[cid1, -1]], blocks=1),
            "data size float": root_obj(links=[[cid1, 16.0]], blocks=1),
            "node link with no blocks": root_obj(depth=1, blocks=0, links=[[cid1, 0]]),
            "meta text": root_obj(meta="x" * 40),
            "meta too short": root_obj(meta=bytes(15)),
            "meta too long": root_obj(meta=bytes(MAX_META_SIZE + 1)),
            "meta missing": {k: v for k, v in root_obj().items() if k != "meta"},
            "salt missing": {k: v for k, v in root_obj().items() if k != "salt"},
            "salt 15 bytes": root_obj(salt=SALT[:15]),
            "salt 17 bytes": root_obj(salt=SALT + b"\x10"),
            "salt empty": root_obj(salt=b""),
            "salt text": root_obj(salt="0123456789abcdef"),
            "salt int": root_obj(salt=0),
            "salt null": root_obj(salt=None),
            "salt list": root_obj(salt=list(SALT)),
        }
        for field in root_obj():
            cases[f"{field} missing"] = {k: v for k, v in root_obj().items() if k != field}
        for what, obj in cases.items():
            with self.subTest(what):
                e = self.assertRaises(MalformedManifest, decode_root, enc(obj))
                self.assertTrue(str(e))

    def test_salt_checked(self) -> None:
        cases = {
            "15 bytes": SALT[:15],
            "17 bytes": SALT + b"\x10",
            "empty": b"",
            "text": "0123456789abcdef",
            "int": 0,
            "null": None,
            "list of 16 ints": list(SALT),
        }
        for what, salt in cases.items():
            with self.subTest(what):
                e = self.assertRaises(MalformedManifest, decode_root, enc(root_obj(salt=salt)))
                self.assertIn("root manifest salt must be 16 bytes", str(e))
        missing = {k: v for k, v in root_obj().items() if k != "salt"}
        e = self.assertRaises(MalformedManifest, decode_root, enc(missing))
        self.assertIn("unexpected fields", str(e))

    @FAST
    @given(st.binary(max_size=40))
    def test_salt_length(self, salt: bytes) -> None:
        raw = enc(root_obj(salt=salt))
        if len(salt) == SALT_SIZE:
            root = decode_root(raw)
            self.assertEqual(root.salt, salt)
            self.assertEqual(root.encode(), raw)
        else:
            self.assertRaises(MalformedManifest, decode_root, raw)

    @FAST
    @given(salts, salts)
    def test_salt_names_the_file(self, a: bytes, b: bytes) -> None:
        """Same blocks, metadata and segment size: the root id differs exactly when the salt does."""
        ra = decode_root(enc(root_obj(salt=a)))
        rb = decode_root(enc(root_obj(salt=b)))
        self.assertEqual(CID.of(ra.encode()) == CID.of(rb.encode()), a == b)

    def test_version_1_refused(self) -> None:
        """A version 1 root (7 keys, no salt) or node is refused, and so is a v1 root given a salt."""
        v1_root = {k: v for k, v in root_obj(v=1).items() if k != "salt"}
        for obj in (v1_root, root_obj(v=1)):
            e = self.assertRaises(MalformedManifest, decode_root, enc(obj))
            self.assertIn("unsupported manifest version 1", str(e))
        e = self.assertRaises(MalformedManifest, decode_node, enc(node_obj(v=1)))
        self.assertIn("unsupported manifest version 1", str(e))

    def test_node_strict(self) -> None:
        cid1 = cid_n(1).to_bytes()
        cases: dict[str, dict] = {
            "version 1": node_obj(v=1),
            "version 3": node_obj(v=3),
            "version bool": node_obj(v=True),
            "version float": node_obj(v=2.0),
            "type root": node_obj(type="root"),
            "extra field": node_obj(blocks=6),
            "depth too big": node_obj(depth=MAX_DEPTH + 1),
            "depth text": node_obj(depth="1"),
            "links empty": node_obj(links=[]),
            "too many links": node_obj(links=[[cid1, 1]] * (MAX_LINKS + 1)),
            "zero count": node_obj(links=[[cid1, 0]]),
            "count too big": node_obj(links=[[cid1, U64 + 1]]),
            "data block too big": node_obj(depth=0, links=[[cid1, cipher.SEGMENT_SIZE + cipher.TAG_SIZE + 1]]),
            "data block too small": node_obj(depth=0, links=[[cid1, 15]]),
        }
        for field in node_obj():
            cases[f"{field} missing"] = {k: v for k, v in node_obj().items() if k != field}
        for what, obj in cases.items():
            with self.subTest(what):
                self.assertRaises(MalformedManifest, decode_node, enc(obj))
        # The limits themselves are accepted.
        self.assertEqual(len(decode_node(enc(node_obj(links=[[cid1, 1]] * MAX_LINKS))).links), MAX_LINKS)
        self.assertEqual(decode_node(enc(node_obj(links=[[cid1, U64]]))).blocks, U64)
        top = cipher.SEGMENT_SIZE + cipher.TAG_SIZE
        self.assertEqual(decode_node(enc(node_obj(depth=0, links=[[cid1, top]]))).blocks, 1)
        # A node's data blocks are checked against the file's segment size when the reader knows it.
        self.assertEqual(decode_node(enc(node_obj(depth=0, links=[[cid1, 116]])), 100).links[0].count, 116)
        self.assertRaises(MalformedManifest, decode_node, enc(node_obj(depth=0, links=[[cid1, 117]])), 100)

    def test_too_many_root_links(self) -> None:
        links = [[cid_n(1).to_bytes(), 16]] * (MAX_LINKS + 1)
        self.assertRaises(MalformedManifest, decode_root, enc(root_obj(links=links, blocks=len(links))))
        links = links[:-1]
        self.assertEqual(decode_root(enc(root_obj(links=links, blocks=len(links)))).blocks, MAX_LINKS)

    def test_non_canonical(self) -> None:
        good = enc(root_obj())
        decode_root(good)
        self.assertEqual(good[:4], b"\xa8\x61v\x02")  # map(8), "v": 2 -- the edits below rely on it
        self.assertIn(b"dsaltP" + SALT + b"dtype", good)  # "salt": bytes(16), then "type"
        reordered = cbor2.dumps(dict(reversed(list(root_obj().items()))))
        dup_key = b"\xa9\x61v\x02" + good[1:]
        cases = {
            "unsorted keys": reordered,
            "long-form int": good.replace(b"edepth\x00", b"edepth\x18\x00"),
            "long-form int 2": good.replace(b"edepth\x00", b"edepth\x19\x00\x00"),
            "long-form map length": b"\xb8\x08" + good[1:],
            "indefinite map": b"\xbf" + good[1:] + b"\xff",
            "indefinite links": good.replace(b"elinks\x82", b"elinks\x9f").replace(
                b"\x10fblocks", b"\x10\xfffblocks"),
            "bignum-tagged int": good.replace(b"edepth\x00", b"edepth\xc2\x40"),
            "duplicate key": dup_key,
            "trailing byte": good + b"\x00",
            "trailing item": good + good,
            "long-form salt length": good.replace(b"dsaltP", b"dsalt\x58\x10"),
            "text key as bytes": good.replace(b"\x61v\x02", b"\x41v\x02", 1),
            "truncated": good[:-1],
            "indefinite-length bytes": good.replace(b"dmetaX(", b"dmeta\x5f\x58\x28").replace(
                b"dsalt", b"\xffdsalt", 1),
            "indefinite-length salt": good.replace(b"dsaltP", b"dsalt\x5f\x50").replace(
                b"dtype", b"\xffdtype", 1),
        }
        for what, raw in cases.items():
            with self.subTest(what):
                self.assertNotEqual(raw, good)
                if what not in ("text key as bytes", "truncated"):
                    # A lax decoder sees the very same manifest: only the strict rules tell them apart.
                    self.assertEqual(cbor2.loads(raw), cbor2.loads(good))
                self.assertRaises(MalformedManifest, decode_root, raw)

    def test_oversized(self) -> None:
        good = enc(root_obj())
        e = self.assertRaises(MalformedManifest, decode_root, good + bytes(MAX_MANIFEST_SIZE))
        self.assertIn("too large", str(e))
        e = self.assertRaises(MalformedManifest, decode_node, enc(node_obj()) + bytes(MAX_MANIFEST_SIZE))
        self.assertIn("too large", str(e))

    @FAST
    @given(st.binary(max_size=300))
    def test_garbage(self, raw: bytes) -> None:
        for decode in (decode_root, decode_node):
            try:
                m = decode(raw)
            except MalformedManifest:
                continue
            self.assertEqual(m.encode(), raw)

    @FAST
    @given(st.sampled_from(["v", "type", "segment_size", "blocks", "depth", "links", "meta", "salt", "extra"]), cbor_values)
    def test_root_field_replaced(self, field: str, value: object) -> None:
        """Any value in any field: a clean MalformedManifest, or a manifest that re-encodes to the same bytes."""
        raw = enc(root_obj(**{field: value}))
        try:
            root = decode_root(raw)
        except MalformedManifest:
            return
        self.assertEqual(root.encode(), raw)

    @FAST
    @given(st.sampled_from(["v", "type", "depth", "links", "extra"]), cbor_values)
    def test_node_field_replaced(self, field: str, value: object) -> None:
        raw = enc(node_obj(**{field: value}))
        try:
            node = decode_node(raw)
        except MalformedManifest:
            return
        self.assertEqual(node.encode(), raw)

    @FAST
    @given(st.integers(0, 1), st.integers(0, 1), cbor_values)
    def test_link_item_replaced(self, which: int, part: int, value: object) -> None:
        obj = root_obj()
        obj["links"][which][part] = value
        raw = enc(obj)
        try:
            root = decode_root(raw)
        except MalformedManifest:
            return
        self.assertEqual(root.encode(), raw)

    @FAST
    @given(st.data())
    def test_mutated_vector(self, draw) -> None:
        raw = bytearray(bytes.fromhex(VEC_ROOT))
        for _ in range(draw.draw(st.integers(1, 3))):
            op = draw.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
            pos = draw.draw(st.integers(0, len(raw) - 1))
            if op == "flip":
                raw[pos] ^= 1 << draw.draw(st.integers(0, 7))
            elif op == "set":
                raw[pos] = draw.draw(st.integers(0, 255))
            elif op == "insert":
                raw.insert(pos, draw.draw(st.integers(0, 255)))
            elif len(raw) > 1:
                del raw[pos]
        raw = bytes(raw)
        try:
            root = decode_root(raw)
        except MalformedManifest:
            return
        self.assertEqual(root.encode(), raw)

    def test_max_size_bounds(self) -> None:
        """FANOUT links of the largest encoding stay under MAX_MANIFEST_SIZE, in nodes and roots."""
        self.assertEqual(manifest.FANOUT, 20_000)
        self.assertEqual(MAX_LINKS, 20_000)
        full = tuple(Link(cid_n(i), U64) for i in range(MAX_LINKS))
        for depth in (1, MAX_DEPTH):
            raw = Node(depth, full).encode()
            self.assertLessEqual(len(raw), MAX_MANIFEST_SIZE)
            self.assertEqual(decode_node(raw).links, full)
        data = tuple(Link(cid_n(i), cipher.SEGMENT_SIZE + cipher.TAG_SIZE) for i in range(MAX_LINKS))
        root = Root(cipher.SEGMENT_SIZE, MAX_LINKS, 0, data, bytes(MAX_META_SIZE), SALT)
        raw = root.encode()
        self.assertLessEqual(len(raw), MAX_MANIFEST_SIZE)
        self.assertEqual(decode_root(raw), root)
        # A depth-1 root with the largest per-link counts (the sum must still fit in 64 bits).
        big = tuple(Link(cid_n(i), U64 // MAX_LINKS) for i in range(MAX_LINKS))
        root = Root(cipher.SEGMENT_SIZE, (U64 // MAX_LINKS) * MAX_LINKS, 1, big, bytes(MAX_META_SIZE), SALT)
        raw = root.encode()
        self.assertLessEqual(len(raw), MAX_MANIFEST_SIZE)
        self.assertEqual(decode_root(raw), root)

    def test_blocks_for_size(self) -> None:
        seg = cipher.SEGMENT_SIZE
        self.assertEqual(manifest.blocks_for_size(0, seg), 1)
        self.assertEqual(manifest.blocks_for_size(1, seg), 1)
        self.assertEqual(manifest.blocks_for_size(seg, seg), 1)
        self.assertEqual(manifest.blocks_for_size(seg + 1, seg), 2)
        self.assertEqual(manifest.blocks_for_size(2**60 + 1, seg), 2**40 + 1)
        self.assertEqual(manifest.blocks_for_size(U64, 1), U64)
        self.assertEqual(manifest.blocks_for_size(U64, seg), 2**44)

    @FAST
    @given(u64, st.integers(1, cipher.SEGMENT_SIZE))
    def test_blocks_for_size_exact(self, size: int, seg: int) -> None:
        n = manifest.blocks_for_size(size, seg)
        self.assertEqual(n, max(1, (size + seg - 1) // seg))
        self.assertGreaterEqual(n * seg, size)
        if size:
            self.assertLess((n - 1) * seg, size)


# ===========================================================================================================
def walk(test: SynchronousTestCase, root: Root, nodes: dict, start: int = 0, stop: int | None = None,
         loads: list | None = None) -> list[tuple[int, Link]]:
    """Run ``data_links`` to completion without a reactor."""
    d = start_walk(root, nodes, start, stop, loads)
    return test.successResultOf(d)


def start_walk(root: Root, nodes: dict, start: int = 0, stop: int | None = None, loads: list | None = None):
    def load(cid: CID):
        if loads is not None:
            loads.append(cid)
        return defer.succeed(nodes[cid])

    async def collect() -> list:
        return [item async for item in data_links(root, load, start, stop)]

    return defer.ensureDeferred(collect())


def min_depth(fanout: int, n: int) -> int:
    d = 0
    while fanout ** (d + 1) < n:
        d += 1
    return d


class BuilderTests(SynchronousTestCase):
    def test_builder_tree_shapes(self) -> None:
        for fanout in (2, 3, 5):
            for n in range(1, min(200, fanout ** (MAX_DEPTH + 1)) + 1):
                links = data_links_for(n)
                root, _, _, nodes, order = build(fanout, links)
                with self.subTest(fanout=fanout, n=n):
                    self.assertEqual(root.blocks, n)
                    self.assertEqual(root.depth, min_depth(fanout, n))
                    self.assertLessEqual(len(root.links), fanout)
                    self.assertGreaterEqual(len(root.links), 2 if n > 1 else 1)
                    for node in nodes.values():
                        self.assertLessEqual(len(node.links), fanout)
                        self.assertLess(node.depth, root.depth)
                    # Children are emitted before the nodes that name them.
                    seen = set()
                    for cid in order:
                        node = nodes[cid]
                        if node.depth:
                            for l in node.links:
                                self.assertIn(l.cid, seen)
                        seen.add(cid)
                    if root.depth:
                        self.assertEqual({l.cid for l in root.links} - seen, set())
                    loads: list = []
                    self.assertEqual(walk(self, root, nodes, loads=loads), list(enumerate(links)))
                    # A full walk loads every node exactly once, and only nodes.
                    self.assertEqual(sorted(c.digest for c in loads), sorted(c.digest for c in nodes))

    def test_builder_is_deterministic(self) -> None:
        links = data_links_for(40)
        a = build(3, links)
        b = build(3, links)
        self.assertEqual(a[1], b[1])
        self.assertNotEqual(build(3, links[:-1])[1], a[1])
        self.assertNotEqual(build(5, links)[1], a[1])
        # The salt is part of the root: the same blocks under another salt are another file.
        other = build(3, links, salt=bytes(SALT_SIZE))
        self.assertEqual(other[0].salt, bytes(SALT_SIZE))
        self.assertNotEqual(other[1], a[1])
        self.assertEqual(other[3], a[3])  # the nodes below the root do not carry it

    def test_builder_ranges_exhaustive(self) -> None:
        for fanout, n in ((2, 9), (3, 10), (5, 26), (2, 1)):
            links = data_links_for(n)
            root, _, _, nodes, _ = build(fanout, links)
            everything = list(enumerate(links))
            for start in range(n + 2):
                for stop in range(n + 3):
                    with self.subTest(fanout=fanout, n=n, start=start, stop=stop):
                        self.assertEqual(walk(self, root, nodes, start, stop), everything[start:stop])
            self.assertEqual(walk(self, root, nodes, 0, None), everything)
            self.assertEqual(walk(self, root, nodes, n - 1, None), everything[-1:])

    @FAST
    @given(st.sampled_from([2, 3, 5]), st.integers(1, 200), st.data())
    def test_builder_ranges(self, fanout: int, n: int, draw) -> None:
        n = min(n, fanout ** (MAX_DEPTH + 1))  # fanout 2 reaches MAX_DEPTH at 128 blocks
        links = data_links_for(n)
        root, _, _, nodes, _ = build(fanout, links)
        start = draw.draw(st.integers(0, n))
        stop = draw.draw(st.integers(start, n + 1))
        loads: list = []
        got = walk(self, root, nodes, start, stop, loads)
        self.assertEqual(got, list(enumerate(links))[start:stop])
        if stop == start + 1 and start < n:
            # One block: only the path from the root to it is loaded.
            self.assertEqual(len(loads), root.depth)

    def test_counts_at_every_level(self) -> None:
        sizes = [16 + (i * 7) % 85 for i in range(60)]
        links = [Link(cid_n(i + 1), s) for i, s in enumerate(sizes)]
        root, _, _, nodes, _ = build(3, links)
        self.assertEqual(root.depth, 3)
        for node in nodes.values():
            if node.depth:
                for l in node.links:
                    self.assertEqual(l.count, nodes[l.cid].blocks)
        self.assertEqual(sum(l.count for l in root.links), 60)
        self.assertEqual([l.count for _, l in walk(self, root, nodes)], sizes)

    def test_builder_errors(self) -> None:
        self.assertRaises(ValueError, ManifestBuilder, 1)
        self.assertRaises(ValueError, ManifestBuilder, MAX_LINKS + 1)
        self.assertRaises(ValueError, ManifestBuilder(2).finish, 100, bytes(16), SALT)

    def test_builder_depth_limit(self) -> None:
        # fanout 2 and MAX_DEPTH 6: a root of depth 6 covers at most 2 ** 7 blocks.
        most = 2 ** (MAX_DEPTH + 1)
        root, _, _, nodes, _ = build(2, data_links_for(most))
        self.assertEqual((root.depth, root.blocks), (MAX_DEPTH, most))
        self.assertEqual(len(walk(self, root, nodes)), most)
        # One more block does not fit. The builder flushes lazily, so it may notice in add() or in finish().
        for extra in (1, most + 1):
            b = ManifestBuilder(2)

            def fill() -> None:
                for i in range(most + extra):
                    b.add(Link(cid_n(i), 16))
                b.finish(100, bytes(16), SALT)

            self.assertRaises(ValueError, fill)

    def test_full_fanout_node_fits(self) -> None:
        """One full level-0 node of 20,000 maximal data links stays under MAX_MANIFEST_SIZE."""
        b = ManifestBuilder()
        top = cipher.SEGMENT_SIZE + cipher.TAG_SIZE
        for i in range(manifest.FANOUT):
            self.assertEqual(b.add(Link(cid_n(i), top)), [])
        out = b.add(Link(cid_n(manifest.FANOUT), top))
        self.assertEqual(len(out), 1)
        cid, raw = out[0]
        self.assertLessEqual(len(raw), MAX_MANIFEST_SIZE)
        node = decode_node(raw, cipher.SEGMENT_SIZE)
        self.assertEqual((node.depth, len(node.links), node.blocks), (0, manifest.FANOUT, manifest.FANOUT))
        rest, _, root_raw = b.finish(cipher.SEGMENT_SIZE, bytes(MAX_META_SIZE), SALT)
        self.assertEqual(len(rest), 1)
        root = decode_root(root_raw)
        self.assertEqual((root.depth, root.blocks), (1, manifest.FANOUT + 1))
        self.assertEqual(root.links[0], Link(cid, manifest.FANOUT))

    def _tree(self):
        links = data_links_for(9)
        return links, build(2, links)  # depth 3: 9 blocks need 2 ** 4

    def test_walk_wrong_depth(self) -> None:
        links, (root, _, _, nodes, _) = self._tree()
        self.assertEqual(root.depth, 3)
        first = root.links[0].cid  # depth 2, 8 blocks
        bad = dict(nodes)
        bad[first] = Node(1, nodes[first].links)  # right links and count, wrong depth
        self.assertEqual(bad[first].blocks, nodes[first].blocks)
        self.failureResultOf(start_walk(root, bad), MalformedManifest)
        # The last block lies in the other subtree: the bad node is never loaded.
        self.assertEqual(walk(self, root, bad, 8, 9), [(8, links[8])])

    def test_walk_wrong_count(self) -> None:
        links, (root, _, _, nodes, _) = self._tree()
        first = root.links[0].cid
        child = nodes[first].links[0].cid  # depth 1, 4 blocks
        bad = dict(nodes)
        bad[child] = Node(1, nodes[child].links[:1])  # 2 blocks where the parent says 4
        self.failureResultOf(start_walk(root, bad), MalformedManifest)
        self.failureResultOf(start_walk(root, bad, 0, 1), MalformedManifest)
        self.assertEqual(walk(self, root, bad, 4, 9), list(enumerate(links))[4:9])

    def test_walk_parent_claims_too_many(self) -> None:
        leaf = Node(0, (Link(cid_n(1), 16), Link(cid_n(2), 16)))
        nodes = {cid_n(100): leaf}
        ok = Root(100, 2, 1, (Link(cid_n(100), 2),), bytes(16), SALT)
        self.assertEqual(len(walk(self, ok, nodes)), 2)
        for claimed in (1, 3):
            bad = Root(100, claimed, 1, (Link(cid_n(100), claimed),), bytes(16), SALT)
            self.failureResultOf(start_walk(bad, nodes), MalformedManifest)

    def test_walk_load_failure_propagates(self) -> None:
        links, (root, _, _, nodes, _) = self._tree()

        def load(cid: CID):
            return defer.fail(TamperedData("boom"))

        async def collect():
            return [x async for x in data_links(root, load)]

        self.failureResultOf(defer.ensureDeferred(collect()), TamperedData)


# ===========================================================================================================
class RootMetadataTests(SynchronousTestCase):
    def _root(self, size: int, blocks: int, seg: int = 100, key: bytes = KEY) -> Root:
        sealed = cipher.seal_metadata(key, Metadata("f", "t", size, 0).encode())
        return Root(seg, blocks, 1, (Link(cid_n(1), blocks),), sealed, SALT)

    def test_agreement(self) -> None:
        for size, blocks in ((0, 1), (1, 1), (100, 1), (101, 2), (1000, 10), (1001, 11)):
            with self.subTest(size=size):
                self.assertEqual(self._root(size, blocks).metadata(KEY).size, size)
                self.assertRaises(TamperedData, self._root(size, blocks + 1).metadata, KEY)
                if blocks > 1:
                    self.assertRaises(TamperedData, self._root(size, blocks - 1).metadata, KEY)
        self.assertRaises(TamperedData, self._root(0, 2).metadata, KEY)

    @FAST
    @given(u64, st.integers(1, cipher.SEGMENT_SIZE))
    def test_agreement_any_size(self, size: int, seg: int) -> None:
        blocks = max(1, -(-size // seg))
        self.assertEqual(self._root(size, blocks, seg).metadata(KEY).size, size)
        self.assertRaises(TamperedData, self._root(size, blocks + 1, seg).metadata, KEY)
        if blocks > 1:
            self.assertRaises(TamperedData, self._root(size, blocks - 1, seg).metadata, KEY)

    def test_wrong_key_and_tamper(self) -> None:
        root = self._root(5, 1)
        self.assertRaises(TamperedData, root.metadata, bytes(32))
        sealed = bytearray(root.sealed_meta)
        sealed[0] ^= 1
        self.assertRaises(TamperedData, attrs.evolve(root, sealed_meta=bytes(sealed)).metadata, KEY)

    def test_sealed_garbage_is_malformed(self) -> None:
        root = Root(100, 1, 0, (Link(cid_n(1), 16),), cipher.seal_metadata(KEY, b"\xff not cbor"), SALT)
        self.assertRaises(MalformedManifest, root.metadata, KEY)
        root = Root(100, 1, 0, (Link(cid_n(1), 16),), cipher.seal_metadata(KEY, enc(meta_obj(x=1))), SALT)
        self.assertRaises(MalformedManifest, root.metadata, KEY)


# ===========================================================================================================
class CapabilityTests(SynchronousTestCase):
    def test_key_size_is_the_cipher_key_size(self) -> None:
        # capability.py keeps its own copy so that parsing a key does not load cryptography.
        self.assertEqual(capability.KEY_SIZE, cipher.KEY_SIZE)
        self.assertEqual(len(cipher.new_file_key()), capability.KEY_SIZE)

    @FAST
    @given(digests, keys)
    def test_round_trip(self, d: bytes, key: bytes) -> None:
        cap = ReadCap(CID(d), key)
        text = str(cap)
        self.assertEqual(len(text), TOKEN_LEN)
        self.assertEqual(TOKEN_LEN, 120)
        self.assertTrue(text.startswith("cas1"))
        self.assertEqual(set(text[4:]) - set(B32), set())
        parsed = ReadCap.parse(text)
        self.assertEqual(parsed, cap)
        self.assertEqual(parsed.key, key)
        self.assertEqual(parsed.root.digest, d)
        self.assertEqual(parsed.verify_cap, CID(d))

    @FAST
    @given(digests, keys)
    def test_layout_matches_spec(self, d: bytes, key: bytes) -> None:
        payload = bytes([1, 0x55, 0x1E, 0x20]) + d + key
        check = blake3.blake3(b"cas/readcap/v1" + payload).digest()[:4]
        self.assertEqual(str(ReadCap(CID(d), key)), "cas1" + b32(payload + check))

    @FAST
    @given(digests, keys, st.sampled_from(["", " ", "\n", "\r\n", "\t", "  \n"]), st.sampled_from(["", " ", "\n", "\r\n", "\t "]))
    def test_whitespace_tolerated(self, d: bytes, key: bytes, before: str, after: str) -> None:
        cap = ReadCap(CID(d), key)
        self.assertEqual(ReadCap.parse(before + str(cap) + after), cap)

    def test_errors(self) -> None:
        s = VEC_READCAP
        cap = ReadCap.parse(s)
        cases = {
            "empty": ("", "start with 'cas1'"),
            "blank": ("  \n", "start with 'cas1'"),
            "wrong tag": ("cas2" + s[4:], "start with 'cas1'"),
            "upper-case tag": ("CAS1" + s[4:], "start with 'cas1'"),
            "bare CID": (VEC_ROOT_CID, "verify capability"),
            "bare CID with newline": (VEC_ROOT_CID + "\n", "verify capability"),
            "truncated": (s[:-1], "wrong length"),
            "half": (s[:60], "wrong length"),
            "extended": (s + "a", "wrong length"),
            "inner space": (s[:50] + " " + s[51:], "base32"),
            "digit 1": (s[:50] + "1" + s[51:], "base32"),
            "digit 8": (s[:50] + "8" + s[51:], "base32"),
            "digit 0": (s[:50] + "0" + s[51:], "base32"),
            "padding": (s[:-1] + "=", "base32"),
            "non-ascii": (s[:50] + "\u00e9" + s[51:], "base32"),
            "checksum changed": (s[:-3] + ("a" if s[-3] != "a" else "b") + s[-2:], "checksum"),
            "upper case": ("cas1" + s[4:].upper(), "canonical"),
        }
        for what, (text, needle) in cases.items():
            with self.subTest(what):
                e = self.assertRaises(MalformedKey, ReadCap.parse, text)
                self.assertIn(needle, str(e))
                self.assertNotIn(cap.key.hex(), str(e))
        self.assertRaises(MalformedKey, ReadCap.parse, s.encode())
        self.assertRaises(MalformedKey, ReadCap.parse, None)

    def test_every_single_char_change_detected(self) -> None:
        s = VEC_READCAP
        for pos in range(len(s)):
            for ch in B32 + "1":
                if ch == s[pos]:
                    continue
                changed = s[:pos] + ch + s[pos + 1:]
                with self.subTest(pos=pos, ch=ch):
                    self.assertRaises(MalformedKey, ReadCap.parse, changed)

    def test_valid_checksum_bad_cid(self) -> None:
        payload = bytes([1, 0x70, 0x1E, 0x20]) + bytes(32) + KEY
        text = "cas1" + b32(payload + blake3.blake3(b"cas/readcap/v1" + payload).digest()[:4])
        self.assertEqual(len(text), TOKEN_LEN)
        self.assertRaises(MalformedKey, ReadCap.parse, text)

    def test_key_length_checked(self) -> None:
        self.assertRaises(ValueError, ReadCap, CID.of(b""), bytes(31))
        self.assertRaises(ValueError, ReadCap, CID.of(b""), bytes(33))

    @FAST
    @given(digests, keys)
    def test_repr_hides_key(self, d: bytes, key: bytes) -> None:
        cap = ReadCap(CID(d), key)
        text = str(cap)
        for r in (repr(cap), repr([cap]), repr({"cap": cap}), f"{cap!r}"):
            self.assertNotIn(key.hex(), r)
            self.assertNotIn(repr(key), r)
            self.assertNotIn(text, r)
            self.assertIn(f"ReadCap(root={CID(d)}, key=<redacted>)", r)

    @FAST
    @given(st.text(max_size=130))
    def test_parse_arbitrary_text(self, text: str) -> None:
        try:
            cap = ReadCap.parse(text)
        except MalformedKey:
            return
        self.assertEqual(str(cap), text.strip())


# ===========================================================================================================
class ContentVectorTests(SynchronousTestCase):
    """The complete tiny-file vector of docs/format.md, built the way the upload pipeline builds it."""

    def test_tiny_file(self) -> None:
        block = cipher.seal_segment(KEY, 0, True, b"hello cas")
        self.assertEqual(block.hex(), VEC_LAST_BLOCK)
        block_cid = CID.of(block)
        self.assertEqual(str(block_cid), VEC_LAST_CID)
        b = ManifestBuilder()
        self.assertEqual(b.add(Link(block_cid, len(block))), [])
        meta = Metadata("hello.txt", "text/plain", 9, VEC_CREATED)
        self.assertEqual(meta.encode().hex(), VEC_META)
        sealed = cipher.seal_metadata(KEY, meta.encode())
        self.assertEqual(sealed.hex(), VEC_SEALED_META)
        nodes, root_cid, root_raw = b.finish(cipher.SEGMENT_SIZE, sealed, SALT)
        self.assertEqual(nodes, [])
        self.assertEqual(root_raw.hex(), VEC_ROOT)
        self.assertEqual(str(root_cid), VEC_ROOT_CID)
        self.assertEqual(str(ReadCap(root_cid, KEY)), VEC_READCAP)

    def test_read_tiny_file(self) -> None:
        """A reader holding only the key string and the two blocks recovers the file."""
        cap = ReadCap.parse(VEC_READCAP)
        self.assertEqual(cap.key, KEY)
        self.assertEqual(str(cap.verify_cap), VEC_ROOT_CID)
        raw = bytes.fromhex(VEC_ROOT)
        self.assertTrue(cap.root.verify(raw))
        root = decode_root(raw)
        self.assertEqual((root.segment_size, root.blocks, root.depth), (cipher.SEGMENT_SIZE, 1, 0))
        self.assertEqual(root.salt.hex(), "000102030405060708090a0b0c0d0e0f")
        self.assertEqual(root.metadata(cap.key), Metadata("hello.txt", "text/plain", 9, VEC_CREATED))
        [(index, link)] = walk(self, root, {})
        block = bytes.fromhex(VEC_LAST_BLOCK)
        self.assertEqual((index, str(link.cid), link.count), (0, VEC_LAST_CID, len(block)))
        self.assertTrue(link.cid.verify(block))
        self.assertEqual(cipher.open_segment(cap.key, index, index == root.blocks - 1, block), b"hello cas")

    def test_document_shows_vectors(self) -> None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "docs", "format.md")
        if not os.path.exists(path):
            raise SkipTest("docs/format.md is not next to the package (installed copy)")
        with open(path, encoding="utf-8") as f:
            doc = "".join(f.read().split())  # long hex strings may be wrapped in the document
        for value in (EMPTY_BLAKE3, EMPTY_CID, VEC_LAST_BLOCK, VEC_LAST_CID, VEC_MIDDLE_BLOCK, VEC_MIDDLE_CID,
                      VEC_META, VEC_SEALED_META, VEC_ROOT, VEC_ROOT_CID, VEC_READCAP, str(VEC_CREATED)):
            with self.subTest(value[:16]):
                self.assertIn(value, doc)
