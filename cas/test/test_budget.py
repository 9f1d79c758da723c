"""The node-wide buffer budget and uploads sharing it."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from cas.base.budget import Budget
from cas.base.errors import Busy, StorageLimitExceeded
from cas.test.util import Collector, FakeProducer, ManualRunner, make_node

SEG = 64 * 1024


class BudgetTests(SynchronousTestCase):
    def test_take_give(self) -> None:
        b = Budget(100)
        self.assertTrue(b.take(60))
        self.assertFalse(b.take(50))
        self.assertTrue(b.take(40))
        b.give(100)
        self.assertTrue(b.take(150))  # larger than the budget: goes when nothing else is taken
        self.assertFalse(b.take(1))
        b.give(150)
        self.assertEqual(b.used, 0)
        self.assertRaises(AssertionError, b.give, 1)
        self.assertRaises(ValueError, Budget, 0)

    def test_a_waiter_that_does_not_fit_waits_again(self) -> None:
        b = Budget(10)
        b.take(9)
        calls: list[int] = []

        def retry() -> None:
            calls.append(1)
            if not b.take(5):
                b.wait(retry)

        b.wait(retry)
        b.give(1)  # 8 taken: 5 does not fit; woken once, not in a loop
        self.assertEqual(len(calls), 1)
        b.give(8)
        self.assertEqual((len(calls), b.used), (2, 5))

    def test_waiters_in_order_once(self) -> None:
        b = Budget(10)
        b.take(10)
        calls: list[str] = []
        b.wait(lambda: calls.append("a"))
        b.wait(lambda: calls.append("b"))
        gone = lambda: calls.append("gone")  # noqa: E731
        b.wait(gone)
        b.forget(gone)
        b.give(5)
        self.assertEqual(calls, ["a", "b"])
        b.give(5)
        self.assertEqual(calls, ["a", "b"])  # one call per wait


    def test_no_queue_jumping(self) -> None:
        """While a waiter is queued, nobody else takes; the waiter, when woken, does."""
        b = Budget(10)
        b.take(8)
        order: list[str] = []

        def waiter() -> None:
            if b.take(5):
                order.append("waiter")
            else:
                b.wait(waiter)

        b.wait(waiter)
        self.assertFalse(b.take(1))  # would fit, but someone waits
        b.give(4)  # 4 used: the waiter takes its 5
        self.assertEqual((order, b.used), (["waiter"], 9))
        self.assertTrue(b.take(1))

    def test_downloads_hold_at_most_half(self) -> None:
        b = Budget(10)
        self.assertTrue(b.take(5, download=True))
        self.assertFalse(b.take(1, download=True))
        self.assertTrue(b.take(5))  # uploads use the rest
        b.force(1)  # a download with nothing in flight still goes: past the budget, counted apart
        self.assertEqual((b.used, b.downloads, b.forced), (11, 5, 1))
        b.give(1, download=True, forced=True)
        b.give(5, download=True)
        b.give(5)
        self.assertEqual((b.used, b.downloads, b.forced), (0, 0, 0))
        self.assertRaises(AssertionError, b.give, 1, True)

    def test_forced_segments_do_not_lock_uploads_out(self) -> None:
        """However many readers force a segment each, uploads keep the half downloads cannot take."""
        b = Budget(16)
        self.assertTrue(b.take(8, download=True))  # readers at their half (paused, say)
        for _ in range(8):
            b.force(1)  # 8 more readers, one block each
        self.assertTrue(b.take(2))
        self.assertTrue(b.take(6))
        self.assertFalse(b.take(1))

    def test_two_waiters_first_come_first_served(self) -> None:
        """The woken waiter takes although another still waits behind it; nobody else overtakes them."""
        b = Budget(10)
        b.take(10)
        got: list[str] = []

        def waiter(name: str, n: int) -> None:
            if b.take(n):
                got.append(name)
            else:
                b.wait(lambda: waiter(name, n))

        b.wait(lambda: waiter("first", 4))
        b.wait(lambda: waiter("second", 4))
        b.give(4)  # room for one: the first takes it, the second waits again (last)
        self.assertEqual(got, ["first"])
        self.assertFalse(b.take(1))  # an upload arriving now queues behind the second
        b.give(4)
        self.assertEqual(got, ["first", "second"])

    def test_a_failing_waiter_does_not_stop_the_others(self) -> None:
        b = Budget(10)
        b.take(10)
        got: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        b.wait(broken)
        b.wait(lambda: got.append("next") if b.take(2) else None)
        b.give(5)
        self.assertEqual(got, ["next"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SharedBudgetTests(SynchronousTestCase):
    """Two uploads on a node whose budget holds 2 segments in flight (each costs 2 x SEG)."""

    def setUp(self) -> None:
        self.runner = ManualRunner()
        self.node = make_node(self, run=self.runner, segment_size=SEG, buffer_budget=4 * SEG)

    def upload(self, name: str) -> tuple:
        up = self.node.upload(name)
        p = FakeProducer()
        up.registerProducer(p, True)
        return up, p

    def test_second_upload_waits_then_completes(self) -> None:
        a, pa = self.upload("a")
        b, pb = self.upload("b")
        da, db = os.urandom(3 * SEG + 5), os.urandom(3 * SEG + 7)
        a.write(da)  # 3 full segments: 2 fit the budget, the 3rd waits
        self.assertEqual(self.node.budget.used, 4 * SEG)
        self.assertTrue(pa.paused)
        b.write(db)  # b waits too, behind a, with nothing in flight: the budget is never exceeded
        self.assertEqual(self.node.budget.used, 4 * SEG)
        self.assertTrue(pb.paused)
        a.unregisterProducer()
        b.unregisterProducer()
        fa, fb = a.finish(), b.finish()
        for _ in range(200):
            if fa.called and fb.called:
                break
            self.runner.run_all()
        self.assertEqual(self.node.budget.used, 0)
        sa, sb = self.successResultOf(fa), self.successResultOf(fb)
        self.assertEqual((sa.size, sb.size), (len(da), len(db)))
        for cap, data in ((sa.cap, da), (sb.cap, db)):
            f = self.settle(self.node.open(cap))
            sink = Collector()
            self.settle(self.node.download(f).start(sink))
            self.assertEqual(sink.data, data)

    def settle(self, d):  # type: ignore[no-untyped-def]
        for _ in range(100):
            if d.called:
                break
            self.runner.run_all()
        return self.successResultOf(d)

    def test_failure_while_waiting_gives_everything_back(self) -> None:
        a, _pa = self.upload("a")
        a.write(os.urandom(4 * SEG))  # 2 in flight, 1 full segment waiting for budget
        a.abort("the client went away")
        self.runner.run_all()
        self.failureResultOf(a.done)
        self.assertEqual(self.node.budget.used, 0)
        b, _pb = self.upload("b")
        b.write(os.urandom(SEG + 1))
        b.unregisterProducer()
        d = b.finish()
        for _ in range(50):
            if d.called:
                break
            self.runner.run_all()
        self.successResultOf(d)

    def test_storage_failure_while_waiting(self) -> None:
        node = make_node(self, run=self.runner, segment_size=SEG, buffer_budget=4 * SEG, storage_limit=3 * SEG)
        up = node.upload("big")
        up.write(os.urandom(8 * SEG))
        for _ in range(50):
            if up.done.called:
                break
            self.runner.run_all()
        self.failureResultOf(up.done, StorageLimitExceeded)
        self.assertEqual(node.budget.used, 0)


class BusyTests(SynchronousTestCase):
    def test_too_many_uploads(self) -> None:
        node = make_node(self, max_uploads=2)
        ups = [node.upload("a"), node.upload("b")]
        with self.assertRaises(Busy):
            node.upload("c")
        ups[0].write(b"x")
        self.successResultOf(ups[0].finish())
        node.upload("c")  # room again
