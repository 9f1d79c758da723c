"""Audits: a node holding a copy of a block checks, now and then, that another holder still has its copy.

The challenger holds the block itself (it checked it against its id), picks a fresh 32-byte nonce and a random
byte range, and asks the holder (``CHALLENGE``, protocol version 3) for BLAKE3 keyed with the nonce over that
range; only a node with those bytes at hand can answer, and the answer must come within ``DEADLINE``. A wrong
or missing answer counts against the holder in this node's track record (``cas.peer.track``): readers ask it
last, uploads and repair treat it like a dropped holder, and the key is repaired at once with that copy counted
as lost. A right answer counts for it. Rate: each held key about once a day, at most ``PER_HOUR`` challenges
an hour, one at a time. What an audit proves, and what it does not, is in docs/security.md.
"""

from __future__ import annotations

import os
import random
from typing import Any

import blake3
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base.cid import CID
from cas.base.nodeid import short_node_id
from cas.network.placement import RANK_SLACK
from cas.peer import frames
from cas.peer.connection import BUSY, RemoteError

log = Logger()

DAY = 86400.0  # each held key is audited about once per DAY
PER_HOUR = 64  # challenges an hour at most
DEADLINE = 1.0  # seconds a challenged holder has to answer
MAX_RANGE = 64 << 10  # bytes of a block one challenge covers at most (what a CHALLENGE may ask)


def proof(block: bytes | memoryview, nonce: bytes, offset: int, length: int) -> bytes:
    """BLAKE3 keyed with ``nonce`` over ``block[offset:offset + length]`` (the answer to a CHALLENGE)."""
    return blake3.blake3(memoryview(block)[offset:offset + length], key=nonce).digest()


class Auditor:
    def __init__(self, node: Any, peers: Any, clock: Any, deadline: float = DEADLINE,
                 rng: random.Random | None = None) -> None:
        self.node, self.peers, self.clock, self.deadline = node, peers, clock, deadline
        self.rng = rng or random.SystemRandom()
        self._cursor = b""
        self.own_next: bool | None = None  # the next audit's kind (tests); None: drawn, files against held keys
        self._timer: Any = None
        self._running: Deferred[None] | None = None
        self._stopped = True
        # counters (cas status, tests)
        self.passed = 0
        self.failed = 0

    def start(self) -> None:
        self._stopped = False
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def status(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "every": self.interval()}

    def interval(self) -> float:
        """Seconds between two challenges: a day spread over the held keys (and one a file's worth for this node's
        own files), but no more than PER_HOUR an hour."""
        keys = self.node.index.leases.count_held_keys() + self.node.index.count()
        return max(3600.0 / PER_HOUR, DAY / max(1, keys))

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self.clock.callLater(self.interval() * self.rng.uniform(0.5, 1.5), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.audit_next().addBoth(lambda _: self._schedule())

    def audit_next(self) -> Deferred[bool | None]:
        """Challenge one holder of the next held key (None: nobody to challenge)."""
        if self._running is not None:
            return self._running

        def done(result: Any) -> Any:
            self._running = None
            if isinstance(result, Failure):
                log.failure("an audit failed to run", result)
                return None
            return result

        own, self.own_next = self.own_next, None
        if own is None:  # each held key and each file of this node's about once a day: drawn in proportion
            files, held = self.node.index.count(), self.node.index.leases.count_held_keys()
            own = self.rng.random() * (files + held) < files
        d = self._running = ensureDeferred(self._audit_own() if own else self._audit_next())
        return d.addBoth(done)

    async def _audit_own(self) -> bool | None:
        """The owner's audit: a random block of a random file of this node's, at a holder recorded for its key
        (this node has every block of its files); a node with no file audits a held key instead."""
        f = self.node.index.random_file()
        if f is None:
            return await self._audit_next()
        holders = self.node.index.placements.holders(f"file:{f.root}")
        try:
            blocks = [(c, k) for c, k in await self.node.file_blocks(f.root) if holders.get(k)]
        except Exception:
            return None
        if not blocks:
            return await self._audit_next()
        cid, key = self.rng.choice(blocks)
        # a recorded holder may never have had this block (planned, replaced, refused): only one that says it
        # holds it under a lease is challenged
        targets = [h for h in holders[key] if (self.peers.version_of(h) or 0) >= 3 and await self._claims(h, cid)]
        if not targets:
            return None
        return await self.challenge(self.rng.choice(targets), key, cid, owner=True)

    async def _claims(self, node: bytes, cid: CID) -> bool:
        """Whether ``node`` says (HAS) it holds ``cid`` under a lease."""
        try:
            _held, leased = await self.peers.has_leased(node, [cid]).addTimeout(30, self.node.reactor)
        except Exception:
            return False
        return bool(leased and leased[0])

    async def _audit_next(self) -> bool | None:
        keys = self.node.index.leases.held_keys(self._cursor, 1)
        if not keys:
            self._cursor = b""
            keys = self.node.index.leases.held_keys(b"", 1)
            if not keys:
                return None
        key = self._cursor = keys[0]
        cids = [c for c in self.node.index.leases.blocks_of(key)[0] if self.node.store.has(c)]
        if not cids:
            return None
        cid = self.rng.choice(cids)
        holders = await self._claimants(key, cid)
        if not holders:
            return None
        return await self.challenge(self.rng.choice(holders), key, cid)

    async def _claimants(self, key: bytes, cid: CID) -> list[bytes]:
        """The live nodes of the key's first N + 4 (this node and the origin left out) that say they hold ``cid``
        under a lease and speak protocol version 3."""
        info = self.node.index.leases.key_info(key)
        origin, n = info if info is not None else (None, self.node.replicas)
        me = self.node.identity.node_id
        members = list(self.peers.members())
        rank = [m for m in self.node.placement.rank(key, [*members, me]) if m not in (origin, me)]
        return [m for m in rank[: max(n, 1) + RANK_SLACK]
                if (self.peers.version_of(m) or 0) >= 3 and await self._claims(m, cid)]

    async def challenge(self, target: bytes, key: bytes, cid: CID, owner: bool = False) -> bool | None:
        """Challenge ``target``, which said it holds ``cid`` (held here under ``key``, or a block of this node's
        own file with ``owner``): True if it proved it, False if not (counted against it, and the block
        repaired); None if nothing was learned (this node's copy cannot be read, or the target was busy: it
        may refuse more than 10 challenges a minute)."""
        try:
            data = await self.node.fetch(cid)
        except Exception:
            return None  # our copy is bad or gone (the scrub replaces it): nothing to check against
        if not len(data):
            return None
        nonce = os.urandom(32)
        length = self.rng.randint(1, min(len(data), MAX_RANGE))
        offset = self.rng.randint(0, len(data) - length)
        expected = proof(data, nonce, offset, length)
        header = {"cid": cid.to_bytes(), "nonce": nonce, "offset": offset, "length": length}
        try:
            r = await self.peers.request(target, frames.CHALLENGE, header, timeout=self.deadline)
            ok, why = r.header.get("mac") == expected, "a wrong answer"
        except RemoteError as e:
            if e.code == BUSY:
                return None  # its allowance of challenges is used up: no verdict
            ok, why = False, f"no answer: {e}"  # it said it holds the block, and cannot prove it
        except Exception as e:
            ok, why = False, f"no answer: {e}"
        track = self.peers.track
        if ok:
            self.passed += 1
            track.audit_ok(target)
            return True
        self.failed += 1
        track.audit_failed(target, why)
        log.info("node {t} failed an audit of block {cid} ({why}): its copy counts as lost", t=short_node_id(target),
                 cid=str(cid), why=why)
        repairer = getattr(self.node, "repairer", None)
        if repairer is not None:
            if owner:  # the block of a file of this node's: the origin's part of repair sends it
                repairer.copy_lost(cid, key)
            else:
                repairer.check_now(key)
        return False
