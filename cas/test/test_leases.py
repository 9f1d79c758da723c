"""Leases on blocks held for others (cas/store/leases.py) and the node's rules for them (``Node.hold_block``,
``Node.lease``, ``Node.release``): who may lease what, for how long, within which share, and the accounting."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cas.base.cid import CID
from cas.base.errors import NotInRank, QuotaExceeded
from cas.network.placement import RANK_SLACK, Rendezvous
from cas.node.core import Node
from cas.store.leases import LEASE_TIME, MAX_LEASE_TIME, legacy_key

from .util import make_node

A = bytes.fromhex("ab" * 32)
B = bytes.fromhex("cd" * 32)
KEY = b"cas/stripe/v1" + b"k" * 25
KEY2 = b"cas/stripe/v1" + b"j" * 25


def hold(node: Node, peer: bytes, block: bytes, key: bytes | None = KEY, lease: int | None = 3600) -> Deferred[bool]:
    d = node.hold_block(peer.hex(), CID.of(block), block, key, lease)
    node.reactor.advance(0)  # type: ignore[attr-defined]  # the batched record commits on the next turn
    return d


def check_accounting(tc: SynchronousTestCase, node: Node) -> None:
    """The running figures equal those derived from the tables."""
    book = node.index.leases

    def figures() -> tuple:
        return (book.leased_bytes, {h: n for h, n in book.peer_bytes.items() if n}, dict(book.peer_keys),
                book.db.execute("SELECT key, bytes FROM held_keys WHERE bytes != 0 ORDER BY key").fetchall())

    running = figures()
    book.recount()
    tc.assertEqual(running, figures())


class HoldTests(SynchronousTestCase):
    def test_block_recorded_with_its_lease(self) -> None:
        node = make_node(self)
        node.reactor.advance(1000)
        block = os.urandom(1000)
        self.assertTrue(self.successResultOf(hold(node, A, block, lease=3600)))
        self.assertEqual(node.index.leases.expiry(KEY, A), 1000 + 3600)  # on this node's clock
        self.assertEqual(node.held_bytes(), 1000)
        # asking for more than --max-lease-time gets --max-lease-time
        self.successResultOf(hold(node, B, block, lease=10 * MAX_LEASE_TIME))
        self.assertEqual(node.index.leases.expiry(KEY, B), 1000 + MAX_LEASE_TIME)
        self.assertEqual(node.held_bytes(), 1000)  # a second lease adds no bytes
        self.assertEqual(node.index.leases.peer_bytes[B], 1000)  # but counts in B's share
        check_accounting(self, node)

    def test_a_renewal_never_shortens(self) -> None:
        node = make_node(self)
        block = os.urandom(100)
        self.successResultOf(hold(node, A, block, lease=5000))
        self.successResultOf(hold(node, A, block, lease=10))
        self.assertEqual(node.index.leases.expiry(KEY, A), 5000)

    def test_a_version_1_sender_gets_the_longest_lease_under_its_own_key(self) -> None:
        node = make_node(self)
        block = os.urandom(100)
        self.successResultOf(hold(node, A, block, key=None, lease=None))
        self.assertEqual(node.index.hold_keys(CID.of(block)), {legacy_key(A)})
        self.assertEqual(node.index.leases.expiry(legacy_key(A), A), MAX_LEASE_TIME)

    def test_share_per_peer(self) -> None:
        node = make_node(self, peer_share=2500)
        blocks = [os.urandom(1000) for _ in range(3)]
        self.successResultOf(hold(node, A, blocks[0]))
        self.successResultOf(hold(node, A, blocks[1], key=KEY2))
        f = self.failureResultOf(hold(node, A, blocks[2]), QuotaExceeded)
        self.assertIn("share is 2500", f.getErrorMessage())
        self.assertFalse(node.store.has(CID.of(blocks[2])))  # refused before any write
        self.successResultOf(hold(node, B, blocks[2]))  # another peer has a share of its own
        check_accounting(self, node)

    def test_default_share_is_a_sixteenth_of_the_quota_or_1_gib(self) -> None:
        self.assertEqual(make_node(self, quota=64 << 30).peer_share, 4 << 30)
        self.assertEqual(make_node(self, quota=2 << 30).peer_share, 1 << 30)
        self.assertIsNone(make_node(self).peer_share)

    def test_lease_count_per_peer(self) -> None:
        node = make_node(self, max_leases=2)
        for i in range(2):
            self.successResultOf(hold(node, A, os.urandom(10), key=KEY + bytes([i])))
        f = self.failureResultOf(hold(node, A, os.urandom(10), key=KEY + b"\xff"), QuotaExceeded)
        self.assertIn("2 leases", f.getErrorMessage())
        self.successResultOf(hold(node, A, os.urandom(10), key=KEY + b"\x00"))  # more under a key it has

    def test_only_among_the_first_n_plus_4_in_rank(self) -> None:
        node = make_node(self, replicas=3)
        members = [bytes([i]) * 32 for i in range(1, 21)]
        me = bytes([99]) * 32

        class Peers:
            node_id = me

            def members(self) -> list[bytes]:
                return members

        node.peers = Peers()
        far = near = None
        for i in range(200):
            key = KEY + i.to_bytes(2, "big")
            place = Rendezvous().rank(key, [*members, me]).index(me)
            if place >= 3 + RANK_SLACK and far is None:
                far = key
            if place < 3 + RANK_SLACK and near is None:
                near = key
        assert far is not None and near is not None
        f = self.failureResultOf(hold(node, A, os.urandom(10), key=far), NotInRank)
        self.assertIn("first 7 holders", f.getErrorMessage())
        self.successResultOf(hold(node, A, os.urandom(10), key=near))


class LeaseReleaseTests(SynchronousTestCase):
    def test_lease_only_where_a_block_is_held(self) -> None:
        node = make_node(self)
        self.successResultOf(hold(node, A, os.urandom(10)))
        granted, ok, complete = self.successResultOf(node.lease(B, [KEY, KEY2], 10 * MAX_LEASE_TIME))
        self.assertEqual((granted, ok, complete), (MAX_LEASE_TIME, [True, False], [True, False]))
        self.assertEqual(node.index.leases.holders(KEY), [A, B])
        self.assertEqual(node.index.leases.holders(KEY2), [])
        check_accounting(self, node)

    def test_a_renewal_says_whether_every_block_under_the_key_is_still_here(self) -> None:
        node = make_node(self)
        blocks = [os.urandom(10) for _ in range(3)]
        for b in blocks:
            self.successResultOf(hold(node, A, b))
        self.successResultOf(hold(node, A, os.urandom(10), key=KEY2))
        self.assertEqual(self.successResultOf(node.lease(A, [KEY, KEY2], 100))[2], [True, True])
        os.remove(node.store._path(CID.of(blocks[1])))  # lost from the disk behind the index's back
        granted, ok, complete = self.successResultOf(node.lease(A, [KEY, KEY2], 100))
        self.assertEqual((ok, complete), ([True, True], [False, True]))

    def test_release_only_ones_own_lease(self) -> None:
        node = make_node(self)
        block = os.urandom(10)
        self.successResultOf(hold(node, A, block))
        self.assertEqual(node.release(B, [KEY]), [False])  # B holds no lease there: A's stays
        self.assertEqual(node.index.leases.holders(KEY), [A])
        self.assertEqual(node.release(A, [KEY, KEY2]), [True, False])
        self.assertEqual(node.index.leases.holders(KEY), [])
        self.assertEqual(node.held_bytes(), 0)  # collectable blocks never count
        self.assertTrue(node.store.has(CID.of(block)))  # until the collector's second look
        check_accounting(self, node)

    def test_accounting_survives_a_restart(self) -> None:
        node = make_node(self)
        for i in range(5):
            self.successResultOf(hold(node, A if i % 2 else B, os.urandom(100 + i), key=KEY + bytes([i % 3])))
        node.release(B, [KEY + b"\x00"])
        figures = (node.held_bytes(), dict(node.index.leases.peer_bytes), dict(node.index.leases.peer_keys))
        again = Node(node.datadir, node.reactor, run=node.run)
        self.addCleanup(again.stop)
        self.assertEqual((again.held_bytes(), dict(again.index.leases.peer_bytes), dict(again.index.leases.peer_keys)),
                         figures)


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(LEASE_TIME, 31 * 86400)
        node: Any = make_node(self)
        self.assertEqual((node.lease_time, node.max_lease_time, node.max_leases), (LEASE_TIME, MAX_LEASE_TIME, 100_000))


class LeasedBlocksTests(SynchronousTestCase):
    def test_legacy_keys_do_not_count_as_leased(self) -> None:
        node = make_node(self)
        leased, legacy, expired = os.urandom(10), os.urandom(11), os.urandom(12)
        self.successResultOf(hold(node, A, leased))
        self.successResultOf(hold(node, A, legacy, key=legacy_key(A)))
        self.successResultOf(hold(node, B, expired, key=KEY2, lease=5))
        node.reactor.advance(10)
        cids = [CID.of(b) for b in (leased, legacy, expired)]
        self.assertEqual(node.index.leases.leased_blocks(cids, int(node.reactor.seconds())), {cids[0]})


class RekeyTests(SynchronousTestCase):
    def test_a_block_sent_again_keeps_the_accounting(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        for _ in range(3):
            self.successResultOf(hold(node, A, block))
        self.assertEqual(node.index.leases.leased_bytes, 1000)
        check_accounting(self, node)

    def test_a_block_pushed_without_a_key_moves_when_its_sender_names_the_key(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        self.successResultOf(hold(node, A, block, key=None, lease=None))  # protocol version 1: legacy key
        self.assertEqual(node.index.hold_keys(CID.of(block)), {legacy_key(A)})
        self.successResultOf(hold(node, A, block, key=KEY2))
        self.assertEqual(node.index.hold_keys(CID.of(block)), {KEY2})
        self.assertEqual(node.index.leases.holders(legacy_key(A)), [])  # the empty legacy key lost its lease
        self.assertEqual(node.index.leases.leased_bytes, 1000)
        check_accounting(self, node)
        self.successResultOf(hold(node, A, block, key=None, lease=None))  # sent again without a key: it stays
        self.assertEqual(node.index.hold_keys(CID.of(block)), {KEY2})
        check_accounting(self, node)

    def test_attached_blocks_without_a_lease_wait_for_collection(self) -> None:
        node = make_node(self)
        block = os.urandom(1000)
        self.successResultOf(hold(node, A, block, key=None, lease=None))
        with node.index._transaction():
            node.index.leases.attach(A, KEY2, [CID.of(block)], int(node.reactor.seconds()))
        self.assertEqual(node.index.leases.holders(KEY2), [])
        self.assertEqual(node.index.leases.unleased(int(node.reactor.seconds()), 10), [KEY2])  # collectable
        check_accounting(self, node)


class ReleaseQueueTests(SynchronousTestCase):
    def test_past_its_cap_the_soonest_to_expire_go(self) -> None:
        from cas.store import placements

        self.patch(placements, "MAX_RELEASES", 5)
        node = make_node(self)
        index = node.index
        for i in range(8):
            index.plan_placement(f"upload:{i}", bytes([i]) * 8, [A], 60, 0)
            index.drop_owner(f"upload:{i}", until=1000 + i)
        self.assertEqual(index.count_releases(), 5)
        kept = sorted(k[0] for k in index.pending_releases(0)[A])
        self.assertEqual(kept, [3, 4, 5, 6, 7])


class CarriedLeaseTests(SynchronousTestCase):
    def hold_carrying(self, node: Node, block: bytes, lease: int, origin: bytes | None,
                      carried: list[tuple[bytes, int]]) -> None:
        d = node.hold_block(A.hex(), CID.of(block), block, KEY, lease, origin, 3 if origin else None, carried)
        node.reactor.advance(0)  # type: ignore[attr-defined]
        self.successResultOf(d)

    def test_carried_leases_are_capped_and_respect_lease_counts(self) -> None:
        node = make_node(self)
        now = int(node.reactor.seconds())
        self.hold_carrying(node, os.urandom(10), 100, B, [(B, 10**9)])
        self.assertEqual(node.index.leases.expiry(KEY, B), now + MAX_LEASE_TIME)  # capped as any lease
        self.assertEqual(node.index.leases.key_info(KEY), (B, 3))  # the origin came with its lease
        check_accounting(self, node)
        node = make_node(self, max_leases=1)
        self.successResultOf(hold(node, B, os.urandom(10), key=KEY))  # B is at its lease count here
        C = b"c" * 32
        d = node.hold_block(A.hex(), CID.of(b"x"), b"x", KEY2, 100, None, None, [(B, 50), (C, 50)])
        node.reactor.advance(0)  # type: ignore[attr-defined]
        self.successResultOf(d)
        self.assertEqual(sorted(node.index.leases.holders(KEY2)), sorted([A, C]))  # not B: it has its count
        check_accounting(self, node)

    def test_an_origin_nobody_vouches_for_is_not_recorded(self) -> None:
        node = make_node(self)
        self.hold_carrying(node, os.urandom(10), 100, b"z" * 32, [(B, 50)])
        self.assertIsNone(node.index.leases.key_info(KEY))
