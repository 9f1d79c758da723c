"""Audits (cas/network/audit.py) and track records (cas/peer/track.py): an honest holder passes, one that
lost or throws away its copy fails within the deadline, is asked last by readers, skipped by uploads, and its
copy is repaired at once; challenges are rate-limited; the record table is bounded."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cas.base.cid import CID
from cas.base.errors import BlockNotFound
from cas.network.audit import DAY, PER_HOUR, Auditor, proof
from cas.network.placement import Rendezvous
from cas.network.replication import Replicator
from cas.peer.track import TrackRecords

from .test_network import wait_for
from .test_replication import content, network, placed_blocks, put


class TrackRecordTests(SynchronousTestCase):
    def test_bounded_least_recent_first(self) -> None:
        t = TrackRecords(lambda: 0.0, limit=3)
        for i in range(5):
            t.audit_ok(bytes([i]) * 32)
        self.assertEqual(len(t), 3)
        self.assertIsNone(t.get(b"\x00" * 32))
        self.assertIsNotNone(t.get(b"\x04" * 32))

    def test_failing_is_recent_and_cleared_by_a_pass(self) -> None:
        now = [1000.0]
        t = TrackRecords(lambda: now[0], recent=100.0)
        n = b"n" * 32
        self.assertFalse(t.failing(n))
        t.audit_failed(n, "a wrong answer")
        self.assertTrue(t.failing(n))
        now[0] += 101
        self.assertFalse(t.failing(n))  # old news
        t.audit_failed(n, "no answer")
        now[0] += 1
        t.audit_ok(n)
        self.assertFalse(t.failing(n))  # it answered right since
        self.assertEqual(t.describe(n), {"audits_ok": 1, "audits_failed": 2, "false_reports": 0, "failing": False,
                                         "last_failure": "no answer"})

    def test_proof_is_keyed_by_the_nonce(self) -> None:
        block = os.urandom(5000)
        a, b = os.urandom(32), os.urandom(32)
        self.assertNotEqual(proof(block, a, 10, 100), proof(block, b, 10, 100))
        self.assertNotEqual(proof(block, a, 10, 100), proof(block, a, 11, 100))
        self.assertEqual(proof(block, a, 4990, 100), proof(block[4990:], a, 0, 10))  # cut at the block's end


class IntervalTests(SynchronousTestCase):
    def test_a_day_per_key_at_most_per_hour(self) -> None:
        class Leases:
            n = 0

            def count_held_keys(self) -> int:
                return self.n

        class Index:
            leases = Leases()
            files = 0

            def count(self) -> int:
                return self.files

        node = type("N", (), {"index": Index()})()
        a = Auditor(node, None, None)
        self.assertEqual(a.interval(), DAY)  # no key (or one): once a day
        node.index.leases.n = 90
        node.index.files = 10  # the owner's files count like keys
        self.assertEqual(a.interval(), DAY / 100)
        node.index.leases.n = 100_000
        self.assertEqual(a.interval(), 3600 / PER_HOUR)


def fake_peers() -> tuple[Any, list[bytes]]:
    """Six members and a track record, as an upload or a read sees them; the rank of ``b"key"`` over them."""
    members = [bytes([i]) * 32 for i in range(6)]

    class Peers:
        node_id = b"o" * 32
        track = TrackRecords(lambda: 0.0)

        def members(self) -> list[bytes]:
            return members

        def in_flight(self, node: bytes) -> int:
            return 0

    return Peers(), Rendezvous().rank(b"key", members)


class KindTests(SynchronousTestCase):
    def test_owner_and_holder_audits_in_proportion_to_files_and_held_keys(self) -> None:
        import random

        class Leases:
            def count_held_keys(self) -> int:
                return 300

        class Index:
            leases = Leases()

            def count(self) -> int:
                return 100

        node = type("N", (), {"index": Index()})()
        a = Auditor(node, None, None, rng=random.Random(7))
        kinds: list[str] = []

        async def own() -> None:
            kinds.append("own")

        async def held() -> None:
            kinds.append("held")

        a._audit_own, a._audit_next = own, held  # type: ignore[method-assign]
        for _ in range(4000):
            a.audit_next()
        self.assertLess(abs(kinds.count("own") / len(kinds) - 0.25), 0.03)


class UploadTests(SynchronousTestCase):
    def test_an_upload_skips_a_peer_that_failed_an_audit(self) -> None:
        peers, rank = fake_peers()
        peers.track.audit_failed(rank[0], "no answer")
        r = Replicator(peers, Rendezvous(), 3)  # type: ignore[arg-type]
        self.assertEqual(r._key(b"key").holders, rank[1:4])


class ReaderTests(SynchronousTestCase):
    def test_a_reader_asks_a_holder_that_failed_an_audit_last(self) -> None:
        from twisted.internet.task import Clock

        from cas.network.retrieval import BlockTimes, Retriever

        peers, rank = fake_peers()
        r = Retriever(peers, Rendezvous(), 3, times=BlockTimes(Clock()))  # type: ignore[arg-type]
        self.assertEqual(r.candidates(b"key")[:3], rank[:3])
        peers.track.audit_failed(rank[0], "no answer")
        self.assertEqual(r.candidates(b"key")[:3], [rank[1], rank[2], rank[0]])


class AuditTests(TestCase):
    timeout = 60

    async def setup_file(self) -> tuple[list[Any], Any, Any, CID, bytes]:
        """5 nodes, a file put on the first: (nodes, a holder, another holder of one of its blocks, the block,
        its key)."""
        _net, nodes = await network(self, 5)
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(nodes[0], path)
        blocks = await placed_blocks(nodes[0], stored)
        for cid, key in blocks:
            holding = [s for s in nodes[1:] if s.node.store.has(cid)]
            if len(holding) >= 2:
                return nodes, holding[0], holding[1], cid, key
        raise AssertionError("no block with two holders")

    async def test_an_honest_holder_passes(self) -> None:
        nodes, holder, auditor, cid, key = await self.setup_file()
        them = holder.node.identity.node_id
        self.assertIs(await auditor.auditor.challenge(them, key, cid), True)
        self.assertEqual(auditor.peers.track.describe(them)["audits_ok"], 1)
        self.assertIs(await auditor.auditor.audit_next(), True)  # the sweep finds a claimed copy and checks it

    async def test_a_holder_that_threw_its_copy_away_fails_and_the_copy_is_repaired(self) -> None:
        nodes, holder, auditor, cid, key = await self.setup_file()
        them = holder.node.identity.node_id
        holder.node.prove = lambda *a: fail(BlockNotFound("thrown away"))  # still says HAS yes, cannot prove

        def besides() -> int:  # copies on nodes other than the failing holder (and the origin)
            return sum(1 for s in nodes[1:] if s is not holder and s.node.store.has(cid))

        before = besides()
        self.assertIs(await auditor.auditor.challenge(them, key, cid), False)
        self.assertTrue(auditor.peers.track.failing(them))
        self.assertIn("no answer", auditor.peers.track.describe(them)["last_failure"])
        # repair follows at once from the auditor, the failing copy counted as lost: 3 copies besides it
        await wait_for(lambda: besides() >= 3, "3 copies besides the failing holder's", 30)
        if before < 3:
            self.assertGreater(auditor.repairer.blocks_sent, 0)


    async def test_a_holder_that_answers_wrong_or_late_fails(self) -> None:
        nodes, holder, auditor, cid, key = await self.setup_file()
        them = holder.node.identity.node_id
        real = holder.node.prove
        holder.node.prove = lambda c, nonce, o, n: real(c, os.urandom(32), o, n)  # not the bytes asked for
        self.assertIs(await auditor.auditor.challenge(them, key, cid), False)
        self.assertEqual(auditor.peers.track.describe(them)["last_failure"], "a wrong answer")
        holder.node.prove = lambda *a: Deferred()  # never answers
        auditor.auditor.deadline = 0.5
        self.assertIs(await auditor.auditor.challenge(them, key, cid), False)
        self.assertIn("no answer", auditor.peers.track.describe(them)["last_failure"])

    async def test_challenges_are_rate_limited(self) -> None:
        from cas.peer import frames
        from cas.peer.connection import RemoteError
        from cas.peer.peers import CHALLENGES_PER_MINUTE

        nodes, holder, auditor, cid, _key = await self.setup_file()
        them = holder.node.identity.node_id
        header = {"cid": cid.to_bytes(), "nonce": b"n" * 32, "offset": 0, "length": 10}
        for _ in range(CHALLENGES_PER_MINUTE):
            r = await auditor.peers.request(them, frames.CHALLENGE, header)
            self.assertEqual(r.header["mac"], proof(holder.node.store.get(cid), b"n" * 32, 0, 10))
        with self.assertRaises(RemoteError) as e:
            await auditor.peers.request(them, frames.CHALLENGE, header)
        self.assertIn("10 CHALLENGEs a minute", str(e.exception))
        # a busy answer is no verdict: nothing counts against the holder
        self.assertIsNone(await auditor.auditor.challenge(them, _key, cid))
        self.assertIsNone(auditor.peers.track.describe(them))

    async def test_the_owner_audits_its_holders_and_replaces_a_lost_copy(self) -> None:
        nodes, holder, _auditor, cid, key = await self.setup_file()
        origin = nodes[0].auditor
        origin.own_next = True  # the next audit is the owner's: a random block of its file, at a recorded holder
        self.assertIs(await origin.audit_next(), True)
        self.assertEqual(origin.passed, 1)
        them = holder.node.identity.node_id
        holder.node.prove = lambda *a: fail(BlockNotFound("thrown away"))

        def besides() -> int:  # copies on nodes other than the failing holder (and the origin)
            return sum(1 for s in nodes[1:] if s is not holder and s.node.store.has(cid))

        before = besides()
        self.assertIs(await origin.challenge(them, key, cid, owner=True), False)
        # the origin sends the block to the next node of the rank, whoever else holds it, until 3 others do
        await wait_for(lambda: besides() >= 3, "3 copies besides the failing holder's", 30)
        if before < 3:  # (a loaded machine may have left a 4th copy at upload: then nothing was missing)
            self.assertGreater(nodes[0].repairer.topped_up, 0)
