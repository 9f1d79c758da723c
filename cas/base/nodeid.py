"""The human form of node ids: base32 with two check characters, in groups of six.

A node id is 32 bytes (BLAKE3-256 of the node key's DER SubjectPublicKeyInfo). People see it as 54
characters in 9 groups of 6 joined by "-"; the id ``bytes(range(32))`` is written::

    aaaqea-yeauda-ocajbi-fqydio-b4ibce-qtcqkr-mfyyde-nbwha5-dypqmy

- characters 1-52: RFC 4648 base32 of the 32 bytes, lower case, no padding;
- character 53 (``linear check``): chosen so that sum(alpha**i * v[i]) over all 54 characters is zero in
  GF(32) (polynomial x^5 + x^2 + 1, alpha = x, v[i] the 5-bit value of character i). A single substituted
  character at position i changes that sum by alpha**i * d with d != 0, and two swapped neighbours change it
  by alpha**i * (1 + alpha) * (a + b) != 0: both are *always* caught;
- character 54 (``hash check``): the first 5 bits of BLAKE3(b"cas/node-id-check/v1" + node id). It catches
  what the linear check cannot see (several errors at once) with probability 31/32: with the linear check
  (and the 4 zero bits of character 52) about 1 in 1,000 multiple errors slips through.

See docs/peers.md for a worked example.
"""

from __future__ import annotations

import blake3

from cas.base.cid import b32decode, b32encode
from cas.base.errors import CasError

NODE_ID_LEN = 32
DATA_CHARS = 52  # ceil(256 / 5)
CHARS = DATA_CHARS + 2
GROUP = 6
FORMATTED_LEN = CHARS + CHARS // GROUP - 1  # 62
CHECK_DOMAIN = b"cas/node-id-check/v1"

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}

# GF(32) with the primitive polynomial x^5 + x^2 + 1: log/exp tables for alpha = x (order 31).
_EXP = [0] * 62
_LOG = [0] * 32
_x = 1
for _i in range(31):
    _EXP[_i] = _EXP[_i + 31] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x20:
        _x ^= 0x25
del _i, _x


class MalformedNodeId(CasError, ValueError):
    """Text that is not a node id; the message says why (wrong length, not base32, a typo)."""

    code = "malformed_node_id"


def _mul_alpha_pow(value: int, power: int) -> int:
    return 0 if value == 0 else _EXP[_LOG[value] + power % 31]


def _syndrome(values: list[int]) -> int:
    """sum(alpha**i * v[i]) in GF(32) (addition is xor)."""
    s = 0
    for i, v in enumerate(values):
        s ^= _mul_alpha_pow(v, i)
    return s


def _hash_check(node_id: bytes) -> int:
    return blake3.blake3(CHECK_DOMAIN + node_id).digest()[0] >> 3


def _check_chars(node_id: bytes, data: str) -> str:
    values = [_VALUE[c] for c in data]
    hash_value = _hash_check(node_id)
    # Solve alpha**52 * linear = syndrome(data) + alpha**53 * hash for the linear check character.
    rest = _syndrome(values) ^ _mul_alpha_pow(hash_value, DATA_CHARS + 1)
    linear = _mul_alpha_pow(rest, 31 - DATA_CHARS % 31)
    return ALPHABET[linear] + ALPHABET[hash_value]


def format_node_id(node_id: bytes) -> str:
    """The 62-character human form: 52 base32 characters and 2 check characters, 9 groups of 6."""
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_LEN:
        raise ValueError("a node id is 32 bytes")
    data = b32encode(node_id)
    text = data + _check_chars(node_id, data)
    return "-".join(text[i : i + GROUP] for i in range(0, CHARS, GROUP))


def short_node_id(node_id: bytes) -> str:
    """The first group (6 characters, 30 bits) of the human form, for compact log lines."""
    return format_node_id(node_id)[:GROUP]


def parse_node_id(text: str) -> bytes:
    """The 32 bytes of a node id typed by a person: any case, with or without the dashes, surrounding
    whitespace ignored. Raises MalformedNodeId with a one-line reason."""
    if not isinstance(text, str):
        raise MalformedNodeId("not a node id: expected text")
    compact = text.strip().replace("-", "").lower()
    if len(compact) != CHARS:
        hint = " (no check characters: copy the whole id)" if len(compact) == DATA_CHARS else ""
        raise MalformedNodeId(
            f"not a node id: expected {CHARS} characters without the dashes, got {len(compact)}{hint}"
        )
    bad = sorted({c for c in compact if c not in _VALUE})
    if bad:
        shown = "".join(bad)[:8]
        raise MalformedNodeId(f"not a node id: {shown!r} not base32 (letters a-z and digits 2-7 only)")
    data = compact[:DATA_CHARS]
    if _syndrome([_VALUE[c] for c in compact]) != 0:
        raise MalformedNodeId("not a node id: check characters do not match: a typo?")
    # The last data character holds 1 bit and 4 zero bits; the linear check catches a single change to
    # them, so reaching here with other bits means several errors at once.
    if _VALUE[data[-1]] & 0x0F:
        raise MalformedNodeId("not a node id: check characters do not match: a typo?")
    node_id = b32decode(data)
    if ALPHABET[_hash_check(node_id)] != compact[-1]:
        raise MalformedNodeId("not a node id: check characters do not match: a typo?")
    return node_id
