"""Capabilities: the keys users hold.

A read capability (the key ``cas put`` prints) is one URL-safe token: ``cas1`` followed by base32 of the
root manifest id (36 bytes), the file key (32 bytes) and a 4-byte checksum, so a mistyped or truncated key
is told apart from an unknown one. The root manifest id alone is the verify capability: it lets a holder
check every block of the file without being able to read any of it.
"""

from __future__ import annotations

import hmac

import attrs

from cas.base.cid import CID, CID_BYTES_LEN, b32decode, b32encode, digest
from cas.base.errors import MalformedKey

TAG = "cas1"
CHECKSUM_LEN = 4
# The file key's size (AES-256), the same as cipher.KEY_SIZE (a test checks): not imported from there so that
# parsing a key (the CLI does it) does not load the cryptography library.
KEY_SIZE = 32
PAYLOAD_LEN = CID_BYTES_LEN + KEY_SIZE
TOKEN_LEN = len(TAG) + len(b32encode(bytes(PAYLOAD_LEN + CHECKSUM_LEN)))
_CHECK_DOMAIN = b"cas/readcap/v1"


def _checksum(payload: bytes) -> bytes:
    return digest(_CHECK_DOMAIN + payload)[:CHECKSUM_LEN]


@attrs.frozen(repr=False)
class ReadCap:
    root: CID
    key: bytes = attrs.field(validator=lambda _s, _a, v: len(v) == KEY_SIZE or _bad_key_len())

    @property
    def verify_cap(self) -> CID:
        return self.root

    def __str__(self) -> str:
        payload = self.root.to_bytes() + self.key
        return TAG + b32encode(payload + _checksum(payload))

    def __repr__(self) -> str:  # never put the key in a repr (logs, tracebacks)
        return f"ReadCap(root={self.root}, key=<redacted>)"

    @classmethod
    def parse(cls, text: str) -> "ReadCap":
        """Parse a key as a person may paste it (surrounding whitespace is ignored)."""
        if not isinstance(text, str):
            raise MalformedKey("a cas key must be text")
        text = text.strip()
        if not text.startswith(TAG):
            if text.startswith("b") and len(text) == 59:
                raise MalformedKey("this is a block id (a verify capability), not a key that can read a file")
            raise MalformedKey(f"not a cas key: keys start with '{TAG}'")
        if len(text) != TOKEN_LEN:
            raise MalformedKey(f"cas key has the wrong length ({len(text)} characters, expected {TOKEN_LEN}): truncated or mistyped?")
        try:
            raw = b32decode(text[len(TAG):])
        except ValueError:
            raise MalformedKey("cas key holds characters outside base32 (a-z, 2-7)") from None
        payload, check = raw[:PAYLOAD_LEN], raw[PAYLOAD_LEN:]
        if not hmac.compare_digest(check, _checksum(payload)):
            raise MalformedKey("cas key is mistyped (checksum mismatch)")
        cap = cls(CID.from_bytes(payload[:CID_BYTES_LEN]), payload[CID_BYTES_LEN:])
        if str(cap) != text:
            raise MalformedKey("cas key is not in canonical form")
        return cap


def _bad_key_len() -> bool:
    raise ValueError("file key must be 32 bytes")
