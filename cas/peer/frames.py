"""The frame codec of the peer protocol: length-prefixed frames with a CBOR header and a raw payload.

A frame on the wire (docs/protocol.md, "Frames"; all integers big-endian)::

    length:u32  type:u8  flags:u8  request_id:u32  header_length:u16  header  payload

``encode`` turns a ``Frame`` into pieces for ``transport.writeSequence`` without copying the payload;
``FrameDecoder`` turns any split of the incoming byte stream back into frames. Blocks of 1 MiB travel in
these frames at hundreds of MiB/s, so the decoder receives a large frame into a buffer of its own (OpenSSL
decrypts into it, see ``FrameDecoder``) and hands out its payload as a view of that buffer, not a copy.

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

from cas.base.buffers import uninitialized

MAX_FRAME = (1 << 20) + (64 << 10)  # largest body (bytes after the length prefix): a block plus headroom
FIXED = 8  # type u8, flags u8, request_id u32, header_length u16
MAX_HEADER = 0xFFFF
MIN_BODY = FIXED + 1  # the header is at least the empty map a0
MAX_REQUEST_ID = 0xFFFFFFFF
MAX_HEADER_DEPTH = 16  # nested containers in a header; version 1 needs 3 (addresses in a list in a map)

HELLO, PING, PEERS, PUT_BLOCK, GET_BLOCK, HAS, CANCEL, BYE = 1, 2, 3, 4, 5, 6, 7, 8
LEASE, RELEASE = 9, 10  # protocol version 2: only on connections that negotiated it
REPORT, CHALLENGE = 11, 12  # protocol version 3
TYPE_NAMES: dict[int, str] = {
    HELLO: "HELLO",
    PING: "PING",
    PEERS: "PEERS",
    PUT_BLOCK: "PUT_BLOCK",
    GET_BLOCK: "GET_BLOCK",
    HAS: "HAS",
    CANCEL: "CANCEL",
    BYE: "BYE",
    LEASE: "LEASE",
    RELEASE: "RELEASE",
    REPORT: "REPORT",
    CHALLENGE: "CHALLENGE",
}
SINCE_VERSION: dict[int, int] = {LEASE: 2, RELEASE: 2, REPORT: 3, CHALLENGE: 3}  # frame types newer than version 1
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


HEAD_SIZE = 64 << 10  # frames up to this size (prefix included) are gathered in one reused buffer
# At most this much of the head buffer is offered at a time (one TLS record's plaintext): a large frame's first
# bytes land there before its length prefix is read, and are then copied into the frame's own buffer.
HEAD_READ = 16 << 10
_NOTHING: tuple = ()  # buffer_updated's answer when no frame completed (most calls): no list per call


class FrameDecoder:
    """Incremental decoder: feed() any split of the byte stream, or let the transport write into the buffer
    ``get_buffer()`` gives and call ``buffer_updated(n)``; either way, complete frames come out.

    The receive-into-buffer pair is how ``cas.peer.peertls.PeerTLSProtocol`` delivers a peer's bytes: OpenSSL
    decrypts each TLS record straight into the decoder's buffer, so a 1 MiB block costs no join and no
    intermediate ``bytes`` per 16 KiB record. Small frames (up to ``HEAD_SIZE`` with their prefix) are
    gathered in one reused buffer and their payloads copied out; a larger frame gets a buffer of its own,
    allocated when its length prefix arrives, and its payload is a read-only view of that buffer, never
    reused. After a ``FrameError`` the decoder is dead: every later call raises too.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not MIN_BODY <= max_frame <= 0xFFFFFFFF:
            raise ValueError(f"max_frame must be between {MIN_BODY} and {0xFFFFFFFF}")
        self._max_frame = max_frame
        # Allocated at the first bytes (when the TLS handshake completes, on a peer link): a connection that
        # never authenticates holds no receive buffer.
        self._head: bytearray | None = None
        self._head_view: memoryview | None = None
        self._start = 0  # head[_start:_filled] is received and not yet decoded
        self._filled = 0
        self._body: memoryview | None = None  # the body (bytes after the prefix) of a large frame
        self._body_filled = 0
        self._error: str | None = None

    @property
    def failed(self) -> bool:
        """A ``FrameError`` was raised: the decoder takes nothing more."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (including its length prefix)."""
        if self._body is not None:
            return 4 + self._body_filled
        return self._filled - self._start

    def get_buffer(self) -> memoryview:
        """Where the next bytes of the stream go (never empty); then call ``buffer_updated``."""
        if self._error is not None:
            raise FrameError(f"decoder stopped after an earlier error: {self._error}")
        if self._body is not None:
            return self._body[self._body_filled:]
        if self._head_view is None:
            self._head = bytearray(HEAD_SIZE)
            self._head_view = memoryview(self._head)
        return self._head_view[self._filled:self._filled + HEAD_READ]

    def buffer_updated(self, n: int) -> list[Frame] | tuple:
        """``n`` bytes were written at the start of the last ``get_buffer()``: the frames they complete."""
        if self._error is not None:
            raise FrameError(f"decoder stopped after an earlier error: {self._error}")
        try:
            body = self._body
            if body is not None:
                self._body_filled += n
                if self._body_filled < len(body):
                    return _NOTHING
                self._body = None
                self._body_filled = 0
                return [_frame(body, body.toreadonly(), 0, len(body), copy=False)]
            self._filled += n
            return self._parse_head()
        except FrameError as e:
            self._error = str(e)
            self._start = self._filled = self._body_filled = 0
            self._body = None
            raise

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """The frames completed by ``data`` (possibly none); FrameError on malformed input.

        ``data`` is copied: the caller may reuse its buffer. On an error, frames decoded earlier in the same
        call are dropped with it: the connection is closing.
        """
        if self._error is not None:
            raise FrameError(f"decoder stopped after an earlier error: {self._error}")
        src = memoryview(data).cast("B")
        frames: list[Frame] = []
        pos, size = 0, len(src)
        while pos < size:
            buf = self.get_buffer()
            n = min(len(buf), size - pos)
            buf[:n] = src[pos:pos + n]
            pos += n
            frames.extend(self.buffer_updated(n))
        return frames

    def _parse_head(self) -> list[Frame] | tuple:
        head, view = self._head, self._head_view
        assert head is not None and view is not None  # get_buffer came first
        start, filled = self._start, self._filled
        frames: list[Frame] | tuple = _NOTHING
        while filled - start >= 4:
            (length,) = _PREFIX.unpack_from(head, start)
            if length > self._max_frame:
                raise FrameError(f"frame length {length} exceeds the maximum {self._max_frame}")
            if length < MIN_BODY:
                raise FrameError(f"frame length {length} is below the minimum {MIN_BODY}")
            have = filled - start - 4
            if have >= length:
                if not frames:
                    frames = []
                frames.append(_frame(head, view, start + 4, length, copy=True))  # type: ignore[union-attr]
                start += 4 + length
                continue
            if 4 + length > HEAD_SIZE:  # a large frame: its own buffer, the part received so far moved there
                body = uninitialized(length)  # handed out only once every byte has arrived
                body[:have] = view[start + 4:filled]
                self._body, self._body_filled = body, have
                start = filled = 0
            break
        if start == filled:
            start = filled = 0
        elif start:  # a partial frame that fits: move it to the front so the rest has room
            head[:filled - start] = view[start:filled]
            filled -= start
            start = 0
        self._start, self._filled = start, filled
        return frames


def _frame(buf: bytes | bytearray | memoryview, view: memoryview, start: int, length: int, copy: bool) -> Frame:
    """The frame whose body is ``buf[start:start + length]``; ``copy`` when ``buf`` will be reused."""
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
    header = _decode_header(bytes(view[hstart:pstart]))
    if pend == pstart:
        payload: bytes | memoryview = b""
    elif copy:
        payload = memoryview(bytes(view[pstart:pend]))
    else:
        payload = view[pstart:pend]
    return Frame(ftype, flags, rid, header, payload)
