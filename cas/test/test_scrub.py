"""The scrub (cas/node/scrub.py): a pass re-checks every stored block within ``--scrub-interval`` and at most
10% of disk time, keeps its place across restarts, corrects the accounting, and a corrupt copy on a holder is
quarantined and replaced from another holder (real nodes, in-process)."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from cas.base.cid import CID
from cas.node.scrub import CURSOR, DUTY, GROUPS

from .test_network import wait_for
from .test_replication import content, network, placed_blocks, put
from .util import make_node


def group_of(cid: CID) -> int:
    return cid.digest[0]


def run_for(clock: Any, seconds: float) -> None:
    """Advance ``clock`` by ``seconds``, one due call at a time (each scrub step schedules the next)."""
    end = clock.seconds() + seconds
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls()]
        nxt = min(due) if due else end
        if nxt > end:
            clock.advance(end - clock.seconds())
            return
        clock.advance(max(0.0, nxt - clock.seconds()))


class PassTests(SynchronousTestCase):
    def node_with_blocks(self, n: int, **kw: Any) -> tuple[Any, list[CID]]:
        node = make_node(self, **kw)
        cids = []
        for i in range(n):
            data = os.urandom(1000 + i)
            cid = CID.of(data)
            node.store.put(cid, data)
            cids.append(cid)
        return node, cids

    def test_a_pass_takes_about_the_interval_and_checks_every_block(self) -> None:
        node, cids = self.node_with_blocks(3, scrub_interval=1000)
        checked: list[CID] = []
        check = node.store.check
        node.store.check = lambda cid: checked.append(cid) or check(cid)  # type: ignore[method-assign]
        s = node.scrubber
        s.start_delay = 0
        s.start()
        self.addCleanup(s.stop)
        run_for(node.reactor, 900)  # not over yet at 90% of the interval ...
        self.assertEqual(s.passes, 0)
        run_for(node.reactor, 200)  # ... over by 110%
        self.assertEqual((s.passes, s.corrupt), (1, 0))
        self.assertEqual(sorted(map(str, checked[:3])), sorted(map(str, cids)))  # each block once in the pass

    def test_reads_take_at_most_a_tenth_of_the_disk_time(self) -> None:
        node, cids = self.node_with_blocks(2, scrub_interval=1)  # the interval alone would not slow it down
        s = node.scrubber
        s.start_delay = 0
        now = [0.0]

        def timer() -> float:  # every read of a block takes 1 s of disk time
            return now[0]

        s.timer = timer
        real_check = node.store.check

        def slow_check(cid: CID) -> Any:
            now[0] += 1.0
            return real_check(cid)

        node.store.check = slow_check  # type: ignore[method-assign]
        node.index.set_counter(CURSOR, min(group_of(c) for c in cids))
        s.start()
        self.addCleanup(s.stop)
        run_for(node.reactor, 0.001)
        self.assertEqual(s.checked, 1)
        run_for(node.reactor, (1 - DUTY) / DUTY - 0.1)  # 9 s of rest after 1 s of reading
        self.assertEqual(s.checked, 1)
        run_for(node.reactor, 1.0)
        self.assertEqual(s.checked, 2)

    def test_the_pass_goes_on_where_it_stopped(self) -> None:
        node, _cids = self.node_with_blocks(0, scrub_interval=GROUPS * 2)  # a second per group of shards
        s = node.scrubber
        s.start_delay = 0
        s.start()
        run_for(node.reactor, 100)
        s.stop()
        at = node.index.get_counter(CURSOR)
        self.assertIn(at, range(95, 101))
        run_for(node.reactor, 100)
        self.assertEqual(node.index.get_counter(CURSOR), at)  # stopped: no further
        s.start()
        self.addCleanup(s.stop)
        run_for(node.reactor, 10.5)
        self.assertEqual(node.index.get_counter(CURSOR), at + 10)  # and on from there, not from 0

    def test_a_deleted_block_file_is_counted_out(self) -> None:
        node, cids = self.node_with_blocks(2, scrub_interval=1)
        os.unlink(node.store._path(cids[0]))
        self.assertEqual(node.store.files(), 2)
        s = node.scrubber
        s.start_delay = 0
        node.index.set_counter(CURSOR, group_of(cids[0]))
        s.start()
        self.addCleanup(s.stop)
        run_for(node.reactor, 0.001)
        self.assertEqual((node.store.files(), node.store.used()), (1, 1001))
        self.assertEqual(s.corrected_bytes, 1000)


class CorruptionTests(TestCase):
    timeout = 60

    async def test_a_flipped_byte_on_a_holder_is_quarantined_and_replaced(self) -> None:
        _nodes, holder, cid, good = await self.setup_corrupt()
        with open(holder.node.store._path(cid), "r+b") as f:
            f.seek(len(good) // 2)
            f.write(bytes([good[len(good) // 2] ^ 1]))
        s = self.scrub_from(holder, group_of(cid))
        await wait_for(lambda: s.recovered == 1, "the corrupt copy replaced", 30)
        self.assertEqual(s.corrupt, 1)
        self.assertEqual(holder.node.store.get(cid), good)
        self.assertEqual(len(os.listdir(holder.node.store.quarantine_dir)), 1)
        self.assertTrue(holder.node.index.is_held(cid))
        status = holder.node.status()
        self.assertEqual(status["storage"]["quarantined"], len(good))
        self.assertEqual((status["scrub"]["corrupt"], status["scrub"]["recovered"]), (1, 1))

    @staticmethod
    def scrub_from(holder: Any, group: int) -> Any:
        """The holder's scrub started again at ``group``, at once, a whole pass in about 2 s."""
        s = holder.node.scrubber
        s.stop()
        s.start_delay, s.interval = 0, 2.0
        holder.node.index.set_counter(CURSOR, group)
        s.start()
        return s

    async def setup_corrupt(self) -> tuple[list[Any], Any, CID, bytes]:
        _net, nodes = await network(self, 5)
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(nodes[0], path)
        blocks = await placed_blocks(nodes[0], stored)
        holder = next(s for s in nodes[1:] if any(s.node.store.has(c) for c, _k in blocks))
        cid = next(c for c, _k in blocks if holder.node.store.has(c))
        return nodes, holder, cid, holder.node.store.get(cid)

    async def test_a_reader_given_bad_bytes_tells_the_holder_which_replaces_its_copy(self) -> None:
        from cas.base.errors import CorruptBlock

        nodes, holder, cid, good = await self.setup_corrupt()
        with open(holder.node.store._path(cid), "r+b") as f:
            f.write(bytes([good[0] ^ 0xFF]))
        reader = next(s for s in nodes[1:] if s is not holder)
        with self.assertRaises(CorruptBlock):  # the holder serves what is on its disk, unchecked
            await reader.peers.get_block(holder.node.identity.node_id, cid)
        s = holder.node.scrubber
        await wait_for(lambda: s.recovered == 1, "the reported copy replaced", 30)
        self.assertEqual(s.corrupt, 1)
        self.assertEqual(bytes(await reader.peers.get_block(holder.node.identity.node_id, cid)), good)
        self.assertEqual(len(holder.peers.track), 0)

    async def test_a_report_of_a_good_copy_counts_against_the_reporter_and_reports_are_rate_limited(self) -> None:
        from cas.peer import frames
        from cas.peer.connection import RemoteError
        from cas.peer.peers import REPORTS_PER_MINUTE

        nodes, holder, cid, _good = await self.setup_corrupt()
        liar = next(s for s in nodes[1:] if s is not holder)
        me, there = liar.node.identity.node_id, holder.node.identity.node_id
        for i in range(REPORTS_PER_MINUTE):
            r = await liar.peers.request(there, frames.REPORT, {"cid": cid.to_bytes()})
            self.assertEqual(r.header, {"found": "good"})
            self.assertEqual(holder.peers.track.get(me).false_reports, i + 1)  # type: ignore[union-attr]
        with self.assertRaises(RemoteError) as e:
            await liar.peers.request(there, frames.REPORT, {"cid": cid.to_bytes()})
        self.assertIn("10 REPORTs a minute", str(e.exception))
        self.assertEqual((holder.node.scrubber.corrupt, holder.node.store.get(cid) == _good), (0, True))
        absent = CID.of(b"never stored")
        r = await nodes[0].peers.request(there, frames.REPORT, {"cid": absent.to_bytes()})
        self.assertEqual(r.header, {"found": "absent"})

    async def test_a_block_file_deleted_behind_the_nodes_back_is_fetched_again(self) -> None:
        nodes, holder, cid, good = await self.setup_corrupt()
        used = holder.node.store.used()
        os.unlink(holder.node.store._path(cid))
        s = self.scrub_from(holder, 0)
        await wait_for(lambda: s.recovered == 1, "the deleted block fetched again", 30)
        self.assertEqual(s.missing, 1)
        self.assertEqual(holder.node.store.get(cid), good)
        await wait_for(lambda: s.passes >= 1, "a whole pass", 30)
        self.assertEqual(holder.node.store.used(), used)  # counted out (reconcile) and in again (put), or just kept


class RetryTests(SynchronousTestCase):
    def node_asking(self, answer: Any) -> tuple[Any, list[CID]]:
        """A node with one peer whose every fetch of a block is noted and answered by ``answer()``."""
        from twisted.internet.defer import succeed

        node = make_node(self)
        asked: list[CID] = []

        class Peers:
            def members(self) -> list[bytes]:
                return [b"a" * 32]

        node.peers = Peers()  # type: ignore[assignment]
        node.placement_key = lambda cid: succeed(b"k")  # type: ignore[method-assign]
        node.retrieve = lambda cid, key: asked.append(cid) or answer()  # type: ignore
        return node, asked

    def test_a_block_no_node_could_send_is_tried_once_more_then_left_to_the_next_pass(self) -> None:
        from twisted.internet.defer import fail

        from cas.base.errors import BlockNotFound
        from cas.node.scrub import RETRY

        node, asked = self.node_asking(lambda: fail(BlockNotFound("nobody has it")))
        cid = CID.of(b"lost")
        node.index.add_refs("file:x", [cid])  # a block of a file of this node's, gone from its disk
        s = node.scrubber
        self.assertFalse(self.successResultOf(s.found_corrupt(cid, "test")))
        self.assertEqual(len(asked), 1)
        node.reactor.advance(RETRY)
        self.assertEqual(len(asked), 2)  # tried again once ...
        node.reactor.advance(10 * RETRY)
        self.assertEqual(len(asked), 2)  # ... then left to the next pass
        self.assertEqual((s.corrupt, s.unrecovered, s.recovered), (1, 2, 0))
        self.assertEqual(s._retries, {})

    def test_a_block_collected_meanwhile_is_not_fetched_back(self) -> None:
        from twisted.internet.defer import succeed

        node, asked = self.node_asking(lambda: succeed(b"x"))
        self.assertFalse(self.successResultOf(node.scrubber.recover(CID.of(b"x"))))  # nothing refers to it
        self.assertEqual(asked, [])
        self.assertFalse(node.store.has(CID.of(b"x")))


class IndexWalkTests(SynchronousTestCase):
    def test_a_node_started_mid_pass_still_walks_every_row_before_the_pass_ends(self) -> None:
        node = make_node(self, scrub_interval=GROUPS * 2)
        cids = [CID.of(bytes([i])) for i in range(40)]
        node.index.add_refs("file:x", cids)  # recorded here, no file on disk: each one is looked for
        looked: list[CID] = []
        node.scrubber.recover = lambda cid: looked.append(cid) or None  # type: ignore[method-assign]
        node.index.set_counter(CURSOR, 250)  # a restart six groups before the pass ends
        s = node.scrubber
        s.start_delay = 0
        s.start()
        self.addCleanup(s.stop)
        run_for(node.reactor, 6 * 1.0 + 0.5)  # a second per group: up to group 0
        self.assertEqual(set(looked), set(cids))  # (group 0 starts the next pass: a row may come twice)

