"""Resumable uploads at the node: sessions, pieces, checkpoints, restarts, expiry."""

from __future__ import annotations

import os

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from cas.base.errors import OffsetMismatch, SessionBusy, SessionNotFound, TooFewReplicas
from cas.node import core as node_module
from cas.node.core import Node
from cas.node.upload import SESSION_TTL
from cas.test.util import Collector, ManualRunner, make_node, sync_run

SEG = 64 * 1024


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = make_node(self, segment_size=SEG)

    def piece(self, node: Node, sid: str, offset: int, data: bytes, final: bool = False):  # type: ignore[no-untyped-def]
        up = node.resume_session(sid, offset)
        up.write(data)
        if final:
            return self.successResultOf(up.finish())
        return self.successResultOf(up.checkpoint())

    def read(self, node: Node, cap) -> bytes:  # type: ignore[no-untyped-def]
        f = self.successResultOf(node.open(cap))
        sink = Collector()
        self.successResultOf(node.download(f).start(sink))
        return sink.data

    def test_pieces_make_the_file(self) -> None:
        data = os.urandom(5 * SEG + 123)
        s = self.node.open_session("big.bin", "application/x-thing")
        offset = self.piece(self.node, s.id, 0, data[: 2 * SEG + 500])
        self.assertEqual(offset, 2 * SEG)  # the incomplete segment is dropped: sent again
        self.assertEqual(self.node.session(s.id).offset, 2 * SEG)
        offset = self.piece(self.node, s.id, offset, data[offset: 4 * SEG])
        self.assertEqual(offset, 3 * SEG)  # the last complete segment of a piece may be the file's last: resent
        stored = self.piece(self.node, s.id, offset, data[offset:], final=True)
        self.assertEqual((stored.size, stored.blocks, stored.metadata.name), (len(data), 6, "big.bin"))
        self.assertEqual(self.read(self.node, stored.cap), data)
        self.assertRaises(SessionNotFound, self.node.session, s.id)
        self.assertEqual([f.name for f in self.node.files()], ["big.bin"])

    def test_exact_multiple_of_the_segment(self) -> None:
        data = os.urandom(3 * SEG)
        s = self.node.open_session("even.bin")
        offset = self.piece(self.node, s.id, 0, data[: 2 * SEG])
        self.assertEqual(offset, SEG)
        offset = self.piece(self.node, s.id, offset, data[offset: 3 * SEG])  # all of it, but not said to be final
        self.assertEqual(offset, 2 * SEG)
        stored = self.piece(self.node, s.id, offset, data[offset:], final=True)
        self.assertEqual(stored.blocks, 3)  # as a single upload of the same bytes
        self.assertEqual(self.read(self.node, stored.cap), data)

    def test_wrong_offset(self) -> None:
        s = self.node.open_session("x")
        self.piece(self.node, s.id, 0, os.urandom(SEG + 1))
        with self.assertRaises(OffsetMismatch) as e:
            self.node.resume_session(s.id, 0)
        self.assertEqual(e.exception.offset, SEG)
        self.assertRaises(SessionNotFound, self.node.resume_session, "0" * 32, 0)
        self.assertRaises(SessionNotFound, self.node.resume_session, "../etc", 0)

    def test_cut_short_keeps_what_was_stored(self) -> None:
        data = os.urandom(4 * SEG + 9)
        s = self.node.open_session("cut.bin")
        up = self.node.resume_session(s.id, 0)
        up.write(data[: 3 * SEG + 100])
        up.abort("the client disconnected")
        self.failureResultOf(up.done)
        self.assertEqual(self.node.session(s.id).offset, 3 * SEG)  # 3 complete segments were stored; 100 bytes lost
        stored = self.piece(self.node, s.id, 3 * SEG, data[3 * SEG:], final=True)
        self.assertEqual(self.read(self.node, stored.cap), data)

    def test_survives_a_restart_and_garbage_collection(self) -> None:
        data = os.urandom(3 * SEG + 7)
        s = self.node.open_session("r.bin")
        offset = self.piece(self.node, s.id, 0, data[: 2 * SEG])
        self.node.stop()
        again = Node(self.node.datadir, self.node.reactor, run=sync_run, segment_size=SEG)
        again.start()  # collects garbage: the session's blocks are referenced
        self.addCleanup(again.stop)
        self.assertEqual(again.session(s.id).offset, offset)
        stored = self.piece(again, s.id, offset, data[offset:], final=True)
        self.assertEqual(self.read(again, stored.cap), data)

    def test_progress_survives_a_crash_in_the_middle_of_a_piece(self) -> None:
        data = os.urandom(100 * SEG + 3)
        s = self.node.open_session("long.bin")
        up = self.node.resume_session(s.id, 0)
        up.write(data[: 90 * SEG])  # no checkpoint, no finish: the node dies here
        again = Node(self.node.datadir, self.node.reactor, run=sync_run, segment_size=SEG)
        again.start()  # its start-up collection must keep what the session recorded
        self.addCleanup(again.stop)
        offset = again.session(s.id).offset
        self.assertGreaterEqual(offset, 60 * SEG)  # recorded with the references, every 64 blocks
        self.assertEqual(offset % SEG, 0)
        stored = self.piece(again, s.id, offset, data[offset:], final=True)
        self.assertEqual(self.read(again, stored.cap), data)

    def short_of_holders(self, node: Node, sid: str, holders: int) -> None:
        """As if an earlier piece's first block had reached only ``holders`` holders (a row of ``underplaced``)."""
        s = node.session(sid)
        [(cid, _count)] = node.index.session_links(sid, s.blocks)[:1]
        node.index.db.execute("INSERT INTO underplaced VALUES (?, ?, ?)", (str(cid), b"k" * 32, b"h" * 32 * holders))

    def with_peers(self, node: Node, acks: int) -> None:
        """Peers that acknowledge every block placed: ``acks`` of them (no network)."""

        class Peers:
            def members(self) -> list[bytes]:
                return [bytes([i]) * 32 for i in range(3)]

        class Placing:
            def __init__(self, *args: object, **kwargs: object) -> None:
                pass

            def place(self, cid: object, block: object, key: object) -> object:
                return succeed([bytes([i]) * 32 for i in range(acks)])

        node.peers = Peers()  # type: ignore[assignment]
        self.patch(node_module, "Replicator", Placing)

    def test_answer_counts_the_earlier_pieces(self) -> None:
        """The final piece answers the fewest holders of any block of the file, earlier pieces' included."""
        self.with_peers(self.node, 3)
        data = os.urandom(4 * SEG + 5)
        s = self.node.open_session("r.bin")
        offset = self.piece(self.node, s.id, 0, data[: 3 * SEG])
        self.short_of_holders(self.node, s.id, 1)
        stored = self.piece(self.node, s.id, offset, data[offset:], final=True)
        self.assertEqual(stored.replicas, 1)
        other = self.node.open_session("r2.bin")
        self.assertEqual(self.piece(self.node, other.id, 0, data, final=True).replicas, 3)

    def test_min_replicas_covers_the_earlier_pieces(self) -> None:
        self.with_peers(self.node, 3)
        data = os.urandom(4 * SEG + 5)
        s = self.node.open_session("m.bin", min_replicas=2)
        offset = self.piece(self.node, s.id, 0, data[: 3 * SEG])
        self.short_of_holders(self.node, s.id, 1)
        up = self.node.resume_session(s.id, offset)
        up.write(data[offset:])
        e = self.failureResultOf(up.finish(), TooFewReplicas)
        self.assertIn("earlier pieces of this upload reached 1 holder(s), fewer than the 2 required", str(e.value))
        self.assertEqual(self.node.files(), [])  # no key points at a file short of holders
        self.assertEqual(self.node.session(s.id).offset, 4 * SEG)  # the session keeps all but the last segment
        # Once those blocks have more holders (the top-up), the last piece goes through.
        self.node.index.db.execute("DELETE FROM underplaced")
        stored = self.piece(self.node, s.id, 4 * SEG, data[4 * SEG:], final=True)
        self.assertEqual(stored.replicas, 3)

    def test_expiry(self) -> None:
        s = self.node.open_session("old.bin")
        self.piece(self.node, s.id, 0, os.urandom(2 * SEG + 1))
        used = self.node.store.used()
        self.assertGreater(used, 0)
        self.node.reactor.advance(SESSION_TTL - 1)
        self.assertEqual(self.node.expire_sessions(), 0)
        self.node.reactor.advance(1)
        self.assertRaises(SessionNotFound, self.node.session, s.id)
        self.assertEqual(self.node.expire_sessions(), 1)
        self.assertEqual(self.node.store.used(), 0)  # its blocks were collected

    def test_drop(self) -> None:
        s = self.node.open_session("d.bin")
        self.piece(self.node, s.id, 0, os.urandom(2 * SEG + 1))
        self.successResultOf(self.node.drop_session(s.id))
        self.assertRaises(SessionNotFound, self.node.session, s.id)
        self.assertEqual(self.node.store.used(), 0)


class SessionReviewTests(SynchronousTestCase):
    """Cases found in review: a failing final piece, concurrent pieces, drops during a piece."""

    def test_failure_at_the_end_of_the_final_piece_keeps_a_usable_session(self) -> None:
        data = os.urandom(2 * SEG + 100)
        node = make_node(self, segment_size=SEG, storage_limit=2 * (SEG + 16) + 116 + 20)  # blocks fit, the root not
        s = node.open_session("f.bin")
        up = node.resume_session(s.id, 0)
        up.write(data)
        self.failureResultOf(up.finish())
        self.assertEqual(node.session(s.id).offset, 2 * SEG)  # not past the file's end: the last is resent
        node.store.limit = None
        up = node.resume_session(s.id, 2 * SEG)
        up.write(data[2 * SEG:])
        stored = self.successResultOf(up.finish())
        f = self.successResultOf(node.open(stored.cap))
        sink = Collector()
        self.successResultOf(node.download(f).start(sink))
        self.assertEqual(sink.data, data)

    def test_one_piece_at_a_time(self) -> None:
        runner = ManualRunner()
        node = make_node(self, run=runner, segment_size=SEG)
        s = node.open_session("c.bin")
        up = node.resume_session(s.id, 0)
        up.write(os.urandom(3 * SEG))
        self.assertRaises(SessionBusy, node.resume_session, s.id, 0)
        self.assertRaises(SessionBusy, node.drop_session, s.id)
        node.reactor.advance(SESSION_TTL + 1)
        self.assertEqual(node.expire_sessions(), 0)  # not while a piece is being received
        d = up.checkpoint()
        runner.run_all()
        self.assertEqual(self.successResultOf(d), 2 * SEG)
        up = node.resume_session(s.id, 2 * SEG)  # free again once a piece ends
        up.abort("the client went away")
        self.failureResultOf(up.done)
        self.assertTrue(node.index.session(s.id))
        node.reactor.advance(SESSION_TTL + 1)  # the checkpoint renewed the expiry; the hourly sweep drops it now
        self.assertIsNone(node.index.session(s.id))
