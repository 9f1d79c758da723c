"""Collection of blocks whose leases ended (cas/store/expiry.py), on a ``task.Clock``: expiry, release,
renewal, the second look one period later, the 10% spread, and blocks written meanwhile."""

from __future__ import annotations

import os

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID
from cas.network.placement import manifest_key
from cas.node.core import Node
from cas.store.expiry import PERIOD

from .test_leases import KEY, KEY2, A, B, check_accounting, hold
from .util import ManualRunner, make_node


def settle(node: Node, seconds: float) -> None:
    """Advance the node's clock by ``seconds``, one second at a time, running what becomes due."""
    for _ in range(int(seconds)):
        node.reactor.advance(1)  # type: ignore[attr-defined]
        for _ in range(5):
            node.reactor.advance(0)  # type: ignore[attr-defined]  # the batches of a pass


class ExpiryTests(SynchronousTestCase):
    def test_expired_lease_then_one_more_period(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        cid = CID.of(block)
        self.successResultOf(hold(node, A, block, lease=100))
        settle(node, 100 + PERIOD)  # expired, found by a pass: the key is unleased, the block still here
        self.assertEqual(node.index.leases.holders(KEY), [])
        self.assertEqual(node.held_bytes(), 0)
        self.assertTrue(node.store.has(cid))
        settle(node, PERIOD)  # the next pass collects it: the block and its holds row
        self.assertFalse(node.store.has(cid))
        self.assertEqual(node.index.holds_of(cid), [])
        self.assertEqual(node.expiry.collected_blocks, 1)
        check_accounting(self, node)

    def test_renewal_keeps_the_blocks(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        self.successResultOf(hold(node, A, block, lease=100))
        for _ in range(5):
            settle(node, 90)
            self.assertEqual(self.successResultOf(node.lease(A, [KEY], 100)), (100, [True], [True]))
        settle(node, 90)
        self.assertTrue(node.store.has(CID.of(block)))
        self.assertEqual(node.held_bytes(), 1000)

    def test_released_block_goes_within_two_periods(self) -> None:
        node = make_node(self)
        kept, gone = os.urandom(500), os.urandom(700)
        self.successResultOf(hold(node, A, kept, key=KEY2))
        self.successResultOf(hold(node, A, gone))
        self.successResultOf(hold(node, B, gone))
        settle(node, 7)
        node.release(A, [KEY])
        settle(node, 2 * PERIOD)
        self.assertTrue(node.store.has(CID.of(gone)))  # B's lease keeps it
        node.release(B, [KEY])
        settle(node, 2 * PERIOD)
        self.assertFalse(node.store.has(CID.of(gone)))
        self.assertTrue(node.store.has(CID.of(kept)))
        self.assertEqual(node.held_bytes(), 500)

    def test_a_lease_back_within_the_period_saves_the_blocks(self) -> None:
        node = make_node(self)
        block = os.urandom(100)
        self.successResultOf(hold(node, A, block))
        settle(node, PERIOD - 1)
        node.release(A, [KEY])
        settle(node, 2)  # a pass has seen the key unleased
        self.successResultOf(hold(node, A, block))  # placed again (a repair, a second upload)
        settle(node, 3 * PERIOD)
        self.assertTrue(node.store.has(CID.of(block)))

    def test_a_block_the_owner_stores_too_is_kept(self) -> None:
        node = make_node(self)
        up = node.upload("mine")
        up.write(b"x" * 100)
        stored = self.successResultOf(up.finish())
        raw = node.store.read(stored.cap.root)
        key = manifest_key(stored.cap.root.to_bytes())
        self.successResultOf(hold(node, A, bytes(raw), key=key))
        node.release(A, [key])
        settle(node, 3 * PERIOD)
        self.assertTrue(node.store.has(stored.cap.root))  # the owner's file needs it
        self.assertEqual(node.index.holds_of(stored.cap.root), [])

    def test_a_mass_expiry_is_spread_and_warned_about(self) -> None:
        node = make_node(self)
        node.expiry.share, node.expiry.min_budget = 0.0, 2500
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        blocks = [os.urandom(1000) for _ in range(10)]
        for i, b in enumerate(blocks):
            self.successResultOf(hold(node, A, b, key=KEY + bytes([i])))
        node.release(A, [KEY + bytes([i]) for i in range(10)])
        settle(node, 2 * PERIOD)
        left = sum(node.store.has(CID.of(b)) for b in blocks)
        self.assertEqual(left, 7)  # 3 x 1000 bytes: the pass stopped once past its budget
        warnings = [e for e in events if "several passes" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        settle(node, 4 * PERIOD)
        self.assertEqual(sum(node.store.has(CID.of(b)) for b in blocks), 0)

    def test_a_block_written_during_the_pass_is_kept(self) -> None:
        runner = ManualRunner()
        node = make_node(self, run=runner)
        block = os.urandom(100)
        d = node.hold_block(A.hex(), CID.of(block), block, KEY, 100)
        runner.run_all()
        node.reactor.advance(0)
        self.successResultOf(d)
        settle(node, 100 + PERIOD)
        runner.run_all()
        settle(node, PERIOD)  # the second look: rows gone, the delete job queued
        again = node.hold_block(A.hex(), CID.of(block), block, KEY, 100)  # the same block sent again: pinned
        runner.run_all()
        node.reactor.advance(0)
        self.successResultOf(again)
        runner.run_all()
        self.assertTrue(node.store.has(CID.of(block)))
        self.assertEqual(node.index.leases.holders(KEY), [A])
