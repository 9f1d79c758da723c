"""Block ids: BLAKE3-256 digests written as CIDv1 (raw codec, blake3 multihash, base32 multibase).

Every block, data or manifest, uses the ``raw`` codec (0x55), so each id is a valid IPFS CID:
``b`` + base32-lower-nopad(0x01 0x55 0x1e 0x20 || digest).
"""

from __future__ import annotations

import base64
import hmac

import blake3

from cas.base.errors import MalformedKey

CID_VERSION = 0x01
RAW_CODEC = 0x55
BLAKE3_CODE = 0x1E
DIGEST_SIZE = 32
PREFIX = bytes([CID_VERSION, RAW_CODEC, BLAKE3_CODE, DIGEST_SIZE])
CID_BYTES_LEN = len(PREFIX) + DIGEST_SIZE  # 36
CID_STR_LEN = 1 + 58  # 'b' + ceil(36 * 8 / 5)


def digest(data: bytes) -> bytes:
    """BLAKE3-256 of ``data``; releases the GIL for large buffers."""
    return blake3.blake3(data, max_threads=1).digest()


def b32encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base32")
    pad = "=" * (-len(text) % 8)
    return base64.b32decode(text.upper() + pad, casefold=False)


class CID:
    """A block id; compares and hashes by its digest."""

    __slots__ = ("digest",)

    def __init__(self, digest_: bytes) -> None:
        if len(digest_) != DIGEST_SIZE:
            raise ValueError("digest must be 32 bytes")
        self.digest = bytes(digest_)

    @classmethod
    def of(cls, data: bytes) -> "CID":
        return cls(digest(data))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "CID":
        if len(raw) != CID_BYTES_LEN or raw[:4] != PREFIX:
            raise MalformedKey("not a cas block id (expected CIDv1, raw codec, blake3-256)")
        return cls(raw[4:])

    @classmethod
    def parse(cls, text: str) -> "CID":
        """Parse the string form; raises MalformedKey with a clear message."""
        if not isinstance(text, str) or len(text) != CID_STR_LEN or not text.startswith("b"):
            raise MalformedKey("not a cas block id: expected a 59-character CIDv1 starting with 'b'")
        try:
            raw = b32decode(text[1:])
        except ValueError:
            raise MalformedKey("not a cas block id: invalid base32") from None
        cid = cls.from_bytes(raw)
        if str(cid) != text:
            raise MalformedKey("not a cas block id: non-canonical base32")
        return cid

    def to_bytes(self) -> bytes:
        return PREFIX + self.digest

    def verify(self, data: bytes) -> bool:
        """True when ``data`` hashes to this id (constant-time compare)."""
        return hmac.compare_digest(digest(data), self.digest)

    def __str__(self) -> str:
        return "b" + b32encode(self.to_bytes())

    def __repr__(self) -> str:
        return f"CID({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)
