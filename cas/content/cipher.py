"""Segment and metadata encryption: AES-256-GCM under a random per-file key.

Every file gets a fresh 256-bit key, so nonces can be derived from positions instead of drawn at random.
The nonce and the associated data both bind the segment index and a last-segment flag: a block moved to
another position, a dropped last block or a middle block presented as the last one fails authentication.
See docs/format.md for the exact layout and test vectors.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cas.base.errors import TamperedData

KEY_SIZE = 32
TAG_SIZE = 16
SEGMENT_SIZE = 1 << 20  # plaintext bytes per segment (the last may be shorter, even empty)
MAX_INDEX = (1 << 64) - 1

FLAG_MIDDLE = 0
FLAG_LAST = 1
FLAG_META = 2

SEGMENT_AD = b"cas/segment/v1"
META_AD = b"cas/metadata/v1"


def new_file_key() -> bytes:
    return os.urandom(KEY_SIZE)


def segment_nonce(index: int, last: bool) -> bytes:
    if not 0 <= index <= MAX_INDEX:
        raise ValueError("segment index out of range")
    return struct.pack(">QB3x", index, FLAG_LAST if last else FLAG_MIDDLE)


def _segment_ad(index: int, last: bool) -> bytes:
    return SEGMENT_AD + struct.pack(">QB", index, FLAG_LAST if last else FLAG_MIDDLE)


def seal_segment(key: bytes, index: int, last: bool, plaintext: bytes) -> bytes:
    """Encrypt one segment; the result (ciphertext || tag) is a block."""
    return AESGCM(key).encrypt(segment_nonce(index, last), plaintext, _segment_ad(index, last))


def open_segment(key: bytes, index: int, last: bool, block: bytes) -> bytes:
    """Decrypt one block at its position; raises TamperedData if anything is off."""
    try:
        return AESGCM(key).decrypt(segment_nonce(index, last), block, _segment_ad(index, last))
    except InvalidTag:
        raise TamperedData(
            f"segment {index} failed authentication (altered, reordered or truncated data, or a wrong key)"
        ) from None


META_NONCE = struct.pack(">QB3x", 0, FLAG_META)


def seal_metadata(key: bytes, plaintext: bytes) -> bytes:
    return AESGCM(key).encrypt(META_NONCE, plaintext, META_AD)


def open_metadata(key: bytes, sealed: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(META_NONCE, sealed, META_AD)
    except InvalidTag:
        raise TamperedData("file metadata failed authentication (wrong key or altered manifest)") from None
