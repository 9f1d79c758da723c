"""The peer table (cas/peer/peertable.py): membership, capacity and the saved ``peers.json``."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cas.peer.peertable import ALIVE, CONNECTED, DEAD, NEW, SUSPECT, PeerEntry, PeerTable
from cas.peer.records import Address, UnknownAddress, sign_record

from .test_gossip import TTL, WALL0, addr, make_record, new_identity

ADDR6 = Address.tcp("2001:db8::5", 4000)


class MemberTests(SynchronousTestCase):
    def test_member(self) -> None:
        p = new_identity()
        r = make_record(p, expires=int(WALL0) + 100)
        e = PeerEntry(p.node_id, addresses=(addr(1),))
        self.assertFalse(e.member(WALL0), "no record, no membership (addresses are not enough)")
        e.record = r
        for state in (NEW, CONNECTED, ALIVE, SUSPECT):
            e.state = state
            self.assertTrue(e.member(WALL0), state)
            self.assertTrue(e.member(WALL0 + 99.9), state)
            self.assertFalse(e.member(WALL0 + 100), "a record expiring now has expired")
        e.state = DEAD
        self.assertFalse(e.member(WALL0))

    def test_record_without_dialable_address_is_no_member(self) -> None:
        """Connected or not: nobody could dial it to place or fetch a block."""
        p = new_identity()
        e = PeerEntry(p.node_id, record=sign_record(p, (), 1, int(WALL0) + 100), operator_addresses=(addr(1),))
        for state in (NEW, CONNECTED, ALIVE, SUSPECT):
            e.state = state
            self.assertFalse(e.member(WALL0), state)
        e.record = sign_record(p, (UnknownAddress(("quic", "x")),), 2, int(WALL0) + 100)  # kept, never dialled
        self.assertFalse(e.member(WALL0))

    def test_members(self) -> None:
        table = PeerTable(None, new_identity().node_id)
        ids = [new_identity() for _ in range(4)]
        for p, state in zip(ids, (ALIVE, DEAD, SUSPECT, NEW)):
            e = table.add(p.node_id)
            assert e is not None
            e.state = state
            if state != NEW:
                e.record = make_record(p)
        self.assertEqual({e.node_id for e in table.members(WALL0)}, {ids[0].node_id, ids[2].node_id})
        self.assertEqual(table.members(WALL0 + TTL), [])

    def test_add_refuses_own_id_and_full_table(self) -> None:
        me = new_identity()
        table = PeerTable(None, me.node_id, capacity=1)
        self.assertIsNone(table.add(me.node_id))
        p = new_identity()
        e = table.add(p.node_id)
        assert e is not None
        self.assertIs(table.add(p.node_id), e, "the existing entry")
        e.record, e.state = make_record(p), ALIVE
        self.assertIsNone(table.add(new_identity().node_id))
        self.assertEqual(len(table), 1)


class PersistenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "peers.json")
        self.me = new_identity()
        self.warnings: list[dict[str, Any]] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_level") is LogLevel.warn:
                self.warnings.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def table(self) -> PeerTable:
        return PeerTable(self.path, self.me.node_id)

    def write(self, data: Any) -> None:
        with open(self.path, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)

    def saved_entry(self, **fields: Any) -> dict[str, Any]:
        p = new_identity()
        entry = {"node_id": p.node_id.hex(), "record": make_record(p).encode().hex(), "addresses": [["tcp", "192.0.2.1", 3000]],
                 "state": "alive", "last_seen": WALL0, "rtt": 0.01, "software": "cas/1", "pinned": False}
        entry.update(fields)
        return entry

    def test_round_trip(self) -> None:
        a, b = new_identity(), new_identity()
        t = self.table()
        ra = make_record(a, (addr(1), addr(2)), seq=42)
        ea = t.add(a.node_id)
        assert ea is not None
        ea.record, ea.addresses, ea.state = ra, ra.dialable, CONNECTED
        ea.last_seen, ea.rtt, ea.software = WALL0 - 5, 0.0123, "cas/0.1.0"
        eb = t.add(b.node_id)  # an operator's peer, never reached: no record
        assert eb is not None
        eb.addresses, eb.pinned, eb.state, eb.failures = (ADDR6,), True, DEAD, 4
        t.save()
        self.assertFalse(t.dirty)

        t2 = self.table()
        self.assertEqual(t2.load(WALL0), 2)
        la, lb = t2.get(a.node_id), t2.get(b.node_id)
        assert la is not None and lb is not None
        self.assertEqual((la.record, la.addresses, la.last_seen, la.rtt, la.software, la.pinned), (ra, ra.dialable, WALL0 - 5, 0.0123, "cas/0.1.0", False))
        self.assertEqual((lb.record, lb.addresses, lb.last_seen, lb.rtt, lb.software, lb.pinned), (None, (ADDR6,), None, None, None, True))
        self.assertEqual((la.state, lb.state), (NEW, NEW), "every peer is new until contacted again")
        self.assertEqual(self.warnings, [])

    def test_record_verified_again_on_load(self) -> None:
        self.write(json.dumps({"format": 1, "peers": [self.saved_entry(record="00" * 40)]}))
        t = self.table()
        t.load(WALL0)
        [e] = list(t)
        self.assertIsNone(e.record)
        self.assertEqual(e.addresses, (addr(1),), "the saved addresses are kept to dial it")

    def test_expired_record_dropped_addresses_kept(self) -> None:
        p = new_identity()
        t = self.table()
        r = make_record(p, (addr(3),), expires=int(WALL0) + 60)
        e = t.add(p.node_id)
        assert e is not None
        e.record, e.addresses = r, r.dialable
        t.save()
        t2 = self.table()
        self.assertEqual(t2.load(WALL0 + 60), 1)
        e2 = t2.get(p.node_id)
        assert e2 is not None
        self.assertEqual((e2.record, e2.addresses), (None, (addr(3),)))
        self.assertFalse(e2.member(WALL0 + 60))

    def test_missing_file_or_no_path(self) -> None:
        self.assertEqual(self.table().load(WALL0), 0)
        t = PeerTable(None, self.me.node_id)
        t.add(new_identity().node_id)
        t.save()  # nothing to write to: a no-op
        self.assertEqual(t.load(WALL0), 0)
        self.assertEqual(os.listdir(self.dir), [])

    def test_damaged_file_ignored(self) -> None:
        good = self.saved_entry()
        for content in ("", "{not json", "[]", "null", '"peers"', json.dumps({"format": 2, "peers": [good]}),
                        json.dumps({"format": "1", "peers": [good]}), json.dumps({"format": 1}),
                        json.dumps({"format": 1, "peers": {"a": good}}), json.dumps({"peers": [good]}),
                        b"\xff\xfe\x00garbage", b'{"format": 1, "peers": [\xff]}', "[" * 100_000):
            self.write(content)
            t = self.table()
            self.assertEqual(t.load(WALL0), 0, content)
            self.assertEqual(len(t), 0, content)
        self.assertEqual(len(self.warnings), 13, "each one logged")

    def test_damaged_entries_skipped(self) -> None:
        good = self.saved_entry()
        bad: list[Any] = [
            42, "x", None, [good["node_id"]], {}, {"node_id": "zz"}, {"node_id": 7}, {"node_id": "00" * 31},
            self.saved_entry(record=7), self.saved_entry(record="xyz"),
            # values the manager computes with (PeerManager._expire, describe): a wrong type would break it later
            self.saved_entry(last_seen="yesterday"), self.saved_entry(rtt="fast"), self.saved_entry(rtt=float("nan")), self.saved_entry(last_seen=float("-inf")),
            self.saved_entry(last_seen=True), self.saved_entry(software=5),
        ]
        self.write(json.dumps({"format": 1, "peers": bad + [good]}))
        t = self.table()
        self.assertEqual(t.load(WALL0), 1)
        self.assertEqual([e.node_id.hex() for e in t], [good["node_id"]], "nothing left behind by a damaged item")
        self.assertEqual(len(self.warnings), len(bad) - 1, "each damaged item logged (the short id is only ignored)")

    def test_bad_saved_addresses_skipped(self) -> None:
        entry = self.saved_entry(record=None, addresses=[["tcp", "localhost", 1], ["tcp", "192.0.2.1", 0], "tcp:1.2.3.4:5",
                                                          ["quic", "192.0.2.1", 443], ["tcp", "192.0.2.7", 3000]])
        self.write(json.dumps({"format": 1, "peers": [entry]}))
        t = self.table()
        t.load(WALL0)
        [e] = list(t)
        self.assertEqual(e.addresses, (addr(7),))

    def test_own_id_skipped(self) -> None:
        own = self.saved_entry(node_id=self.me.node_id.hex(), record=make_record(self.me).encode().hex())
        other = self.saved_entry()
        self.write(json.dumps({"format": 1, "peers": [own, other]}))
        t = self.table()
        self.assertEqual(t.load(WALL0), 1)
        self.assertIsNone(t.get(self.me.node_id))

    def test_record_of_another_node_skipped(self) -> None:
        x, y = new_identity(), new_identity()
        lying = self.saved_entry(node_id=x.node_id.hex(), record=make_record(y).encode().hex())
        self.write(json.dumps({"format": 1, "peers": [lying]}))
        t = self.table()
        self.assertEqual(t.load(WALL0), 0)
        self.assertIsNone(t.get(x.node_id), "no entry left behind for the id")
        self.assertIsNone(t.get(y.node_id))
        self.assertEqual(len(self.warnings), 1)

    def test_capacity_on_load(self) -> None:
        self.write(json.dumps({"format": 1, "peers": [self.saved_entry() for _ in range(5)]}))
        t = PeerTable(self.path, self.me.node_id, capacity=3)
        self.assertEqual(t.load(WALL0), 3)

    def test_save_is_atomic(self) -> None:
        replaced: list[tuple[str, str]] = []
        real_replace = os.replace

        def spy(src: str, dst: str) -> None:
            replaced.append((src, dst))
            real_replace(src, dst)

        t = self.table()
        t.add(new_identity().node_id)
        self.patch(os, "replace", spy)
        t.save()
        self.assertEqual(replaced, [(self.path + ".tmp", self.path)])
        self.assertEqual(os.listdir(self.dir), ["peers.json"], "no .tmp left behind")
        with open(self.path) as f:
            self.assertEqual(len(json.load(f)["peers"]), 1)

    def test_failed_save_keeps_the_old_file(self) -> None:
        t = self.table()
        e = t.add(new_identity().node_id)
        assert e is not None
        t.save()
        with open(self.path, "rb") as f:
            before = f.read()
        e.software = object()  # type: ignore[assignment]  # not JSON: the write fails half-way
        t.add(new_identity().node_id)
        self.assertRaises(TypeError, t.save)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertTrue(t.dirty, "still to be saved")
