"""The holder side of a node: blocks other nodes place here under their leases.

``hold_block`` stores and records a block sent with ``PUT_BLOCK`` under the sender's lease (checked against the
key's rank, the sender's lease count and share, and the quota), ``lease`` and ``release`` answer ``LEASE`` and
``RELEASE``, ``has_blocks``/``has_leased`` answer ``HAS``. A mixin of ``Node``: it uses the node's store, index,
clock and limits (cas/node/core.py).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cas.base import crash
from cas.base.cid import CID
from cas.base.errors import (
    NotInRank,
    QuotaExceeded,
    WrongPlacementKey,
)
from cas.content.manifest import is_manifest
from cas.network.placement import RANK_SLACK, Rendezvous, manifest_key
from cas.store.blockstore import DiskBlockStore
from cas.store.collector import Pins
from cas.store.index import Index
from cas.store.leases import legacy_key, read_incomplete

log = Logger()


class Holding:
    """``Node``'s methods for blocks held for other nodes (docs/replication.md, "Leases")."""

    # set by Node.__init__
    index: Index
    store: DiskBlockStore
    pins: Pins
    run: Callable[..., Deferred]
    reactor: IReactorTime
    clock: IReactorTime
    peers: Any
    placement: Rendezvous
    replicas: int
    quota: int | None
    peer_share: int | None
    max_leases: int
    max_lease_time: int
    _reserved: dict[tuple[bytes, CID], tuple[bytes, int]]
    _reserved_bytes: int
    _hold_batch: list[tuple[tuple[str, CID, int, int, bytes, int], Deferred[None]]]
    _hold_info: list[tuple[bytes, bytes | None, int | None, list[tuple[bytes, int]]]]

    def has_blocks(self, cids: list[CID]) -> Deferred[list[bool]]:
        return self.run(lambda: [self.store.has(c) for c in cids])

    def has_leased(self, cids: list[CID]) -> Deferred[tuple[list[bool], list[bool]]]:
        """Per block: whether it is in the store, and whether it is held here for another node under a live
        lease (HAS in protocol version 2)."""
        leased = self.index.leases.leased_blocks(cids, int(self.clock.seconds()))
        return self.has_blocks(cids).addCallback(lambda held: (held, [h and c in leased for h, c in zip(held, cids)]))

    def hold_block(
        self, peer: str, cid: CID, data: bytes | memoryview, key: bytes | None = None, lease: int | None = None,
        origin: bytes | None = None, n: int | None = None, carried: list[tuple[bytes, int]] | None = None,
    ) -> Deferred[bool]:
        """Store a block the node ``peer`` (hex id) sent, under its lease on placement ``key``: checked against its
        id, written durably, and recorded with the lease (min(``lease``, ``--max-lease-time``) seconds from now)
        before the Deferred fires, so an acknowledged block survives a crash and is kept while a lease on its
        key lives. Without a key or a lease (a node of protocol version 1): ``legacy_key(peer)`` and the longest
        lease. A manifest block's key must be its own (``manifest_key``): WrongPlacementKey otherwise; a stripe
        key cannot be checked. A new lease needs this node among the key's first N + 4 in rank (NotInRank) and
        room in the peer's lease count; new bytes need room in the peer's share and in the quota
        (QuotaExceeded). Fires with False if the block was already here."""
        size = len(data)
        holder = bytes.fromhex(peer)
        # A node of protocol version 1 (no lease) cannot renew or release: what it pushes is kept under its
        # legacy key, whatever key it named, and counts as no leased replica (until announced, announce.py).
        pkey = key if key is not None and lease is not None else legacy_key(holder)
        expires = int(self.clock.seconds()) + min(lease if lease is not None else self.max_lease_time,
                                                     self.max_lease_time)
        try:
            if key is not None and lease is not None:
                self._check_new_lease(holder, key)
            new = not self.index.leases.has_block(pkey, cid) and (pkey, cid) not in self._reserved
            if new:
                self._check_room(holder, size)
        except Exception:
            return fail()
        if new:
            self._reserved[(pkey, cid)] = (holder, size)
            self._reserved_bytes += size

        def work() -> bool:
            if key is not None and is_manifest(data) and key != manifest_key(cid.to_bytes()):
                raise WrongPlacementKey(f"block {cid} is a manifest block: its placement key is its own id")
            self.pins.pin(cid)  # garbage collection must not take it before its hold is recorded
            try:
                return self.store.put(cid, data)  # type: ignore[arg-type]
            except BaseException:
                self.pins.release([cid])
                raise

        def recorded(stored: bool) -> Deferred[bool]:
            crash.point("hold.block_stored")
            d: Deferred[None] = Deferred()
            if not self._hold_batch:
                self.reactor.callLater(0, self._commit_holds)  # type: ignore[attr-defined]
            self._hold_batch.append(((peer, cid, size, int(self.clock.seconds()), pkey, expires), d))
            if pkey == key and (origin is not None or carried):
                self._hold_info.append(self._placement_info(holder, key, origin, n, carried or [], expires))

            def unpin(result: Any) -> Any:
                self.pins.release([cid])  # recorded (or not): the pin has done its work either way
                return stored if not isinstance(result, Failure) else result

            return d.addBoth(unpin)

        def unreserve(result: Any) -> Any:
            if new:  # only the call that reserved gives back, what it reserved
                self._reserved.pop((pkey, cid), None)
                self._reserved_bytes -= size
            return result

        # The write goes on to its record even if the caller stops waiting (a peer cancelled, or its
        # connection dropped): a cancelled outer Deferred must not skip ``recorded`` and leak the pin.
        outer: Deferred[bool] = Deferred()
        inner = self.run(work).addCallback(recorded).addBoth(unreserve)

        def settle(result: Any) -> None:
            if outer.called:  # cancelled: nobody waits for the outcome
                if isinstance(result, Failure):
                    log.info("storing block {cid} for {peer} failed after the request was cancelled: {e}",
                             cid=str(cid), peer=peer, e=result.getErrorMessage())
            elif isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        inner.addBoth(settle)
        return outer

    def _placement_info(self, sender: bytes, key: bytes, origin: bytes | None, n: int | None,
                        carried: list[tuple[bytes, int]], expires: int
                        ) -> tuple[bytes, bytes | None, int | None, list[tuple[bytes, int]]]:
        """What a PUT_BLOCK says of its key beyond the sender's lease, as far as it can be believed: the leases a
        repairer carries (capped by ``--max-lease-time``, as any lease) skip holders at their lease count here
        (nobody can fill a third node's count); ``origin`` and ``n`` are taken from the origin itself or from a
        repairer carrying the origin's lease."""
        book = self.index.leases
        now = int(self.clock.seconds())
        kept = [(h, now + min(t, self.max_lease_time)) for h, t in carried
                if h != sender and (book.expiry(key, h) is not None or book.peer_keys.get(h, 0) < self.max_leases)]
        if origin is not None and origin != sender and origin not in {h for h, _t in kept}:
            origin = n = None
        return key, origin, n, kept

    def _check_new_lease(self, holder: bytes, key: bytes) -> None:
        """A lease ``holder`` does not have on ``key`` yet must be one this node should take (NotInRank) and
        within the peer's lease count (QuotaExceeded)."""
        book = self.index.leases
        if book.expiry(key, holder) is not None:
            return
        if self.peers is not None:
            me = self.peers.node_id
            rank = self.placement.rank(key, [*self.peers.members(), me])
            if me not in rank[: self.replicas + RANK_SLACK]:
                raise NotInRank(f"this node is not among the first {self.replicas + RANK_SLACK} holders of the "
                                "key in its view of the network")
        if book.peer_keys.get(holder, 0) >= self.max_leases:
            raise QuotaExceeded(f"your node has {self.max_leases} leases here, the most this node gives one node")

    def _check_room(self, holder: bytes, size: int) -> None:
        book = self.index.leases
        if self.peer_share is not None:
            mine = book.peer_bytes.get(holder, 0) + sum(n for h, n in self._reserved.values() if h == holder)
            if mine + size > self.peer_share:
                raise QuotaExceeded(f"your node's leases cover {mine} bytes here; one node's share is {self.peer_share}")
        if self.quota is not None and self.held_bytes() + size > self.quota:
            raise QuotaExceeded(f"this node holds {self.held_bytes()} bytes for others; its quota is {self.quota}")

    def lease(self, holder: bytes, keys: list[bytes], seconds: int, announced: list[list[CID]] | None = None
              ) -> Deferred[tuple[int, list[bool], list[bool]]]:
        """``holder`` asks for (or renews) leases of ``seconds`` on ``keys``: granted (min(seconds,
        ``--max-lease-time``), the same for all) on each key this node holds a block under and may lease (as
        for PUT_BLOCK). Fires with (granted seconds, per key whether it was, per key whether every block held
        under it is still in the store: checked on a worker, a stat per block). ``announced`` (an origin's first
        LEASE for a file stored before leases): per key, the blocks it placed under it; those ``holder`` pushed
        here without a key move to it first, where this node may lease the key."""
        granted = max(0, min(seconds, self.max_lease_time))
        book = self.index.leases
        if announced:
            now = int(self.clock.seconds())
            allowed = []
            for key, cids in zip(keys, announced):
                try:
                    if cids:
                        self._check_new_lease(holder, key)
                        allowed.append((key, cids))
                except (NotInRank, QuotaExceeded):
                    pass
            if allowed:
                self.index.attach_legacy(holder, allowed, now)
        ok = []
        for key in keys:
            try:
                self._check_new_lease(holder, key)
                if book.expiry(key, holder) is None:
                    self._check_room(holder, book.key_bytes(key))
                ok.append(book.holds_key(key))
            except (NotInRank, QuotaExceeded):
                ok.append(False)
        self.index.grant_leases(holder, [k for k, yes in zip(keys, ok) if yes], int(self.clock.seconds()) + granted)
        crash.point("lease.after_grant")
        d = self.run(read_incomplete, self.index.path, self.store.has, [k for k, yes in zip(keys, ok) if yes])
        return d.addCallback(lambda lost: (granted, ok, [yes and k not in lost for k, yes in zip(keys, ok)]))

    def release(self, holder: bytes, keys: list[bytes]) -> list[bool]:
        """``holder`` gives up its leases on ``keys`` (only its own: nobody can release another's); per key,
        whether it had one. Blocks whose keys are left without a lease are collected a GC period later."""
        return self.index.drop_leases(holder, keys, int(self.clock.seconds()))

    def _commit_holds(self) -> None:
        """Record every hold queued in this reactor turn in one transaction, then acknowledge them."""
        batch, self._hold_batch = self._hold_batch, []
        info, self._hold_info = self._hold_info, []
        try:
            self.index.record_holds((row for row, _d in batch), info)
        except Exception:
            f = Failure()
            for _row, d in batch:
                d.errback(f)
            return
        crash.point("hold.after_record")
        for _row, d in batch:
            d.callback(None)
        if getattr(self, "repairer", None) is not None:
            try:
                self.repairer.note_keys({row[4] for row, _d in batch})  # a new key's rank, kept for changes
            except Exception:
                log.failure("ranking newly held keys failed (the sweep ranks them later)")

    def drop_extra(self, key: bytes) -> Deferred[int]:
        """This node's copies under ``key`` are extra (repair checked that N nodes ranked above hold them, and
        audited one): the key's holds and leases go, and its blocks nothing else references leave the store (the
        lease holders renew at the nodes that hold the copies now). The bytes freed."""
        with self.index._transaction():
            gone = self.index.leases.forget_key(key, int(self.clock.seconds()))

        def delete() -> int:
            return sum(self.store.delete_unless(c, lambda x: x in self.pins) for c, _n in gone)

        return self.run(delete)

    def held_bytes(self) -> int:
        """Bytes held for other nodes under leases (recorded, and being written)."""
        return self.index.leases.leased_bytes + self._reserved_bytes
