"""Gossip of signed peer records (cas/peer/gossip.py), without a network: a fake ``send`` whose answers the tests
fire, a Clock for the rounds and the flood-control buckets, and a settable wall clock for record expiry."""

from __future__ import annotations

import json
import os
import random
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cas.base.identity import Identity, make_certificate
from cas.peer.gossip import Gossip
from cas.peer.peertable import ALIVE, CONNECTED, DEAD, NEW, SUSPECT, PeerTable
from cas.peer.records import MAX_TTL, Address, PeerRecord, UnknownAddress, sign_record

WALL0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
TTL = 3600


def new_identity() -> Identity:
    key = Ed25519PrivateKey.generate()
    return Identity(key, make_certificate(key))


def addr(i: int, port: int = 3000) -> Address:
    return Address.tcp(f"192.0.2.{i}", port)


def make_record(ident: Identity, addresses: tuple = (), seq: int = 1, expires: int | None = None) -> PeerRecord:
    return sign_record(ident, addresses or (addr(1),), seq, int(WALL0) + TTL if expires is None else expires)


class FakeSend:
    """``send`` for Gossip: remembers (node id, records, Deferred) per call; the test fires the Deferreds."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, list[bytes], Deferred[Any]]] = []

    def __call__(self, node_id: bytes, records: list[bytes]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((node_id, records, d))
        return d


class GossipCase(SynchronousTestCase):
    capacity = 10_000

    def setUp(self) -> None:
        self.clock = Clock()
        self.now = WALL0
        self.me = new_identity()
        self.table = PeerTable(None, self.me.node_id, capacity=self.capacity)
        self.send = FakeSend()
        self.changes = 0
        self.gossip = self.make_gossip()

    def make_gossip(self, **kw: Any) -> Gossip:
        kw.setdefault("rng", random.Random(1))
        return Gossip(self.table, self.clock, lambda: self.now, self.send, self.on_changed, **kw)

    def on_changed(self) -> None:
        self.changes += 1

    def known(self, ident: Identity, state: str = ALIVE, seq: int = 1, **kw: Any) -> PeerRecord:
        """Put ``ident`` in the table with a record and ``state``; returns the record."""
        record = make_record(ident, seq=seq, **kw)
        entry = self.table.add(ident.node_id)
        assert entry is not None
        entry.record, entry.addresses, entry.state = record, record.dialable, state
        return record


class ReceiveTests(GossipCase):
    def test_valid_records_accepted(self) -> None:
        idents = [new_identity() for _ in range(3)]
        records = [make_record(p, (addr(i + 1), addr(i + 1, 4000)), seq=10 + i) for i, p in enumerate(idents)]
        self.assertEqual(self.gossip.receive(idents[0].node_id, [r.encode() for r in records]), 3)
        self.assertEqual((len(self.table), self.gossip.rejected, self.changes), (3, 0, 1))
        for p, r in zip(idents, records):
            e = self.table.get(p.node_id)
            assert e is not None
            self.assertEqual((e.record, e.addresses, e.state), (r, r.dialable, NEW))
            self.assertEqual(e.addresses, (r.addresses[0], r.addresses[1]))
        self.assertTrue(self.table.dirty)

    def test_addresses_are_the_dialable_ones(self) -> None:
        p = new_identity()
        quic = UnknownAddress(("quic", "192.0.2.9", 443))
        r = make_record(p, (quic, addr(9)))
        self.assertEqual(self.gossip.receive(p.node_id, [r.encode()]), 1)
        e = self.table.get(p.node_id)
        assert e is not None
        self.assertEqual(e.addresses, (addr(9),))
        self.assertEqual(e.record.addresses, (quic, addr(9)), "the record is kept whole, to pass on")  # type: ignore[union-attr]

    def test_stale_ignored(self) -> None:
        p = new_identity()
        r5 = make_record(p, (addr(5),), seq=5)
        self.assertEqual(self.gossip.receive(p.node_id, [r5.encode()]), 1)
        self.table.dirty = False
        for seq in (5, 4, 0):
            old = make_record(p, (addr(seq + 100),), seq=seq)
            self.assertEqual(self.gossip.receive(p.node_id, [old.encode()]), 0, seq)
        e = self.table.get(p.node_id)
        assert e is not None
        self.assertEqual((e.record, e.addresses), (r5, (addr(5),)))
        self.assertEqual((self.changes, self.gossip.rejected, self.table.dirty), (1, 0, False))

    def test_newer_seq_replaces_addresses(self) -> None:
        p = new_identity()
        self.gossip.receive(p.node_id, [make_record(p, (addr(1), addr(2)), seq=5).encode()])
        newer = make_record(p, (addr(3),), seq=6)
        self.assertEqual(self.gossip.receive(p.node_id, [newer.encode()]), 1)
        e = self.table.get(p.node_id)
        assert e is not None
        self.assertEqual((e.record, e.addresses, self.changes), (newer, (addr(3),), 2))
        withdrawal = sign_record(p, (), 7, int(WALL0) + TTL)
        self.assertEqual(self.gossip.receive(p.node_id, [withdrawal.encode()]), 1)
        self.assertEqual(e.addresses, ())

    def test_expired_and_far_future_rejected(self) -> None:
        p = new_identity()
        for expires in (int(WALL0) - 1, int(WALL0), int(WALL0) + MAX_TTL + 1, int(WALL0) + 10 * MAX_TTL):
            r = make_record(p, expires=expires)
            self.assertEqual(self.gossip.receive(p.node_id, [r.encode()]), 0, expires)
        self.assertEqual((len(self.table), self.gossip.rejected, self.changes), (0, 4, 0))
        ok = make_record(p, expires=int(WALL0) + MAX_TTL)
        self.assertEqual(self.gossip.receive(p.node_id, [ok.encode()]), 1, "a record living exactly MAX_TTL is fine")

    def test_expiry_follows_the_wall_clock(self) -> None:
        p = new_identity()
        r = make_record(p, expires=int(WALL0) + 100)
        self.now = WALL0 + 100
        self.assertEqual(self.gossip.receive(p.node_id, [r.encode()]), 0)
        self.now = WALL0 + 99
        self.assertEqual(self.gossip.receive(p.node_id, [r.encode()]), 1)

    def test_forged_rejected(self) -> None:
        a, b = new_identity(), new_identity()
        r = make_record(a, seq=3)
        bad_sig = PeerRecord(r.public_key, r.addresses, r.seq, r.expires, bytes([r.signature[0] ^ 1]) + r.signature[1:])
        b_key = make_record(b).public_key
        swapped = PeerRecord(b_key, r.addresses, r.seq, r.expires, r.signature)  # a's signature, b's key
        other_addrs = PeerRecord(r.public_key, (addr(66),), r.seq, r.expires, r.signature)
        higher_seq = PeerRecord(r.public_key, r.addresses, r.seq + 1, r.expires, r.signature)
        forged = [bad_sig, swapped, other_addrs, higher_seq]
        self.assertEqual(self.gossip.receive(a.node_id, [f.encode() for f in forged]), 0)
        self.assertEqual((len(self.table), self.gossip.rejected, self.changes), (0, 4, 0))

    def test_forged_newer_record_does_not_replace(self) -> None:
        a = new_identity()
        r = make_record(a, (addr(1),), seq=3)
        self.gossip.receive(a.node_id, [r.encode()])
        hijack = PeerRecord(r.public_key, (addr(66),), 99, r.expires, r.signature)
        self.assertEqual(self.gossip.receive(a.node_id, [hijack.encode()]), 0)
        e = self.table.get(a.node_id)
        assert e is not None
        self.assertEqual((e.record, e.addresses), (r, (addr(1),)))

    def test_own_record_ignored(self) -> None:
        own = make_record(self.me, seq=9)
        p = new_identity()
        self.assertEqual(self.gossip.receive(p.node_id, [own.encode()]), 0)
        self.assertEqual((len(self.table), self.changes), (0, 0))
        self.assertIsNone(self.table.get(self.me.node_id))
        self.assertFalse(self.gossip.apply(own, None))
        self.assertEqual(len(self.table), 0)

    def test_non_bytes_items_rejected(self) -> None:
        p = new_identity()
        good = make_record(p).encode()
        junk: list[Any] = [123, good.hex(), None, [good], {"record": good}, b"", b"\xa0", b"garbage"]
        self.assertEqual(self.gossip.receive(p.node_id, junk + [good]), 1)
        self.assertEqual((len(self.table), self.gossip.rejected, self.changes), (1, len(junk), 1))

    def test_not_a_list(self) -> None:
        for value in (None, b"x", {"records": []}, "abc", 5):
            self.assertRaises(ValueError, self.gossip.receive, b"s" * 32, value)
        self.assertEqual(self.changes, 0)

    def test_too_many_records(self) -> None:
        g = self.make_gossip(max_records=4)
        records = [make_record(new_identity()).encode() for _ in range(5)]
        e = self.assertRaises(ValueError, g.receive, b"s" * 32, records)
        self.assertIn("at most 4", str(e))
        self.assertEqual((len(self.table), self.changes), (0, 0), "nothing of an oversized message is applied")
        self.assertEqual(g.receive(b"s" * 32, records[:4]), 4)

    def test_changed_only_for_news(self) -> None:
        p = new_identity()
        r = make_record(p, seq=2)
        self.gossip.receive(p.node_id, [r.encode()])
        self.assertEqual(self.changes, 1)
        self.gossip.receive(p.node_id, [])
        self.gossip.receive(p.node_id, [r.encode(), make_record(p, seq=1).encode(), b"junk"])
        self.assertEqual(self.changes, 1)
        self.gossip.receive(p.node_id, [r.encode(), make_record(p, seq=3).encode()])
        self.assertEqual(self.changes, 2, "one call per message, however many records were news")


class FloodControlTests(GossipCase):
    capacity = 100

    def setUp(self) -> None:
        super().setUp()
        self.gossip = self.make_gossip(new_per_source=3, refill=60.0)
        self.source = new_identity().node_id

    def fresh(self, n: int) -> list[bytes]:
        return [make_record(new_identity()).encode() for _ in range(n)]

    def test_new_ids_limited_per_source(self) -> None:
        batch = self.fresh(5)
        self.assertEqual(self.gossip.receive(self.source, batch), 3)
        self.assertEqual((len(self.table), self.gossip.rejected), (3, 2))
        self.assertEqual(self.gossip.receive(self.source, self.fresh(2)), 0, "the bucket is empty")
        self.clock.advance(20)  # 3 tokens per 60 s: one more
        self.assertEqual(self.gossip.receive(self.source, self.fresh(3)), 1)
        self.clock.advance(3600)  # full again, but never more than the capacity
        self.assertEqual(self.gossip.receive(self.source, self.fresh(5)), 3)
        self.assertEqual(len(self.table), 7)

    def test_sources_have_their_own_buckets(self) -> None:
        self.assertEqual(self.gossip.receive(self.source, self.fresh(4)), 3)
        other = new_identity().node_id
        self.assertEqual(self.gossip.receive(other, self.fresh(4)), 3)

    def test_updates_of_known_ids_not_limited(self) -> None:
        idents = [new_identity() for _ in range(3)]
        self.assertEqual(self.gossip.receive(self.source, [make_record(p, seq=1).encode() for p in idents]), 3)
        for seq in range(2, 6):
            batch = [make_record(p, (addr(seq),), seq=seq).encode() for p in idents]
            self.assertEqual(self.gossip.receive(self.source, batch), 3, seq)
        self.assertEqual(self.gossip.rejected, 0)

    def test_own_record_of_the_source_not_limited(self) -> None:
        self.gossip.receive(self.source, self.fresh(3))
        src = new_identity()
        self.assertEqual(self.gossip.receive(src.node_id, self.fresh(1)), 1)
        self.gossip.receive(src.node_id, self.fresh(2))
        self.assertEqual(self.gossip.receive(src.node_id, [make_record(src).encode()]), 1, "a node may always introduce itself")

    def test_hello_record_not_limited(self) -> None:
        for _ in range(10):
            self.assertTrue(self.gossip.apply(make_record(new_identity()), None))
        self.assertEqual((len(self.table), self.gossip.rejected), (10, 0))


class CapacityTests(GossipCase):
    capacity = 3

    def test_full_of_live_peers_rejects_new_ids(self) -> None:
        live = [new_identity() for _ in range(3)]
        for p, state in zip(live, (ALIVE, CONNECTED, SUSPECT)):
            self.known(p, state)
        newcomer = make_record(new_identity())
        self.assertEqual(self.gossip.receive(live[0].node_id, [newcomer.encode()]), 0)
        self.assertEqual((len(self.table), self.gossip.rejected, self.changes), (3, 1, 0))
        self.assertIsNone(self.table.get(newcomer.node_id))
        self.assertFalse(self.gossip.apply(newcomer, None), "not even from the node itself")

    def test_dead_entry_evicted(self) -> None:
        a, b, dead = new_identity(), new_identity(), new_identity()
        self.known(a)
        self.known(b)
        self.known(dead, DEAD)
        newcomer = make_record(new_identity())
        self.assertEqual(self.gossip.receive(a.node_id, [newcomer.encode()]), 1)
        self.assertEqual(len(self.table), 3)
        self.assertIsNone(self.table.get(dead.node_id))
        self.assertIsNotNone(self.table.get(newcomer.node_id))

    def test_record_less_entry_evicted_unless_pinned(self) -> None:
        a, pinned, bare = new_identity(), new_identity(), new_identity()
        self.known(a)
        e = self.table.add(pinned.node_id)
        assert e is not None
        e.addresses, e.pinned = (addr(7),), True
        e2 = self.table.add(bare.node_id)
        assert e2 is not None
        e2.addresses = (addr(8),)
        first = make_record(new_identity())
        self.assertTrue(self.gossip.apply(first, None))
        self.assertIsNone(self.table.get(bare.node_id))
        self.assertIsNotNone(self.table.get(pinned.node_id), "an operator's peer stays")
        # first was never reached: a newcomer may take its place (a flood churns itself, not reached peers)
        second = make_record(new_identity())
        self.assertTrue(self.gossip.apply(second, None))
        self.assertIsNone(self.table.get(first.node_id))
        self.table.get(second.node_id).last_seen = WALL0  # reached once: it stays
        self.assertFalse(self.gossip.apply(make_record(new_identity()), None), "only reached or pinned peers are left")
        self.assertEqual({e.node_id for e in self.table}, {a.node_id, pinned.node_id, second.node_id})


class DeadPeerTests(GossipCase):
    def test_record_signed_before_death_does_not_revive(self) -> None:
        """A record signed before we found the node dead (still travelling) leaves it dead."""
        p = new_identity()
        self.known(p, DEAD, seq=1)
        e = self.table.get(p.node_id)
        assert e is not None
        e.dead_since = WALL0
        old = make_record(p, (addr(2),), seq=int((WALL0 - 600) * 1000))
        self.gossip.apply(old, p.node_id)
        self.assertEqual(e.state, DEAD)
        fresh = make_record(p, (addr(3),), seq=int((WALL0 + 5) * 1000))
        self.assertTrue(self.gossip.apply(fresh, p.node_id))
        self.assertEqual(e.state, NEW)
        self.assertIsNone(e.dead_since)

    def test_newer_record_of_dead_peer_probes_again(self) -> None:
        p = new_identity()
        self.known(p, DEAD, seq=1)
        e = self.table.get(p.node_id)
        assert e is not None
        e.failures, e.next_attempt, e.suspect_since = 7, 5000.0, WALL0 - 100
        self.assertEqual(self.gossip.receive(p.node_id, [make_record(p, (addr(2),), seq=2).encode()]), 1)
        self.assertEqual((e.state, e.failures, e.next_attempt, e.addresses), (NEW, 0, 0.0, (addr(2),)))
        self.assertTrue(e.member(self.now))

    def test_stale_record_leaves_dead_peer_dead(self) -> None:
        p = new_identity()
        self.known(p, DEAD, seq=5)
        self.assertEqual(self.gossip.receive(p.node_id, [make_record(p, seq=5).encode(), make_record(p, seq=4).encode()]), 0)
        self.assertEqual(self.table.get(p.node_id).state, DEAD)  # type: ignore[union-attr]

    def test_dead_peer_whose_record_expired_probes_again(self) -> None:
        """The manager drops expired records (PeerManager._expire), dead peers' included; a fresh record from
        such a peer is news all the same and must bring it back."""
        p = new_identity()
        e = self.table.add(p.node_id)
        assert e is not None
        e.addresses, e.state, e.failures, e.next_attempt = (addr(1),), DEAD, 9, 5000.0
        self.assertEqual(self.gossip.receive(p.node_id, [make_record(p, (addr(2),), seq=2).encode()]), 1)
        self.assertEqual((e.state, e.failures, e.next_attempt), (NEW, 0, 0.0))
        self.assertTrue(e.member(self.now))

    def test_live_states_kept(self) -> None:
        for state in (CONNECTED, ALIVE, SUSPECT):
            p = new_identity()
            self.known(p, state, seq=1)
            self.gossip.receive(p.node_id, [make_record(p, seq=2).encode()])
            self.assertEqual(self.table.get(p.node_id).state, state)  # type: ignore[union-attr]


class SampleTests(GossipCase):
    def test_own_record_first_then_members(self) -> None:
        own = make_record(self.me, (addr(200),), seq=1)
        self.gossip.own_record = own
        others = [self.known(new_identity()) for _ in range(5)]
        out = self.gossip.sample()
        self.assertEqual(out[0], own.encode())
        self.assertEqual(sorted(out[1:]), sorted(r.encode() for r in others))

    def test_without_own_record(self) -> None:
        r = self.known(new_identity())
        self.assertEqual(self.gossip.sample(), [r.encode()])
        self.table.entries.clear()
        self.assertEqual(self.gossip.sample(), [])

    def test_at_most_max_records(self) -> None:
        g = self.make_gossip(max_records=5)
        own = make_record(self.me)
        g.own_record = own
        records = {self.known(new_identity()).encode() for _ in range(20)}
        seen: set[bytes] = set()
        for _ in range(10):
            out = g.sample()
            self.assertEqual(len(out), 5)
            self.assertEqual(out[0], own.encode())
            self.assertEqual(len(set(out)), 5, "no record twice")
            self.assertLessEqual(set(out[1:]), records)
            seen |= set(out[1:])
        self.assertGreater(len(seen), 4, "a random sample, not always the same records")
        g.own_record = None
        self.assertEqual(len(g.sample()), 5)

    def test_excludes_the_given_node(self) -> None:
        a, b = new_identity(), new_identity()
        ra, rb = self.known(a), self.known(b)
        self.assertEqual(self.gossip.sample(exclude=a.node_id), [rb.encode()])
        self.assertEqual(sorted(self.gossip.sample()), sorted([ra.encode(), rb.encode()]))

    def test_members_only(self) -> None:
        member = self.known(new_identity(), SUSPECT)
        self.known(new_identity(), DEAD)
        self.known(new_identity(), expires=int(WALL0) + 10)
        bare = self.table.add(new_identity().node_id)
        assert bare is not None
        bare.addresses = (addr(4),)
        self.now = WALL0 + 10  # the third record expires now
        self.assertEqual(self.gossip.sample(), [member.encode()])

    def test_sample_is_accepted_by_another_node(self) -> None:
        """What one node sends, another takes: encodings round-trip through receive."""
        self.gossip.own_record = make_record(self.me, seq=4)
        for _ in range(3):
            self.known(new_identity())
        other = PeerTable(None, new_identity().node_id)
        g2 = Gossip(other, self.clock, lambda: self.now, FakeSend(), lambda: None)
        self.assertEqual(g2.receive(self.me.node_id, self.gossip.sample()), 4)
        self.assertEqual(other.get(self.me.node_id).record, self.gossip.own_record)  # type: ignore[union-attr]


class RoundTests(GossipCase):
    def peers(self, n: int) -> list[Identity]:
        idents = [new_identity() for _ in range(n)]
        for p in idents:
            self.known(p)
        return idents

    def test_start_schedules_within_jitter(self) -> None:
        delays = set()
        for seed in range(40):
            clock = Clock()
            g = Gossip(self.table, clock, lambda: self.now, self.send, self.on_changed, rng=random.Random(seed), interval=8.0)
            g.start()
            [call] = clock.getDelayedCalls()
            self.assertTrue(6.0 <= call.getTime() <= 10.0, call.getTime())
            delays.add(call.getTime())
            g.stop()
            self.assertEqual(clock.getDelayedCalls(), [])
        self.assertGreater(len(delays), 30, "jittered")

    def test_round_sends_to_fanout_distinct_peers(self) -> None:
        own = make_record(self.me, (addr(200),))
        self.gossip.own_record = own
        idents = self.peers(6)
        self.gossip.start()
        self.clock.advance(5 * 1.25)
        self.assertEqual(self.gossip.rounds, 1)
        targets = [c[0] for c in self.send.calls]
        self.assertEqual(len(targets), 3)
        self.assertEqual(len(set(targets)), 3)
        self.assertLessEqual(set(targets), {p.node_id for p in idents})
        for target, records, _d in self.send.calls:
            self.assertEqual(records[0], own.encode())
            self.assertEqual(len(records), 6, "own record and the 5 others")
            self.assertNotIn(self.table.get(target).record.encode(), records)  # type: ignore[union-attr]

    def test_fewer_candidates_than_fanout(self) -> None:
        idents = self.peers(2)
        self.gossip.start()
        self.clock.advance(10)
        self.assertEqual(sorted(c[0] for c in self.send.calls), sorted(p.node_id for p in idents))

    def test_no_candidates(self) -> None:
        self.gossip.start()
        self.clock.advance(10)
        self.assertEqual((self.gossip.rounds, self.send.calls), (1, []))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "the next round is scheduled")

    def test_candidates(self) -> None:
        live = self.peers(1)[0]
        self.known(new_identity(), DEAD)
        self.known(new_identity(), expires=int(WALL0) + 1)
        no_address = new_identity()
        self.known(no_address)
        self.table.get(no_address.node_id).addresses = ()  # type: ignore[union-attr]
        bootstrap = self.table.add(new_identity().node_id)
        assert bootstrap is not None
        bootstrap.addresses = (addr(50),)  # no record yet (a bootstrap peer, or one whose record expired)
        self.now = WALL0 + 1
        self.gossip = self.make_gossip(fanout=10)
        self.gossip.start()
        self.clock.advance(10)
        self.assertEqual(sorted(c[0] for c in self.send.calls), sorted([live.node_id, bootstrap.node_id]))

    def test_answers_applied(self) -> None:
        [peer] = self.peers(1)
        self.gossip.start()
        self.clock.advance(10)
        [(target, _records, d)] = self.send.calls
        news = [make_record(new_identity()) for _ in range(3)]
        results: list[Any] = []
        self.gossip.exchange(target).addCallback(results.append)
        self.send.calls[-1][2].callback([r.encode() for r in news[:1]])
        self.assertEqual(results, [1], "exchange fires with how many records were taken")
        d.callback([r.encode() for r in news[1:]] + [make_record(peer, seq=2).encode()])
        for r in news:
            self.assertEqual(self.table.get(r.node_id).record, r)  # type: ignore[union-attr]
        self.assertEqual(self.table.get(peer.node_id).record.seq, 2)  # type: ignore[union-attr]
        self.assertEqual(self.changes, 2)

    def test_reschedules_after_answers_and_failures(self) -> None:
        self.peers(5)
        self.gossip.start()
        self.clock.advance(10)
        self.assertEqual(len(self.send.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [], "the next round waits for this one")
        _t0, _r0, d0 = self.send.calls[0]
        _t1, _r1, d1 = self.send.calls[1]
        _t2, _r2, d2 = self.send.calls[2]
        d0.errback(ConnectionError("refused"))
        d1.callback(None)  # a malformed answer (no records list)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d2.callback([b"x"] * 65)  # too many
        [call] = self.clock.getDelayedCalls()
        self.assertTrue(self.clock.seconds() + 3.75 <= call.getTime() <= self.clock.seconds() + 6.25)
        self.assertEqual(self.changes, 0)
        self.clock.advance(10)
        self.assertEqual((self.gossip.rounds, len(self.send.calls)), (2, 6))
        for _t, _r, d in self.send.calls[3:]:
            d.errback(ConnectionError("refused"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "failed sends do not stop the gossip")

    def test_stop_cancels_the_next_round(self) -> None:
        self.peers(2)
        self.gossip.start()
        self.gossip.stop()
        self.clock.advance(100)
        self.assertEqual((self.gossip.rounds, self.send.calls), (0, []))

    def test_stop_during_a_round_is_final(self) -> None:
        self.peers(2)
        self.gossip.start()
        self.clock.advance(10)
        self.gossip.stop()
        for _t, _r, d in self.send.calls:
            d.errback(ConnectionError("shutting down"))
        self.assertEqual(self.clock.getDelayedCalls(), [], "no round after stop()")
        self.clock.advance(100)
        self.assertEqual(self.gossip.rounds, 1)


class TableSaveTests(SynchronousTestCase):
    """The peer manager saves ``peers.json`` at once when membership changes (a node killed right after
    joining restarts knowing its peers), at most once a second, the changes in between together."""

    def setUp(self) -> None:
        from cas.peer.peers import SAVE_SPACING, PeerManager

        class Node:
            identity = new_identity()

        self.spacing = SAVE_SPACING
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.path = os.path.join(self.mktemp() + ".json")
        self.manager = PeerManager(Node(), self.clock, table_path=self.path, wall=lambda: WALL0)

    def saved(self) -> set[bytes]:
        with open(self.path, encoding="utf-8") as f:
            return {bytes.fromhex(p["node_id"]) for p in json.load(f)["peers"]}

    def join(self) -> bytes:
        ident = new_identity()
        self.assertEqual(self.manager.gossip.receive(b"s" * 32, [make_record(ident).encode()]), 1)
        self.assertIn(ident.node_id, self.manager.members())
        return ident.node_id

    def test_first_change_saved_at_once(self) -> None:
        a = self.join()
        self.assertEqual(self.saved(), {a})

    def test_changes_within_a_second_saved_together_at_its_end(self) -> None:
        a = self.join()
        self.clock.advance(self.spacing / 4)
        b = self.join()
        c = self.join()
        self.assertEqual(self.saved(), {a}, "not written again within the second")
        self.clock.advance(self.spacing * 3 / 4 - 0.01)
        self.assertEqual(self.saved(), {a})
        self.clock.advance(0.01)
        self.assertEqual(self.saved(), {a, b, c})
        self.assertEqual(self.clock.getDelayedCalls(), [], "nothing else scheduled")

    def test_change_after_a_quiet_second_saved_at_once(self) -> None:
        a = self.join()
        self.clock.advance(self.spacing)
        b = self.join()
        self.assertEqual(self.saved(), {a, b})
