"""Tests for the frame codec of the peer protocol (cas.peer.frames).

The test vectors pinned here are the ones printed in docs/protocol.md ("Test vectors", "Frames");
``FrameVectorTests`` checks that the code reproduces them exactly and that the document still shows them.
"""

from __future__ import annotations

import datetime
import itertools
import os
import struct

import attrs
import cbor2
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cas.base.cid import PREFIX, digest
from cas.peer import frames
from cas.peer.frames import (
    BYE,
    CANCEL,
    CHALLENGE,
    ERROR,
    FIXED,
    GET_BLOCK,
    HAS,
    HEAD_READ,
    HEAD_SIZE,
    HELLO,
    LEASE,
    MAX_FRAME,
    MAX_HEADER,
    ONE_WAY,
    PEERS,
    PING,
    PUT_BLOCK,
    RELEASE,
    REPORT,
    RESPONSE,
    TYPE_NAMES,
    Frame,
    FrameDecoder,
    FrameError,
    encode,
    encode_header,
)

from .util import property_settings

FAST = property_settings(150)

# -- test vectors (also printed in docs/protocol.md) ---------------------------------------------------------
VEC_CID = bytes([0x01, 0x55, 0x1E, 0x20]) + bytes(range(32))
HELLO_CID = PREFIX + digest(b"hello")  # the real block id of b"hello"
# PING request, id 1, header {}
VEC_PING = "00000009" "02" "00" "00000001" "0001" "a0"
# GET_BLOCK request, id 2, header {"cid": VEC_CID}
VEC_GET_BLOCK = (
    "00000033" "05" "00" "00000002" "002b"
    "a163636964582401551e20000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
)
# its ERROR response: GET_BLOCK, RESPONSE|ERROR, id 2, header {"code": "not_found", "message": "no such block"}
VEC_NOT_FOUND = (
    "0000002e" "05" "03" "00000002" "0026"
    "a264636f6465696e6f745f666f756e64676d6573736167656d6e6f207375636820626c6f636b"
)
# PUT_BLOCK request, id 3, header {"cid": HELLO_CID}, payload b"hello"
VEC_PUT_BLOCK = (
    "00000038" "04" "00" "00000003" "002b"
    "a163636964582401551e20ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
    "68656c6c6f"
)
# Version 2. PUT_BLOCK request, id 4, header {"cid": HELLO_CID, "key": b"k", "lease": 2678400}, payload b"hello"
VEC_PUT_BLOCK_2 = (
    "00000049" "04" "00" "00000004" "003c"
    "a363636964582401551e20ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
    "636b6579416b656c656173651a0028de80" "68656c6c6f"
)
# LEASE request, id 5, header {"keys": [b"k"], "time": 2678400}; its response
# {"time": 2678400, "granted": h'80', "complete": h'80'}
VEC_LEASE = "0000001b" "09" "00" "00000005" "0013" "a2646b65797381416b6474696d651a0028de80"
VEC_LEASE_OK = (
    "00000028" "09" "01" "00000005" "0020" "a36474696d651a0028de80676772616e746564418068636f6d706c6574654180"
)
# RELEASE request, id 6, header {"keys": [b"k"]}; its response {"released": h'80'}
VEC_RELEASE = "00000011" "0a" "00" "00000006" "0009" "a1646b65797381416b"
VEC_RELEASE_OK = "00000014" "0a" "01" "00000006" "000c" "a16872656c65617365644180"
# REPORT request (version 3), id 7, header {"cid": cid of b"hello"}; its response {"found": "corrupt"}
VEC_REPORT = ("00000033" "0b" "00" "00000007" "002b" "a163636964582401551e20ea8f163db38682925e4491c5e58d4bb3506ef8c14e"
              "b78a86e908c5624a67200f")
VEC_REPORT_OK = "00000017" "0b" "01" "00000007" "000f" "a165666f756e6467636f7272757074"
# CHALLENGE request (version 3), id 8, header {"cid": cid of b"hello", "nonce": bytes 0..31, "offset": 1,
# "length": 3}; its response {"mac": BLAKE3 keyed with the nonce over b"ell"}
VEC_CHALLENGE = ("0000006b" "0c" "00" "00000008" "0063" "a463636964582401551e20ea8f163db38682925e4491c5e58d4bb3506ef"
                 "8c14eb78a86e908c5624a67200f656e6f6e63655820000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c"
                 "1d1e1f666c656e67746803666f666673657401")
VEC_CHALLENGE_OK = ("0000002f" "0c" "01" "00000008" "0027" "a1636d6163582057256d4de1d6144d08243412bfdec6b0748e83a066935c"
                    "e70e8269b5f10634f7")
CHALLENGE_MAC = bytes.fromhex("57256d4de1d6144d08243412bfdec6b0748e83a066935ce70e8269b5f10634f7")
VECTORS = [
    (VEC_PING, Frame(PING, 0, 1, {})),
    (VEC_GET_BLOCK, Frame(GET_BLOCK, 0, 2, {"cid": VEC_CID})),
    (VEC_NOT_FOUND, Frame(GET_BLOCK, RESPONSE | ERROR, 2, {"code": "not_found", "message": "no such block"})),
    (VEC_PUT_BLOCK, Frame(PUT_BLOCK, 0, 3, {"cid": HELLO_CID}, b"hello")),
    (VEC_PUT_BLOCK_2, Frame(PUT_BLOCK, 0, 4, {"cid": HELLO_CID, "key": b"k", "lease": 2678400}, b"hello")),
    (VEC_LEASE, Frame(LEASE, 0, 5, {"keys": [b"k"], "time": 2678400})),
    (VEC_LEASE_OK, Frame(LEASE, RESPONSE, 5, {"time": 2678400, "granted": b"\x80", "complete": b"\x80"})),
    (VEC_RELEASE, Frame(RELEASE, 0, 6, {"keys": [b"k"]})),
    (VEC_RELEASE_OK, Frame(RELEASE, RESPONSE, 6, {"released": b"\x80"})),
    (VEC_REPORT, Frame(REPORT, 0, 7, {"cid": HELLO_CID})),
    (VEC_REPORT_OK, Frame(REPORT, RESPONSE, 7, {"found": "corrupt"})),
    (VEC_CHALLENGE, Frame(CHALLENGE, 0, 8, {"cid": HELLO_CID, "nonce": bytes(range(32)), "offset": 1, "length": 3})),
    (VEC_CHALLENGE_OK, Frame(CHALLENGE, RESPONSE, 8, {"mac": CHALLENGE_MAC})),
]


def raw_frame(
    ftype: int = PING,
    flags: int = 0,
    rid: int = 1,
    header: bytes = b"\xa0",
    payload: bytes = b"",
    hlen: int | None = None,
    length: int | None = None,
) -> bytes:
    """Bytes of a frame built by hand, bypassing encode()'s checks."""
    body = struct.pack(">BBIH", ftype, flags, rid, len(header) if hlen is None else hlen) + header + payload
    return struct.pack(">I", len(body) if length is None else length) + body


def wire(frame: Frame) -> bytes:
    return b"".join(encode(frame))


def decode_all(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    out = decoder.feed(data)
    assert decoder.buffered == 0
    return out


def sample_frames() -> list[Frame]:
    """One frame of every type in every allowed role."""
    out = []
    for ftype in TYPE_NAMES:
        if ftype in ONE_WAY:
            out.append(Frame(ftype, 0, 0, {"reason": "x"}))
        else:
            out.append(Frame(ftype, 0, 7, {"cid": VEC_CID}, b"request payload"))
            out.append(Frame(ftype, RESPONSE, 0xFFFFFFFF, {}, b"response payload"))
            out.append(Frame(ftype, RESPONSE | ERROR, 1, {"code": "busy", "message": "later"}))
    return out


# -- hypothesis strategies ------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 64), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(st.text(max_size=10), values, max_size=5)


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    ftype = draw(st.sampled_from(sorted(TYPE_NAMES)))
    if ftype in ONE_WAY:
        flags, rid = 0, 0
    else:
        flags = draw(st.sampled_from([0, RESPONSE, RESPONSE | ERROR]))
        rid = draw(st.integers(1, 0xFFFFFFFF))
    return Frame(ftype, flags, rid, draw(headers), draw(st.binary(max_size=3000)))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- tests ----------------------------------------------------------------------------------------------------


class RoundTripTests(SynchronousTestCase):
    """encode() then FrameDecoder gives the same frames, however the stream is cut."""

    def test_every_type(self) -> None:
        for frame in sample_frames():
            with self.subTest(TYPE_NAMES[frame.type], flags=frame.flags):
                self.assertEqual(decode_all(wire(frame)), [frame])

    def test_many_frames_in_one_piece(self) -> None:
        sample = sample_frames()
        self.assertEqual(decode_all(b"".join(wire(f) for f in sample)), sample)

    def test_byte_at_a_time(self) -> None:
        """Like Twisted's test_basic: every frame comes out exactly when its last byte arrives."""
        sample = sample_frames()
        decoder = FrameDecoder()
        for frame in sample:
            data = wire(frame)
            for i, byte in enumerate(data):
                got = decoder.feed(bytes([byte]))
                if i < len(data) - 1:
                    self.assertEqual(got, [])
                    self.assertEqual(decoder.buffered, i + 1)
                else:
                    self.assertEqual(got, [frame])
                    self.assertEqual(decoder.buffered, 0)

    def test_buffered_counts_a_partial_frame(self) -> None:
        data = wire(Frame(PING, 0, 1)) + wire(Frame(PUT_BLOCK, 0, 2, {}, b"x" * 100))
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(data[:-10]), [Frame(PING, 0, 1)])
        self.assertEqual(decoder.buffered, len(data) - 10 - 13)
        self.assertEqual(decoder.feed(data[-10:]), [Frame(PUT_BLOCK, 0, 2, {}, b"x" * 100)])
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(decoder.feed(b""), [])

    def test_encode_pieces(self) -> None:
        """The payload goes to writeSequence as the caller's own object, never copied; no empty piece."""
        payload = memoryview(bytes(range(200)))[10:110]
        pieces = encode(Frame(PUT_BLOCK, 0, 9, {"cid": VEC_CID}, payload))
        self.assertEqual(len(pieces), 2)
        self.assertIs(pieces[1], payload)
        header = encode_header({"cid": VEC_CID})
        self.assertEqual(pieces[0], struct.pack(">IBBIH", FIXED + len(header) + 100, PUT_BLOCK, 0, 9, len(header))
                         + header)
        self.assertEqual(encode(Frame(PING, 0, 1)), [bytes.fromhex(VEC_PING)])

    def test_payload_is_a_read_only_view(self) -> None:
        [frame] = decode_all(wire(Frame(PUT_BLOCK, 0, 1, {}, b"block")))
        self.assertIsInstance(frame.payload, memoryview)
        self.assertTrue(frame.payload.readonly)
        self.assertEqual(bytes(frame.payload), b"block")
        [empty] = decode_all(wire(Frame(PING, 0, 1)))
        self.assertEqual(empty.payload, b"")

    def test_mutable_input_is_not_aliased(self) -> None:
        """A bytearray the caller reuses after feed() must not change a payload already handed out."""
        data = bytearray(wire(Frame(PUT_BLOCK, 0, 1, {}, b"block")))
        [frame] = FrameDecoder().feed(data)
        data[-5:] = b"XXXXX"
        self.assertEqual(bytes(frame.payload), b"block")

    def test_largest_frame(self) -> None:
        """A body of exactly MAX_FRAME is sent and accepted: a 1 MiB block with its cid fits with room."""
        header = encode_header({"cid": VEC_CID})
        frame = Frame(PUT_BLOCK, 0, 1, {"cid": VEC_CID}, b"\x00" * (MAX_FRAME - FIXED - len(header)))
        data = wire(frame)
        self.assertEqual(len(data), 4 + MAX_FRAME)
        self.assertEqual(decode_all(data), [frame])

    def test_smaller_max_frame(self) -> None:
        decoder = FrameDecoder(max_frame=100)
        self.assertEqual(len(decoder.feed(wire(Frame(PUT_BLOCK, 0, 1, {}, b"x" * 91)))), 1)
        e = self.assertRaises(FrameError, decoder.feed, wire(Frame(PUT_BLOCK, 0, 1, {}, b"x" * 92)))
        self.assertEqual(str(e), "frame length 101 exceeds the maximum 100")
        self.assertRaises(ValueError, FrameDecoder, FIXED)

    def test_64_blocks_in_tls_records(self) -> None:
        """64 frames of 1 MiB fed as 16 KiB pieces (what TLS delivers) decode; buffering must be linear.

        A decoder that re-joined or re-sliced its buffer on every piece would take minutes here; this is a
        correctness check, the speed shows in the time trial reports.
        """
        block = bytes(range(256)) * 4096
        one = wire(Frame(PUT_BLOCK, 0, 1, {"cid": VEC_CID}, block))
        stream = memoryview(one * 64)
        decoder = FrameDecoder()
        count = 0
        for start in range(0, len(stream), 16384):
            for frame in decoder.feed(bytes(stream[start:start + 16384])):
                self.assertEqual(len(frame.payload), len(block))
                count += 1
        self.assertEqual(frame.payload, block)
        self.assertEqual(count, 64)
        self.assertEqual(decoder.buffered, 0)

    @FAST
    @given(st.lists(valid_frames(), min_size=1, max_size=5), st.lists(st.integers(0, 1 << 20), max_size=12))
    def test_random_frames_random_splits(self, sample: list[Frame], cuts: list[int]) -> None:
        data = b"".join(wire(f) for f in sample)
        decoder = FrameDecoder()
        got: list[Frame] = []
        fed = 0
        for piece in split(data, cuts):
            got.extend(decoder.feed(piece))
            fed += len(piece)
            self.assertEqual(decoder.buffered, fed - sum(len(wire(f)) for f in got))
        self.assertEqual(got, sample)
        self.assertEqual(decoder.buffered, 0)


@st.composite
def mixed_frames(draw: st.DrawFn) -> Frame:
    """Small frames, and frames around and far above ``HEAD_SIZE`` (their own receive buffer)."""
    frame = draw(valid_frames())
    if draw(st.booleans()):
        size = draw(st.sampled_from([HEAD_SIZE - 40, HEAD_SIZE, HEAD_SIZE + 1, 200_000, MAX_FRAME - (1 << 16) - 100]))
        frame = attrs.evolve(frame, payload=bytes([draw(st.integers(0, 255))]) * size + b"end")
    return frame


def receive(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Frame]:
    """What a TLS layer does with ``IReceiveBuffer``: each piece written into ``get_buffer()`` (as much as fits,
    the rest into the next buffer), then ``buffer_updated``. Checks that no buffer is ever empty."""
    got: list[Frame] = []
    for piece in split(data, cuts):
        pos = 0
        while pos < len(piece):
            buf = decoder.get_buffer()
            assert len(buf) > 0 and not buf.readonly
            n = min(len(buf), len(piece) - pos)
            buf[:n] = piece[pos:pos + n]
            pos += n
            got.extend(decoder.buffer_updated(n))
    return got


class ReceiveBufferTests(SynchronousTestCase):
    """The decoder's ``get_buffer``/``buffer_updated`` side, which ``PeerTLSProtocol`` decrypts into."""

    def test_byte_at_a_time(self) -> None:
        sample = sample_frames() + [Frame(PUT_BLOCK, 0, 3, {}, b"b" * (HEAD_SIZE + 10))]
        decoder = FrameDecoder()
        for frame in sample:
            data = wire(frame)
            for i in range(len(data)):
                buf = decoder.get_buffer()
                buf[0] = data[i]
                got = decoder.buffer_updated(1)
                if i < len(data) - 1:
                    self.assertEqual(list(got), [])
                    self.assertEqual(decoder.buffered, i + 1)
                else:
                    self.assertEqual(got, [frame])
                    self.assertEqual(decoder.buffered, 0)

    def test_large_payloads_are_never_overwritten(self) -> None:
        """A large frame's payload is a read-only view of a buffer of its own, never reused; a small frame's
        payload is a copy out of the reused head buffer. Later frames change neither."""
        blocks = [bytes([i]) * (1 << 20) for i in range(3)]
        stream = b"".join(wire(Frame(GET_BLOCK, RESPONSE, i + 1, {}, b)) + wire(Frame(PING, 0, 9, {}, b"small"))
                          for i, b in enumerate(blocks))
        decoder = FrameDecoder()
        got = receive(decoder, stream, list(range(0, len(stream), 16384)))
        self.assertEqual(len(got), 6)
        for i, b in enumerate(blocks):
            payload = got[2 * i].payload
            self.assertIsInstance(payload, memoryview)
            self.assertTrue(payload.readonly)
            self.assertTrue(payload == b)
            self.assertEqual(bytes(got[2 * i + 1].payload), b"small")
        self.assertEqual(len({id(got[2 * i].payload.obj) for i in range(3)}), 3)
        self.assertEqual(decoder.buffered, 0)

    def test_large_frame_buffer_size(self) -> None:
        """Once a large frame's prefix is in, the buffer offered is exactly the rest of that frame."""
        data = wire(Frame(PUT_BLOCK, 0, 1, {}, b"x" * 100_000))
        decoder = FrameDecoder()
        buf = decoder.get_buffer()
        buf[:10] = data[:10]
        self.assertEqual(list(decoder.buffer_updated(10)), [])
        self.assertEqual(len(decoder.get_buffer()), len(data) - 10)
        self.assertEqual(decoder.buffered, 10)

    @FAST
    @given(st.lists(mixed_frames(), min_size=1, max_size=4), st.lists(st.integers(0, 1 << 22), max_size=12))
    def test_random_frames_random_splits(self, sample: list[Frame], cuts: list[int]) -> None:
        data = b"".join(wire(f) for f in sample)
        decoder = FrameDecoder()
        self.assertEqual(receive(decoder, data, cuts), sample)
        self.assertEqual(decoder.buffered, 0)

    def test_dead_after_error(self) -> None:
        decoder = FrameDecoder()
        bad = raw_frame(ftype=13)
        buf = decoder.get_buffer()
        buf[:len(bad)] = bad
        self.assertFalse(decoder.failed)
        e = self.assertRaises(FrameError, decoder.buffer_updated, len(bad))
        self.assertEqual(str(e), "unknown frame type 13")
        self.assertTrue(decoder.failed)
        self.assertEqual(decoder.buffered, 0)
        self.assertRaises(FrameError, decoder.get_buffer)
        self.assertRaises(FrameError, decoder.buffer_updated, 1)
        self.assertRaises(FrameError, decoder.feed, wire(Frame(PING, 0, 1)))

    def test_no_buffer_before_the_first_bytes(self) -> None:
        """A connection that has not authenticated yet (no bytes for the decoder) holds no 64 KiB buffer."""
        decoder = FrameDecoder()
        self.assertIsNone(decoder._head)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(len(decoder.get_buffer()), HEAD_READ)
        self.assertEqual(len(decoder._head), HEAD_SIZE)

    def test_head_buffer_offered_a_record_at_a_time(self) -> None:
        """Before a frame's length prefix is read, at most one TLS record's worth of the head buffer is offered
        (a large frame's first bytes are copied from there into its own buffer); then the frame's whole rest."""
        big = wire(Frame(PING, 0, 1, {}, b"x" * (HEAD_SIZE + 100)))
        decoder = FrameDecoder()
        buf = decoder.get_buffer()
        self.assertEqual(len(buf), HEAD_READ)
        buf[:] = big[:HEAD_READ]
        self.assertEqual(decoder.buffer_updated(HEAD_READ), ())
        rest = decoder.get_buffer()
        self.assertEqual(len(rest), len(big) - HEAD_READ)
        rest[:] = big[HEAD_READ:]
        [frame] = decoder.buffer_updated(len(rest))
        self.assertEqual(bytes(frame.payload), b"x" * (HEAD_SIZE + 100))
        # Small frames, as much as offered each time: never more than HEAD_READ at once, every frame decoded.
        data = wire(Frame(PING, 0, 1)) * 3000
        decoder, frames, pos = FrameDecoder(), [], 0
        while pos < len(data):
            b = decoder.get_buffer()
            self.assertLessEqual(len(b), HEAD_READ)
            n = min(len(b), len(data) - pos)
            b[:n] = data[pos:pos + n]
            pos += n
            frames += decoder.buffer_updated(n)
        self.assertEqual(len(frames), 3000)

    def test_oversize_prefix_refused_before_any_buffer(self) -> None:
        decoder = FrameDecoder()
        buf = decoder.get_buffer()
        buf[:4] = struct.pack(">I", MAX_FRAME + 1)
        self.assertRaises(FrameError, decoder.buffer_updated, 4)


class MalformedTests(SynchronousTestCase):
    """Every malformed input raises FrameError with a one-line reason naming the problem."""

    def refused(self, data: bytes) -> str:
        """The reason, checked to be the same whether the bytes come at once or one at a time."""
        reason = str(self.assertRaises(FrameError, FrameDecoder().feed, data))
        decoder = FrameDecoder()
        for i in range(len(data) - 1):
            self.assertEqual(decoder.feed(data[i:i + 1]), [])
        self.assertEqual(str(self.assertRaises(FrameError, decoder.feed, data[-1:])), reason)
        self.assertNotIn("\n", reason)
        return reason

    def test_oversize_length_after_four_bytes(self) -> None:
        """The length alone condemns the frame: nothing of the 2 MB body is waited for."""
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(b"\x00\x1e\x84"), [])
        e = self.assertRaises(FrameError, decoder.feed, b"\x80")
        self.assertEqual(str(e), "frame length 2000000 exceeds the maximum 1114112")
        self.assertEqual(self.refused(struct.pack(">I", MAX_FRAME + 1)),
                         f"frame length {MAX_FRAME + 1} exceeds the maximum {MAX_FRAME}")
        self.assertEqual(self.refused(b"\xff\xff\xff\xff"), "frame length 4294967295 exceeds the maximum 1114112")

    def test_undersize_length(self) -> None:
        for length in (0, 1, FIXED):
            with self.subTest(length):
                self.assertEqual(self.refused(struct.pack(">I", length)),
                                 f"frame length {length} is below the minimum 9")

    def test_unknown_type(self) -> None:
        self.assertEqual(self.refused(raw_frame(ftype=13)), "unknown frame type 13")
        self.assertEqual(self.refused(raw_frame(ftype=0)), "unknown frame type 0")
        self.assertEqual(self.refused(raw_frame(ftype=255)), "unknown frame type 255")

    def test_reserved_flags(self) -> None:
        self.assertEqual(self.refused(raw_frame(flags=0x04)), "reserved flag bits set: 0x04")
        self.assertEqual(self.refused(raw_frame(flags=0x85)), "reserved flag bits set: 0x84")

    def test_error_without_response(self) -> None:
        self.assertEqual(self.refused(raw_frame(flags=ERROR)), "ERROR flag without RESPONSE")

    def test_empty_header(self) -> None:
        self.assertEqual(self.refused(raw_frame(header=b"", payload=b"\xa0")),
                         "header length 0: a header is at least the empty map a0")

    def test_header_longer_than_frame(self) -> None:
        self.assertEqual(self.refused(raw_frame(hlen=2)), "header length 2 exceeds the frame (room for 1)")
        self.assertEqual(self.refused(raw_frame(hlen=0xFFFF, payload=b"abc")),
                         "header length 65535 exceeds the frame (room for 4)")

    def test_one_way_with_request_id(self) -> None:
        self.assertEqual(self.refused(raw_frame(ftype=HELLO, rid=5)), "one-way HELLO with request id 5")
        self.assertEqual(self.refused(raw_frame(ftype=CANCEL, rid=1)), "one-way CANCEL with request id 1")
        self.assertEqual(self.refused(raw_frame(ftype=BYE, rid=0xFFFFFFFF)),
                         "one-way BYE with request id 4294967295")

    def test_response_to_one_way(self) -> None:
        self.assertEqual(self.refused(raw_frame(ftype=HELLO, flags=RESPONSE, rid=0)),
                         "response to a one-way type HELLO")
        self.assertEqual(self.refused(raw_frame(ftype=BYE, flags=RESPONSE | ERROR, rid=3)),
                         "response to a one-way type BYE")

    def test_id_zero(self) -> None:
        self.assertEqual(self.refused(raw_frame(ftype=PING, rid=0)), "PING request with id 0")
        self.assertEqual(self.refused(raw_frame(ftype=HAS, flags=RESPONSE, rid=0)), "HAS response with id 0")

    def test_not_cbor(self) -> None:
        for header in (b"\xff", b"\xa1", b"\xa1\x61", b"\xa1\x61\xff\x00", b"\x1c", b"\xa1\x61a\x5a\x00\x00\x00\x10"):
            with self.subTest(header.hex()):
                self.assertTrue(self.refused(raw_frame(header=header)).startswith("header is not valid CBOR: "))

    def test_trailing_bytes(self) -> None:
        """The header is one CBOR item: bytes after it are an error, not part of the payload."""
        self.assertEqual(self.refused(raw_frame(header=b"\xa0\x00", payload=b"x")),
                         "header has trailing bytes after its CBOR item")

    def test_not_a_map(self) -> None:
        for header in (b"\x80", b"\x00", b"\x60", b"\x40", b"\xf6", b"\xf4"):
            with self.subTest(header.hex()):
                self.assertEqual(self.refused(raw_frame(header=header)), "header is not a map")

    def test_key_not_text(self) -> None:
        self.assertEqual(self.refused(raw_frame(header=b"\xa1\x41a\x00")), "header keys must be text")
        # int and array keys are refused by the decoder itself (no hash flooding), in any map
        for header in (b"\xa1\x01\x00", b"\xa1\x80\x00", b"\xa1\x61a\xa1\x01\x00"):
            with self.subTest(header.hex()):
                self.assertTrue(self.refused(raw_frame(header=header)).startswith("header is not valid CBOR: "))

    def test_duplicate_keys(self) -> None:
        reason = self.refused(raw_frame(header=b"\xa2\x61a\x00\x61a\x01"))
        self.assertTrue(reason.startswith("header is not valid CBOR: "), reason)

    def test_indefinite_lengths(self) -> None:
        for header in (b"\xbf\xff", b"\xa1\x61a\x5f\x41x\xff", b"\xa1\x61a\x9f\xff"):
            with self.subTest(header.hex()):
                self.assertTrue(self.refused(raw_frame(header=header)).startswith("header is not valid CBOR: "))

    def test_tags(self) -> None:
        """No tag is decoded from peer input, neither cbor2's built-in ones (dates, bignums, sets, shared
        references, self-describe) nor unknown ones; nested or at the top."""
        builtin = (0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 32, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799)
        for tag in (*builtin, 6, 1000, 1 << 32, (1 << 64) - 1):
            for header in (cbor2.dumps(cbor2.CBORTag(tag, {})), cbor2.dumps({"a": [cbor2.CBORTag(tag, 0)]})):
                with self.subTest(tag=tag, header=header.hex()):
                    self.assertEqual(self.refused(raw_frame(header=header)),
                                     f"header uses CBOR tag {tag}: tags are not allowed")

    def test_nesting_depth(self) -> None:
        deep = b"\xa1\x61a" + b"\x81" * 14 + b"\x00"
        self.assertEqual(decode_all(raw_frame(header=deep))[0].header, {"a": [[[[[[[[[[[[[[0]]]]]]]]]]]]]]})
        too_deep = b"\xa1\x61a" + b"\x81" * 40 + b"\x00"
        reason = self.refused(raw_frame(header=too_deep))
        self.assertTrue(reason.startswith("header is not valid CBOR: ") and "depth" in reason, reason)

    def test_dead_after_error(self) -> None:
        """After an error nothing more is decoded, not even frames that were already buffered."""
        decoder = FrameDecoder()
        good = wire(Frame(PING, 0, 1))
        self.assertRaises(FrameError, decoder.feed, good + raw_frame(ftype=13) + good)
        self.assertEqual(decoder.buffered, 0)
        for data in (good, b"", b"\x00"):
            e = self.assertRaises(FrameError, decoder.feed, data)
            self.assertEqual(str(e), "decoder stopped after an earlier error: unknown frame type 13")

    @FAST
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
    def test_garbage(self, data: bytes, cuts: list[int]) -> None:
        self.feed_only_frame_errors(data, cuts)

    @FAST
    @given(
        st.integers(0, 255),
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
        st.binary(min_size=1, max_size=40).map(lambda b: bytes([0xA0 | (b[0] & 0x1F)]) + b[1:]),  # a map head
        st.binary(max_size=20),
        st.integers(-2, 2),
        st.lists(st.integers(0, 100), max_size=4),
    )
    def test_garbage_in_plausible_frames(
        self, ftype: int, flags: int, rid: int, header: bytes, payload: bytes, skew: int, cuts: list[int]
    ) -> None:
        """Right-sized frames with random fields and map-like random headers reach the CBOR checks."""
        hlen = max(0, min(0xFFFF, len(header) + skew))
        self.feed_only_frame_errors(raw_frame(ftype, flags, rid, header, payload, hlen=hlen), cuts)

    def feed_only_frame_errors(self, data: bytes, cuts: list[int]) -> None:
        decoder = FrameDecoder()
        try:
            for piece in split(data, cuts):
                for frame in decoder.feed(piece):
                    encode(frame)  # whatever the decoder accepts, the encoder could have sent
        except FrameError as e:
            self.assertNotIn("\n", str(e))


class EncodeRefusalTests(SynchronousTestCase):
    """encode() raises ValueError for any frame a peer would refuse, so we never send one."""

    def assertRefused(self, frame: Frame) -> None:
        self.assertRaises(ValueError, encode, frame)

    def test_type(self) -> None:
        for ftype in (0, 13, 255, 256, -1):
            self.assertRefused(Frame(ftype, 0, 1))

    def test_flags(self) -> None:
        for flags in (ERROR, 0x04, 0x80, 0x100, -1):
            self.assertRefused(Frame(PING, flags, 1))

    def test_request_id_range(self) -> None:
        for rid in (-1, 1 << 32):
            self.assertRefused(Frame(PING, 0, rid))

    def test_one_way_rules(self) -> None:
        self.assertRefused(Frame(HELLO, 0, 5))
        self.assertRefused(Frame(BYE, RESPONSE, 0))
        self.assertRefused(Frame(PING, 0, 0))
        self.assertRefused(Frame(PEERS, RESPONSE, 0))
        self.assertRefused(Frame(PEERS, RESPONSE | ERROR, 0))

    def test_header(self) -> None:
        for header in ([], None, {1: 2}, {b"k": 1}, {"a": {1: 2}}, {"a": object()}, {"a": 1 << 64},
                       {"t": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)}, {"s": {1, 2}}):
            with self.subTest(header=repr(header)):
                self.assertRefused(Frame(PING, 0, 1, header))  # type: ignore[arg-type]
                self.assertRaises(ValueError, encode_header, header)

    def test_header_too_large(self) -> None:
        self.assertEqual(len(encode_header({"a": b"x" * (MAX_HEADER - 6)})), MAX_HEADER)
        self.assertRefused(Frame(PING, 0, 1, {"a": b"x" * (MAX_HEADER - 5)}))

    def test_frame_too_large(self) -> None:
        self.assertRefused(Frame(PUT_BLOCK, 0, 1, {}, b"x" * (MAX_FRAME - FIXED)))
        self.assertEqual(len(wire(Frame(PUT_BLOCK, 0, 1, {}, b"x" * (MAX_FRAME - FIXED - 1)))), 4 + MAX_FRAME)

    def test_payload_type(self) -> None:
        self.assertRefused(Frame(PUT_BLOCK, 0, 1, {}, "text"))  # type: ignore[arg-type]
        self.assertRefused(Frame(PUT_BLOCK, 0, 1, {}, memoryview(b"abcdef")[::2]))

    def test_canonical_header(self) -> None:
        header = {"message": "m", "code": "c", "b": [1, 2], "a": {"y": 1, "x": 2}}
        self.assertEqual(encode_header(header), cbor2.dumps(header, canonical=True))
        self.assertEqual(encode_header({"b": 1, "a": 2}), encode_header({"a": 2, "b": 1}))


class FrameVectorTests(SynchronousTestCase):
    """The frame vectors of docs/protocol.md."""

    def test_vectors(self) -> None:
        for hexed, frame in VECTORS:
            with self.subTest(hexed[:24]):
                self.assertEqual(wire(frame).hex(), hexed)
                self.assertEqual(decode_all(bytes.fromhex(hexed)), [frame])

    def test_put_block_cid_is_real(self) -> None:
        [frame] = decode_all(bytes.fromhex(VEC_PUT_BLOCK))
        self.assertEqual(frame.header["cid"], PREFIX + digest(bytes(frame.payload)))

    def test_constants(self) -> None:
        self.assertEqual(MAX_FRAME, 1_114_112)
        self.assertEqual({name: n for n, name in TYPE_NAMES.items()},
                         {"HELLO": 1, "PING": 2, "PEERS": 3, "PUT_BLOCK": 4, "GET_BLOCK": 5, "HAS": 6,
                          "CANCEL": 7, "BYE": 8, "LEASE": 9, "RELEASE": 10, "REPORT": 11, "CHALLENGE": 12})
        self.assertEqual(ONE_WAY, {HELLO, CANCEL, BYE})
        self.assertEqual((RESPONSE, ERROR, FIXED, MAX_HEADER), (1, 2, 8, 0xFFFF))
        self.assertTrue(all(getattr(frames, name) == n for n, name in TYPE_NAMES.items()))

    def test_document_shows_vectors(self) -> None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "docs", "protocol.md")
        if not os.path.exists(path):
            raise SkipTest("docs/protocol.md is not next to the package (installed copy)")
        with open(path, encoding="utf-8") as f:
            doc = "".join(f.read().split())  # the document splits the hex per field
        for hexed, _ in VECTORS:
            with self.subTest(hexed[:24]):
                self.assertIn(hexed, doc)
