"""The frame codec of the peer protocol: length-prefixed frames with a CBOR header and a raw payload.

A frame on the wire (docs/protocol.md, "Frames"; all integers big-endian)::

    length:u32  type:u8  flags:u8  request_id:u32  header_length:u16  header  payload

``encode`` turns a ``Frame`` into pieces for ``transport.writeSequence`` without copying the payload;
``FrameDecoder`` turns any split of the incoming byte stream back into frames. Blocks of 1 MiB travel in
these frames at hundreds of MiB/s, so the decoder joins buffered pieces once per complete frame (linear in
the bytes received, whatever the piece size) and hands out payloads as views of that buffer, not copies.

The decoder checks everything a peer could get wrong; its ``FrameError`` carries a one-line reason to log
before closing that connection. The header decoder refuses CBOR tags (no datetime, bignum, set or shared
reference decoding on peer input), indefinite lengths, duplicate keys and non-string map keys (no hash
flooding), and deep nesting.
"""

from __future__ import annotations

import io
import struct
from typing import Any, NoReturn

import attrs
import cbor2

MAX_FRAME = (1 << 20) + (64 << 10)  # largest body (bytes after the length prefix): a block plus headroom
FIXED = 8  # type u8, flags u8, request_id u32, header_length u16
MAX_HEADER = 0xFFFF
MIN_BODY = FIXED + 1  # the header is at least the empty map a0
MAX_REQUEST_ID = 0xFFFFFFFF
MAX_HEADER_DEPTH = 16  # nested containers in a header; version 1 needs 3 (addresses in a list in a map)

HELLO, PING, PEERS, PUT_BLOCK, GET_BLOCK, HAS, CANCEL, BYE = 1, 2, 3, 4, 5, 6, 7, 8
TYPE_NAMES: dict[int, str] = {
    HELLO: "HELLO",
    PING: "PING",
    PEERS: "PEERS",
    PUT_BLOCK: "PUT_BLOCK",
    GET_BLOCK: "GET_BLOCK",
    HAS: "HAS",
    CANCEL: "CANCEL",
    BYE: "BYE",
}
ONE_WAY = frozenset({HELLO, CANCEL, BYE})

RESPONSE, ERROR = 0x01, 0x02  # flag bits
_KNOWN_FLAGS = RESPONSE | ERROR

_PREFIX = struct.Struct(">I")
_START = struct.Struct(">IBBIH")  # length prefix and fixed part: what encode writes before the header
_FIXED = struct.Struct(">BBIH")
assert _START.size == 4 + FIXED and _FIXED.size == FIXED


class FrameError(Exception):
    """Malformed input: the message is a one-line reason to log before closing the connection."""


def _payload_repr(payload: bytes | memoryview) -> str:
    # A 1 MiB payload in a log line or a test failure helps nobody: show short ones, count long ones.
    n = memoryview(payload).nbytes
    if n == 0:
        return "b''"
    return f"<{n} bytes: {bytes(payload).hex()}>" if n <= 16 else f"<{n} bytes>"


@attrs.frozen
class Frame:
    """One message or response. Frames compare by content (a memoryview payload equals the same bytes)."""

    type: int
    flags: int = 0
    request_id: int = 0
    header: dict[str, Any] = attrs.field(factory=dict)
    payload: bytes | memoryview = attrs.field(default=b"", repr=_payload_repr)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & RESPONSE)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & ERROR)


# -- encoding -------------------------------------------------------------------------------------------------


def encode_header(header: dict) -> bytes:
    """Canonical CBOR of a header; ValueError for anything our own decoder would refuse.

    Checking with the decoder means a peer never closes a connection over a header we built (a datetime, a
    set or an int key slipped into a header would otherwise be encoded happily and refused on arrival).
    """
    if not isinstance(header, dict):
        raise ValueError(f"a header must be a dict, not {type(header).__name__}")
    try:
        raw = cbor2.dumps(header, canonical=True)
    except Exception as e:  # CBOREncodeError, TypeError, ValueError, RecursionError ...
        raise ValueError(f"header cannot be encoded: {_one_line(e)}") from None
    if len(raw) > MAX_HEADER:
        raise ValueError(f"header of {len(raw)} bytes exceeds the maximum {MAX_HEADER}")
    try:
        _decode_header(raw)
    except FrameError as e:
        raise ValueError(f"a peer would refuse this header: {e}") from None
    return raw


def encode(frame: Frame) -> list[bytes | memoryview]:
    """Pieces for ``transport.writeSequence``: [length prefix + fixed part + CBOR header, payload].

    The payload piece is the caller's object (never copied) and is omitted when empty. Raises ValueError for
    a frame we must never send: unknown type, bad flags, request id out of range or against the one-way
    rules, a header that is not a text-keyed map or is too large, or a body over ``MAX_FRAME``.
    """
    name = TYPE_NAMES.get(frame.type)
    if name is None:
        raise ValueError(f"unknown frame type {frame.type!r}")
    flags, rid = frame.flags, frame.request_id
    if not isinstance(flags, int) or not 0 <= flags <= 0xFF or flags & ~_KNOWN_FLAGS:
        raise ValueError(f"bad flags {flags!r}")
    if flags & ERROR and not flags & RESPONSE:
        raise ValueError("ERROR flag without RESPONSE")
    if not isinstance(rid, int) or not 0 <= rid <= MAX_REQUEST_ID:
        raise ValueError(f"request id {rid!r} out of range")
    problem = _id_problem(frame.type, name, flags, rid)
    if problem:
        raise ValueError(problem)
    header = encode_header(frame.header)
    payload = frame.payload
    if isinstance(payload, memoryview):
        if not payload.c_contiguous:
            raise ValueError("payload memoryview is not contiguous")
        size = payload.nbytes
    elif isinstance(payload, bytes):
        size = len(payload)
    else:
        raise ValueError(f"payload must be bytes or memoryview, not {type(payload).__name__}")
    length = FIXED + len(header) + size
    if length > MAX_FRAME:
        raise ValueError(f"frame length {length} exceeds the maximum {MAX_FRAME}")
    start = _START.pack(length, frame.type, flags, rid, len(header)) + header
    return [start, payload] if size else [start]


def _id_problem(ftype: int, name: str, flags: int, rid: int) -> str | None:
    """The request-id rule a frame breaks, if any (shared by encoder and decoder)."""
    if ftype in ONE_WAY:
        if flags & RESPONSE:
            return f"response to a one-way type {name}"
        if rid != 0:
            return f"one-way {name} with request id {rid}"
    elif rid == 0:
        return f"{name} {'response' if flags & RESPONSE else 'request'} with id 0"
    return None


# -- decoding -------------------------------------------------------------------------------------------------


class _TagRefused(Exception):
    def __init__(self, tag: int) -> None:
        super().__init__(f"CBOR tag {tag} refused")
        self.tag = tag


class _RefuseAllTags(dict):
    """``semantic_decoders`` that refuses every tag, including those cbor2 decodes natively."""

    def __missing__(self, tag: int) -> Any:
        def refuse(*args: object) -> NoReturn:  # the arguments differ between cbor2 versions
            raise _TagRefused(tag)

        return refuse


_NO_TAGS = _RefuseAllTags()
CBOR_NO_TAGS = {"tag_hook": None, "semantic_decoders": _NO_TAGS}  # filled below: decoder options refusing every tag


def _refuse_tag(decoder: object, tag: cbor2.CBORTag) -> NoReturn:
    raise _TagRefused(tag.tag)


CBOR_NO_TAGS["tag_hook"] = _refuse_tag


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text[:200]


def _tag_refused(e: BaseException) -> _TagRefused | None:
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 64:
        if isinstance(cur, _TagRefused):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _decode_header(raw: bytes) -> dict[str, Any]:
    """Exactly one CBOR map with text keys, or FrameError. ``raw`` is at most 64 KiB."""
    fp = io.BytesIO(raw)
    try:
        obj = cbor2.CBORDecoder(
            fp,
            tag_hook=_refuse_tag,
            semantic_decoders=_NO_TAGS,
            max_depth=MAX_HEADER_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        ).decode()
    except Exception as e:  # CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError
        refused = _tag_refused(e)
        if refused is not None:
            raise FrameError(f"header uses CBOR tag {refused.tag}: tags are not allowed") from None
        raise FrameError(f"header is not valid CBOR: {_one_line(e)}") from None
    extra = len(raw) - fp.tell()
    if extra:
        raise FrameError("header has trailing bytes after its CBOR item")
    if not isinstance(obj, dict):
        raise FrameError("header is not a map")
    for key in obj:
        if not isinstance(key, str):
            raise FrameError("header keys must be text")
    return obj


class FrameDecoder:
    """Incremental decoder: feed() any split of the byte stream, get complete frames.

    Pieces are kept in a list and joined once when a frame (or a length prefix) is complete, so a 1 MiB frame
    arriving as 16 KiB TLS records costs one copy, not one per record. Payloads are read-only memoryviews of
    the joined buffer. After a ``FrameError`` the decoder is dead: every later ``feed`` raises too.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not MIN_BODY <= max_frame <= 0xFFFFFFFF:
            raise ValueError(f"max_frame must be between {MIN_BODY} and {0xFFFFFFFF}")
        self._max_frame = max_frame
        self._pieces: list[bytes] = []
        self._buffered = 0  # bytes in _pieces
        self._need = 4  # bytes needed before it is worth joining: a prefix, or prefix and body
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (including its length prefix)."""
        return self._buffered

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (possibly none); FrameError on malformed input.

        On an error, frames decoded earlier in the same call are dropped with it: the connection is closing.
        """
        if self._error is not None:
            raise FrameError(f"decoder stopped after an earlier error: {self._error}")
        if not data:
            return []
        if not isinstance(data, bytes):  # a view of a buffer the caller may reuse: payloads must not alias it
            data = bytes(data)
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered < self._need:
            return []
        buf = b"".join(self._pieces)  # no copy for a single bytes piece
        self._pieces = []
        try:
            frames, pos = self._parse(buf)
        except FrameError as e:
            self._error = str(e)
            self._buffered = 0
            raise
        if pos < len(buf):
            self._pieces.append(buf[pos:] if pos else buf)
        self._buffered = len(buf) - pos
        return frames

    def _parse(self, buf: bytes) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        view = memoryview(buf)
        end = len(buf)
        pos = 0
        while True:
            if end - pos < 4:
                self._need = 4
                break
            (length,) = _PREFIX.unpack_from(buf, pos)
            if length > self._max_frame:
                raise FrameError(f"frame length {length} exceeds the maximum {self._max_frame}")
            if length < MIN_BODY:
                raise FrameError(f"frame length {length} is below the minimum {MIN_BODY}")
            if end - pos - 4 < length:
                self._need = 4 + length
                break
            frames.append(self._frame(buf, view, pos + 4, length))
            pos += 4 + length
        return frames, pos

    def _frame(self, buf: bytes, view: memoryview, start: int, length: int) -> Frame:
        ftype, flags, rid, hlen = _FIXED.unpack_from(buf, start)
        name = TYPE_NAMES.get(ftype)
        if name is None:
            raise FrameError(f"unknown frame type {ftype}")
        if flags & ~_KNOWN_FLAGS:
            raise FrameError(f"reserved flag bits set: 0x{flags & ~_KNOWN_FLAGS:02x}")
        if flags & ERROR and not flags & RESPONSE:
            raise FrameError("ERROR flag without RESPONSE")
        if hlen == 0:
            raise FrameError("header length 0: a header is at least the empty map a0")
        if hlen > length - FIXED:
            raise FrameError(f"header length {hlen} exceeds the frame (room for {length - FIXED})")
        problem = _id_problem(ftype, name, flags, rid)
        if problem:
            raise FrameError(problem)
        hstart = start + FIXED
        pstart, pend = hstart + hlen, start + length
        header = _decode_header(buf[hstart:pstart])
        payload = view[pstart:pend] if pend > pstart else b""
        return Frame(ftype, flags, rid, header, payload)
