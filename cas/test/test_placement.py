"""Rendezvous placement: deterministic, balanced, minimal movement (cas/network/placement.py)."""

from __future__ import annotations

from collections import Counter

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cas.network.placement import IPlacement, Rendezvous, manifest_key, stripe_key, stripe_of


def node(i: int) -> bytes:
    return blake3.blake3(b"node %d" % i).digest()


NODES = [node(i) for i in range(10)]
KEYS = [stripe_key(b"salt", i) for i in range(5000)]


class RendezvousTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = Rendezvous()

    def test_provides_the_seam(self) -> None:
        self.assertTrue(IPlacement.providedBy(self.p))

    @settings(max_examples=50, deadline=None)
    @given(st.binary(min_size=1, max_size=64), st.permutations(NODES))
    def test_order_of_members_does_not_matter(self, key: bytes, members: list[bytes]) -> None:
        self.assertEqual(self.p.rank(key, members), self.p.rank(key, NODES))

    def test_holders(self) -> None:
        key = stripe_key(b"f", 0)
        ranked = self.p.rank(key, NODES)
        self.assertEqual(sorted(ranked), sorted(NODES))
        self.assertEqual(self.p.holders(key, NODES, 3), ranked[:3])
        # The uploader (or a failed holder) excluded: the next in rendezvous order replaces it.
        self.assertEqual(self.p.holders(key, NODES, 3, exclude={ranked[0]}), ranked[1:4])
        self.assertEqual(self.p.holders(key, NODES[:2], 3), self.p.rank(key, NODES[:2]))
        self.assertEqual(self.p.holders(key, NODES, 0), [])
        self.assertEqual(self.p.holders(key, [], 3), [])

    def test_balanced(self) -> None:
        """Each of 10 nodes is first holder of about a tenth of 5,000 stripes (a fixed sample: no flakiness)."""
        firsts = Counter(self.p.rank(k, NODES)[0] for k in KEYS)
        for n in NODES:
            self.assertLess(abs(firsts[n] - 500), 75, firsts)

    def test_join_moves_only_what_the_new_node_wins(self) -> None:
        new = node(99)
        before = {k: self.p.holders(k, NODES, 3) for k in KEYS}
        moved = 0
        for k in KEYS:
            after = self.p.holders(k, NODES + [new], 3)
            if after != before[k]:
                moved += 1
                self.assertIn(new, after)  # nothing moves between old nodes
                self.assertEqual([a for a in after if a != new], before[k][: len(after) - 1])
        self.assertLess(abs(moved / len(KEYS) - 3 / 11), 0.03)  # the new node holds about 3/11 of the stripes

    def test_leave_moves_only_what_the_node_held(self) -> None:
        gone = NODES[3]
        rest = [n for n in NODES if n != gone]
        for k in KEYS[:1000]:
            before = self.p.holders(k, NODES, 3)
            after = self.p.holders(k, rest, 3)
            if gone not in before:
                self.assertEqual(after, before)
            else:
                self.assertEqual([b for b in before if b != gone], after[:2])

    def test_keys(self) -> None:
        self.assertNotEqual(stripe_key(b"a", 1), stripe_key(b"a", 2))
        self.assertNotEqual(stripe_key(b"a", 1), stripe_key(b"b", 1))
        self.assertNotEqual(stripe_key(b"ab", 1), stripe_key(b"a", int.from_bytes(b"b" + bytes(7), "big")))
        self.assertNotEqual(manifest_key(b"x" * 36), stripe_key(b"x" * 36, 0))
        self.assertEqual([stripe_of(i) for i in (0, 63, 64, 200)], [0, 0, 1, 3])
