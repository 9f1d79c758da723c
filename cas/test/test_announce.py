"""Files stored before leases (cas/network/announce.py): after the upgrade to data-dir format 3 the origin
announces each of its files to the key's first N + 4 in rank, listing the blocks per key; holders move the
blocks it pushed without a key to their keys under its lease, and blocks nobody claims go when their grace
lease ends."""

from __future__ import annotations

import os
import time

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from cas.base.cid import CID
from cas.store.leases import legacy_key

from .test_leases import check_accounting
from .test_renewal import HOUR, advance
from .test_replication import content, network, placed_blocks, put


def make_legacy(holder, origin_id: bytes, now: int, grace: int) -> None:  # type: ignore[no-untyped-def]
    """Turn what ``holder`` keeps for ``origin_id`` into what format 3's upgrade leaves of blocks pushed without
    a key: every block under ``legacy_key(origin)``, one grace lease on that key."""
    index, legacy = holder.node.index, legacy_key(origin_id)
    with index._transaction():
        index.db.execute("UPDATE holds SET key = ? WHERE peer = ?", (legacy, origin_id.hex()))
        index.db.execute("DELETE FROM leases WHERE holder = ?", (origin_id,))
        index.db.execute("DELETE FROM unleased")
        index.db.execute("INSERT INTO leases VALUES (?, ?, ?)", (legacy, origin_id, now + grace))
        index.leases.recount()


class AnnounceTests(TestCase):
    timeout = 120

    async def test_holders_attach_announced_blocks_and_unclaimed_ones_go_with_the_grace(self) -> None:
        clock = Clock()
        clock.advance(time.time())
        net, nodes = await network(self, 4, gc_period=30.0, clock=clock)
        origin = nodes[0]
        me = origin.node.identity.node_id
        path, _data = content(self, 3 * 64 * 1024)
        stored = await put(origin, path)
        blocks = await placed_blocks(origin, stored)
        await advance(clock, 60, nodes)
        now = int(clock.seconds())
        # The state the upgrade leaves: holders keep the blocks under the legacy key with a grace lease of 1 h,
        # the origin knows nothing of where its file went and lists it to announce.
        for s in nodes[1:]:
            make_legacy(s, me, now, HOUR)
        with origin.node.index._transaction():
            origin.node.index.db.execute("DELETE FROM placed")
            origin.node.index.db.execute("DELETE FROM owner_keys")
            origin.node.index.db.execute("INSERT INTO announce VALUES (?)", (str(stored.cap.root),))
        stray = os.urandom(3000)  # a block the origin pushed once and no file of it claims
        holder = nodes[1]
        holder.node.store.put(CID.of(stray), stray)
        with holder.node.index._transaction():
            holder.node.index.db.execute("INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?)",
                                         (me.hex(), str(CID.of(stray)), 3000, now, now, legacy_key(me)))
            holder.node.index.leases.recount()
        for s in nodes[1:]:
            self.assertEqual(s.node.index.leases.holders(legacy_key(me)), [me])

        await origin.announcer.kick()
        self.assertEqual(origin.announcer.announced, 1)
        self.assertEqual(origin.node.index.to_announce(10), [])
        for s in nodes[1:]:  # every block of the file is under its key again, under the origin's full lease
            for cid, key in blocks:
                if s.node.store.has(cid):
                    self.assertTrue(s.node.index.leases.has_block(key, cid), f"{cid} not attached on {s.node.node_id}")
                    self.assertGreater(s.node.index.leases.expiry(key, me), now + 30 * 86400)
        for s in nodes[2:]:  # a legacy key left empty loses its grace lease
            self.assertEqual(s.node.index.leases.holders(legacy_key(me)), [])
        self.assertEqual(holder.node.index.leases.holders(legacy_key(me)), [me])  # the stray block keeps it
        health = await origin.node.health(stored.cap.root)
        self.assertEqual(health["lowest_replicas"], 3)
        self.assertEqual({k for k in origin.node.index.placements.holders(f"file:{stored.cap.root}")},
                         {k for _c, k in blocks})
        for s in nodes[1:]:
            check_accounting(self, s.node)  # the running figures match the tables' truth
        # The grace ends: the unclaimed block goes, the file stays.
        await advance(clock, HOUR + 2 * 60, nodes)
        self.assertFalse(holder.node.store.has(CID.of(stray)))
        self.assertEqual((await origin.node.health(stored.cap.root))["lowest_replicas"], 3)
