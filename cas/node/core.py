"""The node core: one object that owns the data dir, the block store, the index and the worker pool, and
offers storing, reading, listing and forgetting files. The HTTP API and the CLI call this; it calls the
upload/download pipelines, which call the block store.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import FileBodyProducer

from cas import __version__
from cas.base.budget import Budget
from cas.base.cid import CID
from cas.base.errors import (
    BlockNotFound,
    Busy,
    CorruptBlock,
    FileNotFound,
    OffsetMismatch,
    Pinned,
    SessionBusy,
    SessionNotFound,
    TooFewReplicas,
)
from cas.base.nodeid import format_node_id
from cas.content import cipher
from cas.content.capability import ReadCap
from cas.content.manifest import FANOUT, SALT_SIZE, Link, check_name
from cas.content.verify import VerifyReport, verify_file
from cas.network.audit import proof
from cas.network.health import file_health
from cas.network.placement import RANK_SLACK, Rendezvous, file_placement, manifest_key
from cas.network.repair import REPAIR_AFTER, REPAIR_RATE
from cas.network.replication import BLOCK_DEADLINE, Replicator
from cas.network.retrieval import BlockTimes, Retriever, Then, checked_then
from cas.node import pinning
from cas.node.download import Download, OpenFile, open_file
from cas.node.holding import Holding
from cas.node.scrub import SCRUB_INTERVAL, Scrubber
from cas.node.upload import SESSION_TTL, StoredFile, Upload
from cas.store.blockstore import DiskBlockStore
from cas.store.collector import CollectResult, Pins, collect_from_index
from cas.store.datadir import DataDir
from cas.store.expiry import PERIOD as GC_PERIOD
from cas.store.expiry import LeaseCollector
from cas.store.index import FileRecord, Index, Session
from cas.store.leases import LEASE_TIME, LEGACY, MAX_LEASE_TIME
from cas.store.placements import PROVISIONAL

log = Logger()

BUFFER_BUDGET = 16 << 20  # bytes of block buffers all transfers of a node may hold together (one upload's window)
MAX_UPLOADS = 32
MAX_LEASES = 100_000  # leases one peer may have on this node (keys)
RELEASE_WAIT = 15.0  # seconds ``forget`` waits for holders to acknowledge releases before it answers
SESSION_SWEEP = 3600.0  # seconds between sweeps of expired upload sessions


class Node(Holding):
    def __init__(
        self,
        datadir: DataDir,
        reactor: Any,
        storage_limit: int | None = None,
        workers: int = 4,
        segment_size: int = cipher.SEGMENT_SIZE,
        fanout: int = FANOUT,
        window: int = 8,
        run: Callable[..., Deferred] | None = None,
        replicas: int = 3,
        quota: int | None = None,
        block_deadline: float = BLOCK_DEADLINE,
        buffer_budget: int = BUFFER_BUDGET,
        max_uploads: int = MAX_UPLOADS,
        lease_time: int = LEASE_TIME,
        max_lease_time: int = MAX_LEASE_TIME,
        peer_share: int | None = None,
        max_leases: int = MAX_LEASES,
        gc_period: float = GC_PERIOD,
        monotonic: Callable[[], float] | None = None,
        clock: IReactorTime | None = None,
        repair_after: float = REPAIR_AFTER,
        repair_rate: int = REPAIR_RATE,
        scrub_interval: float = SCRUB_INTERVAL,
    ) -> None:
        self.datadir = datadir
        self.reactor: IReactorTime = reactor
        # The wall clock of leases, sessions, renewal, release and collection (tests pass a task.Clock to move
        # weeks in a second while the network runs on the reactor).
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.identity = datadir.identity()
        self.store = DiskBlockStore(datadir.path, storage_limit)
        self.index = Index(datadir.join("index.sqlite"))
        self.pins = Pins()
        self.segment_size, self.fanout, self.window = segment_size, fanout, window
        self._pool: ThreadPool | None = None
        if run is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=workers, name="cas-worker")
            run = self._run_in_pool
        self.run = run
        self._gc_lock = DeferredLock()
        self.expiry = LeaseCollector(self.index, self.store, self.pins, self.run, self.clock, self._gc_lock,
                                     period=gc_period, monotonic=monotonic)
        self.started_at = time.time()
        self.peers: Any = None  # the PeerManager, set by the service (a node can run without peers in tests)
        self.replicas = replicas  # holders of every block besides this node
        self.quota = quota  # bytes this node holds for others at most (None: up to the storage limit)
        self.placement = Rendezvous()
        self.block_deadline = block_deadline  # seconds a holder has to acknowledge (or send) one block
        self._retriever: Retriever | None = None  # made once peers are set (_retrieve)
        self.block_times = BlockTimes(reactor)  # how fast each peer sends blocks: readers ask the fastest first
        self.budget = Budget(buffer_budget)  # block buffers of all uploads and downloads together (cas/base/budget.py)
        self.max_uploads = max_uploads  # uploads at once; past it, Busy (HTTP 503 with Retry-After)
        self.uploads = 0
        self.lease_time = lease_time  # what this node's uploads ask holders for, seconds
        self.max_lease_time = max_lease_time  # the longest lease this node grants
        # What one peer's leases may cover here: max(quota / 16, 1 GiB) by default, no limit without a quota.
        self.peer_share = peer_share if peer_share is not None else (
            max(quota // 16, 1 << 30) if quota is not None else None)
        self.max_leases = max_leases
        self.releaser: Any = None  # the Releaser, set by the service with the peers
        self.renewer: Any = None  # the Renewer, set by the service with the peers
        self.repairer: Any = None  # the Repairer, set by the service with the peers
        self.scrubber = Scrubber(self, scrub_interval)  # started by the service (cas/node/scrub.py)
        self.auditor: Any = None  # the Auditor, set by the service with the peers
        self.repair_after, self.repair_rate = repair_after, repair_rate  # cas/network/repair.py
        self._reserved: dict[tuple[bytes, CID], tuple[bytes, int]] = {}  # being written: -> (sender, size)
        self._reserved_bytes = 0
        self._hold_batch: list[tuple[tuple[str, CID, int, int, bytes, int], Deferred[None]]] = []
        self._hold_info: list[tuple[bytes, bytes | None, int | None, list[tuple[bytes, int]]]] = []
        self._active_sessions: set[str] = set()  # upload sessions with a piece being received

    @property
    def node_id(self) -> str:
        return str(self.identity)

    def _run_in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred:
        assert self._pool is not None
        return deferToThreadPool(self.reactor, self._pool, f, *args)  # type: ignore[arg-type]

    def start(self) -> None:
        if self._pool is not None:
            self._pool.start()
        # Blocks of uploads cut short by a crash (their refs were dropped when the index opened), and of
        # upload sessions that expired while the node was down.
        self.expire_sessions(collect=False)
        self.collect_garbage().addErrback(lambda f: log.failure("collecting garbage failed", f))
        self._expiry = self.clock.callLater(SESSION_SWEEP, self._sweep_sessions)  # type: ignore[attr-defined]
        self.expiry.start()

    def _sweep_sessions(self) -> None:
        self._expiry = self.clock.callLater(SESSION_SWEEP, self._sweep_sessions)  # type: ignore[attr-defined]
        try:
            self.expire_sessions()
        except Exception:
            log.failure("expiring upload sessions failed")

    def stop(self) -> None:
        expiry, self._expiry = getattr(self, "_expiry", None), None
        if expiry is not None and expiry.active():
            expiry.cancel()
        self.expiry.stop()
        self.scrubber.stop()  # its pass and any retry of a block it could not replace
        if self._pool is not None:
            self._pool.stop()
        self.index.close()
        self.datadir.release()  # last: another node may use the dir once this one has closed it

    # -- storing -----------------------------------------------------------------------------------------------
    def upload(
        self, name: str, content_type: str = "application/octet-stream", min_replicas: int = 0,
        session: Session | None = None, resume: list[Link] | None = None, prior_replicas: int | None = None,
    ) -> Upload:
        """A consumer to write a file into; call ``finish()`` when the source is complete. Every block is also
        placed on ``replicas`` holders when the node has peers; fewer than ``min_replicas`` fails the upload."""
        if self.uploads >= self.max_uploads:
            raise Busy(f"this node is already receiving {self.uploads} uploads; try again shortly")
        self._check_min_replicas(min_replicas)
        place = None
        if self.peers is not None and self.replicas > 0:
            members = self.peers.members()
            if len(members) < min_replicas:
                raise TooFewReplicas(
                    f"at least {min_replicas} replicas asked for, but this node knows {len(members)} other node(s)")
            replicator = Replicator(self.peers, self.placement, self.replicas, self.block_deadline,
                                    lease=min(PROVISIONAL, self.lease_time))
            place = replicator.place
        elif min_replicas > 0:
            raise TooFewReplicas(f"at least {min_replicas} replicas asked for, but this node has no peers")
        up = Upload(
            store=self.store, index=self.index, pins=self.pins, run=self.run, clock=self.reactor,
            name=name, content_type=content_type, segment_size=self.segment_size, fanout=self.fanout,
            window=self.window, replicate=place, min_replicas=min_replicas,
            want_replicas=self.replicas if place is not None else 0, budget=self.budget,
            session=session, resume=resume or (), prior_replicas=prior_replicas,
            key=session.key if session is not None else None, salt=session.salt if session is not None else None,
            lease_time=self.lease_time,
        )
        if place is not None:
            replicator.plan = up.plan
        self.uploads += 1

        def ended(result: Any) -> Any:
            self.uploads -= 1
            return result

        up.done.addBoth(ended)
        up.done.addCallback(self._recorded)
        up.done.addErrback(self._collect_after_failure)
        return up

    def _check_min_replicas(self, min_replicas: int) -> None:
        if min_replicas > self.replicas:
            raise TooFewReplicas(f"at least {min_replicas} replicas asked for, but this node keeps {self.replicas}")

    # -- resumable uploads ----------------------------------------------------------------------------------
    def open_session(self, name: str, content_type: str = "application/octet-stream", min_replicas: int = 0) -> Session:
        """A resumable upload: its key, salt and progress live in the index until the file is recorded or the
        session expires (``SESSION_TTL`` after its last progress)."""
        check_name(name, content_type)
        self._check_min_replicas(min_replicas)
        now = int(self.clock.seconds())
        s = Session(os.urandom(16).hex(), cipher.new_file_key(), os.urandom(SALT_SIZE), name, content_type,
                    self.segment_size, min_replicas, now, now + SESSION_TTL, 0)
        self.index.add_session(s)
        return s

    def session(self, sid: str) -> Session:
        s = self.index.session(sid) if re.fullmatch(r"[0-9a-f]{32}", sid) else None
        if s is None or s.expires <= self.clock.seconds():
            raise SessionNotFound(f"no upload session {sid[:40]!r} on this node (it may have expired or ended)")
        return s

    def resume_session(self, sid: str, offset: int) -> Upload:
        """An Upload continuing session ``sid`` at plaintext ``offset``, which must be where it stands."""
        s = self.session(sid)
        if sid in self._active_sessions:
            raise SessionBusy(f"a piece of upload session {sid} is already being received; try again when it ends")
        if offset != s.offset:
            raise OffsetMismatch(f"upload session {sid} continues at byte {s.offset}, not {offset}", s.offset)
        links = [Link(c, n) for c, n in self.index.session_links(sid, s.blocks)]
        # Earlier pieces' blocks still short of holders count in this piece's answer (and its min_replicas).
        prior = self.index.fewest_holders(link.cid for link in links) if links else None
        up = self.upload(s.name, s.content_type, s.min_replicas, session=s, resume=links, prior_replicas=prior)
        self._active_sessions.add(sid)
        up.done.addBoth(self._session_ended, sid)
        return up

    def _session_ended(self, result: Any, sid: str) -> Any:
        self._active_sessions.discard(sid)
        return result

    def drop_session(self, sid: str) -> Deferred[CollectResult]:
        self.session(sid)
        if sid in self._active_sessions:
            raise SessionBusy(f"a piece of upload session {sid} is being received; drop it once that ends")
        self.index.drop_session(sid, until=int(self.clock.seconds()) + PROVISIONAL)
        self._send_releases()
        return self.collect_garbage()

    def expire_sessions(self, collect: bool = True) -> int:
        gone = [i for i in self.index.expired_sessions(int(self.clock.seconds())) if i not in self._active_sessions]
        for sid in gone:
            self.index.drop_session(sid, until=int(self.clock.seconds()) + PROVISIONAL)
        if gone:
            self._send_releases()
        if gone and collect:
            self.collect_garbage().addErrback(lambda f: log.failure("collecting garbage failed", f))
        return len(gone)

    def _send_releases(self) -> None:
        if self.releaser is not None:
            self.releaser.send().addErrback(lambda f: log.failure("sending releases failed", f))

    def _recorded(self, stored: Any) -> Any:
        """A file is recorded: its provisional leases on the holders become full ones now."""
        if self.renewer is not None:
            self.renewer.kick()
        return stored

    def _collect_after_failure(self, failure: Any) -> Any:
        """A failed upload leaves unreferenced blocks: free their space now rather than at the next start, and
        release what it placed on holders (queued by the upload; a session's blocks stay for the next piece)."""
        self._send_releases()
        self.collect_garbage().addErrback(lambda f: log.failure("collecting garbage failed", f))
        return failure

    def put_path(
        self, path: str, name: str | None = None, content_type: str = "application/octet-stream", min_replicas: int = 0,
    ) -> Deferred[StoredFile]:
        """Store a local file, streaming it through the pipeline. The outcome is the upload's: when the upload
        fails first it stops the file producer, whose own Deferred then never fires (IBodyProducer)."""
        f = open(path, "rb")
        up = self.upload(name if name is not None else os.path.basename(path), content_type, min_replicas)
        producer = FileBodyProducer(f, readSize=self.segment_size)
        up.registerProducer(producer, True)
        out: Deferred[StoredFile] = Deferred()

        def settled(result: Any) -> None:
            f.close()
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)

        def source_done(_: object) -> None:
            up.unregisterProducer()
            up.finish()

        def source_failed(failure: Failure) -> None:
            up.abort(f"reading {path} failed: {failure.getErrorMessage()}")

        up.done.addBoth(settled)
        producer.startProducing(up).addCallbacks(source_done, source_failed)
        return out

    # -- reading -----------------------------------------------------------------------------------------------
    def fetch(self, cid: CID) -> Deferred[bytes]:
        """A verified block from the local store. A corrupt copy is quarantined by the store and replaced from
        another holder in the background (the caller gets CorruptBlock now)."""
        return self.run(self.store.get, cid).addErrback(self._corrupt_here, cid)

    def _corrupt_here(self, f: Failure, cid: CID) -> Failure:
        if f.check(CorruptBlock):
            self.scrubber.found_corrupt(cid, "found by a read")
        return f

    def prove(self, cid: CID, nonce: bytes, offset: int, length: int) -> Deferred[bytes]:
        """The answer to a CHALLENGE: BLAKE3 keyed with ``nonce`` over the stored block's bytes ``offset`` to
        ``offset + length`` (BlockNotFound if it is not here)."""
        return self.run(lambda: proof(self.store.read(cid), nonce, offset, length))

    def check_reported(self, cid: CID) -> Deferred[str]:
        """A peer says the bytes we sent for ``cid`` did not match: "corrupt" (the copy here fails its hash: it
        is quarantined and replaced from another holder), "good", or "absent"."""

        def checked(good: bool | None) -> str:
            if good is None:
                return "absent"
            if not good:
                self.scrubber.found_corrupt(cid, "reported by a reader")
                return "corrupt"
            return "good"

        return self.run(self.store.check, cid).addCallback(checked)

    def retrieve(self, cid: CID, key: bytes | None) -> Deferred[bytes]:
        """A verified block from the other nodes: the holders of ``key`` first (None: those that have it)."""
        if self.peers is None:
            return fail(BlockNotFound(f"block {cid} is not on this node, and it has no peers"))
        return self._retrieve(cid, key if key is not None else cid.to_bytes(), 0)

    def placement_key(self, cid: CID) -> Deferred[bytes | None]:
        """The placement key of a block stored here: the key it is held under, or, for a block of this node's own
        files, the key the upload placed it under (from the file's manifests); None if neither says."""
        keys = [k for k in self.index.hold_keys(cid) if k is not None and not k.startswith(LEGACY)]
        if keys:
            return succeed(keys[0])

        async def from_files() -> bytes | None:
            for owner in self.index.owners_of(cid):
                kind, _, name = owner.partition(":")
                if kind not in ("file", "pin"):
                    continue
                try:
                    for c, key in await self.file_blocks(CID.parse(name)):
                        if c == cid:
                            return key
                except Exception:
                    continue
            return None

        return ensureDeferred(from_files())

    def serve_block(self, cid: CID) -> Deferred[bytes | memoryview]:
        """A block for a peer that asked for it: read at once on this thread if the page cache holds it, else
        on a worker. Not hashed here: the peer checks every block it receives, and a block that rotted on
        this disk is found by local reads (``fetch``) and storage audits (docs/network.md, "Serving blocks")."""
        try:
            data = self.store.read(cid, cached_only=True)
        except Exception:
            return fail()
        if data is not None:
            return succeed(data)
        return self.run(self.store.read, cid)

    def fetch_placed(self, cid: CID, key: bytes, spread: int = 0, then: Then | None = None) -> Deferred[Any]:
        """A verified block: from the local store, else from the holders of its placement ``key``. With
        ``then``: what ``then`` (run on a worker thread) made of the block; it runs in the job that checked a
        block fetched from a holder."""

        def local(block: bytes | memoryview) -> Any:  # ``then`` of a block read here (a worker job of its own)
            return self.run(then, block) if then is not None else block

        if self.peers is None:
            return self.fetch(cid).addCallback(local)
        if not self.store.has(cid) and self.peers.members():
            # Not here (a stat, on this thread): straight to the holders, without a worker thread's round trip
            # and a BlockNotFound per block, which a node reading a file it does not hold would pay every MiB.
            return self._retrieve(cid, key, spread, then)
        d = self.fetch(cid)

        def elsewhere(f: Failure) -> Deferred[Any] | Failure:
            f.trap(BlockNotFound, CorruptBlock)
            if not self.peers.members():
                return f
            d = self._retrieve(cid, key, spread, then)
            # A corrupt local copy (quarantined) that no peer could replace: that is the error to report.
            return d.addErrback(lambda f2: f if f.check(CorruptBlock) and f2.check(BlockNotFound) else f2)

        # ``then`` of a local block only: the holders' answer (from ``elsewhere``) has been through it already.
        return d.addCallbacks(local, elsewhere)

    def _retrieve(self, cid: CID, key: bytes, spread: int, then: Then | None = None) -> Deferred[Any]:
        assert self.peers is not None
        r = self._retriever
        if r is None or r.peers is not self.peers:  # one per PeerManager: it keeps no state of its own per block
            # Blocks are hashed on a worker thread: a node reading a file it does not hold is bound by its
            # reactor thread (TLS, HTTP, per-block work), and BLAKE3 releases the GIL.
            r = self._retriever = Retriever(self.peers, self.placement, self.replicas, self.block_deadline,
                                            check=self._verify_block, times=self.block_times)
        return r.fetch(cid, key, spread, then)

    def _verify_block(self, cid: CID, data: bytes | memoryview, then: Then | None) -> Deferred[Any]:
        return self.run(checked_then, cid, data, then)

    def open(self, cap: ReadCap) -> Deferred[OpenFile]:
        return ensureDeferred(open_file(cap, self.fetch_placed))

    def file_blocks(self, root: CID) -> Deferred[list[tuple[CID, bytes]]]:
        """Every block of the file named by ``root`` with its placement key, the manifests read from the local
        store or else from their holders (the root id is enough: nothing is decrypted)."""
        return ensureDeferred(file_placement(root, lambda c: self.fetch_placed(c, manifest_key(c.to_bytes()))))

    def health(self, root: CID) -> Deferred[dict[str, Any]]:
        """Which nodes hold each block of the file under a live lease (cas/network/health.py)."""
        return ensureDeferred(file_health(self, root))

    def verify(self, root: CID) -> Deferred[VerifyReport]:
        """Check every block of a file by its verify capability (no key needed, nothing decrypted)."""
        return ensureDeferred(verify_file(root, self.fetch))

    def download(self, f: OpenFile, offset: int = 0, length: int | None = None) -> Download:
        return Download(f, self.fetch_placed, offset, length, window=self.window, budget=self.budget)

    # -- the owner's files -------------------------------------------------------------------------------------
    def files(self) -> list[FileRecord]:
        return self.index.files()

    def forget(self, root: CID) -> Deferred[dict[str, Any]]:
        """Forget a file: its blocks here are collected unless another file needs them, and its leases on the
        holders are released (those not reachable within ``RELEASE_WAIT`` s stay queued, see release.py).
        Fires with the answer of ``DELETE /v1/files/KEY``."""
        also = self.rank_holders(f"file:{root}")
        holders = self.index.forget(root, int(self.clock.seconds()) + self.lease_time, also)
        if holders is None:
            if self.index.pinned(root) is not None:
                raise Pinned("this node pinned this file but did not store it: use cas unpin")
            raise FileNotFound(f"no file with id {root} is stored by this node's owner")
        return self._release(holders, {"forgotten": True}, sorted({h for h, _k in also} - set(holders)))

    def rank_holders(self, owner: str) -> list[tuple[bytes, bytes]]:
        """(node, key) for each key of ``owner`` and each node among the key's first N + 4 in rank: where a
        lease of ours may stand that we did not record (a copy made by repair takes the leases it carried)."""
        if self.peers is None:
            return []
        members = list(self.peers.members())
        return [(m, k) for k in self.index.placements.owner_keys(owner)
                for m in self.placement.rank(k, members)[: self.replicas + RANK_SLACK]]

    def pin(self, root: CID, local: bool = False) -> Deferred[dict[str, Any]]:
        """Keep a file of another node alive with this node's leases (cas/node/pinning.py)."""
        return ensureDeferred(pinning.pin(self, root, local))

    def unpin(self, root: CID) -> Deferred[dict[str, Any]]:
        """Release a pin's leases and let its local copy be collected (FileNotFound if not pinned)."""
        also = self.rank_holders(f"pin:{root}")
        holders = pinning.unpin_holders(self, root, also)
        return self._release(holders, {"unpinned": True}, sorted({h for h, _k in also} - set(holders)))

    def pinned_files(self) -> dict[str, Any]:
        """The answer of ``GET /v1/pins``."""
        return pinning.pins(self)

    def _release(self, holders: list[bytes], answer: dict[str, Any], others: list[bytes] = ()
                 ) -> Deferred[dict[str, Any]]:
        """Collect what was freed here and release ``holders``' leases (and ``others``', not reported: nodes
        that may hold leases of ours); ``answer`` with what happened to ``holders``."""

        def release(freed: CollectResult) -> Deferred[dict[str, Any]]:
            answer.update({"blocks_freed": freed.blocks, "bytes_freed": freed.bytes,
                           "local_bytes_freed": freed.bytes, "released_on": [], "pending": []})
            if not holders:
                return succeed(answer)
            if self.releaser is None:
                answer["pending"] = [format_node_id(h) for h in holders]
                return succeed(answer)
            if others:
                self.releaser.send(others).addErrback(lambda f: log.failure("sending releases failed", f))
            sent = self.releaser.send(holders)
            sent.addTimeout(RELEASE_WAIT, self.reactor)

            def done(outcome: Any) -> dict[str, Any]:
                ok = outcome if isinstance(outcome, dict) else {}
                answer["released_on"] = [format_node_id(h) for h in holders if ok.get(h)]
                answer["pending"] = [format_node_id(h) for h in holders if not ok.get(h)]
                return answer

            return sent.addBoth(done)

        return self.collect_garbage().addCallback(release)

    def collect_garbage(self) -> Deferred[CollectResult]:
        """One collection pass on the worker pool; reads and writes go on meanwhile."""

        def run(_: object) -> Deferred[CollectResult]:
            self.pins.begin_pass()
            d = self.run(collect_from_index, self.store, self.pins, self.index.path)  # off the reactor

            def end(result: Any) -> Any:
                self.pins.end_pass()
                self._gc_lock.release()
                return result

            return d.addBoth(end)

        return self._gc_lock.acquire().addCallback(run)

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` answers. Used space is broken down into this owner's own files (and uploads),
        blocks held for others under live leases, and blocks held for others awaiting collection."""
        used, leased = self.store.used(), self.index.leases.leased_bytes
        held_all = self.index.leases.all_bytes()
        return {
            "node_id": self.node_id,
            "version": __version__,
            "uptime": max(0.0, time.time() - self.started_at),
            "storage": {"used": used, "free": self.store.free(), "limit": self.store.limit, "quota": self.quota,
                        "own": max(0, used - held_all), "held": leased,
                        "awaiting_collection": max(0, held_all - leased), "quarantined": self.store.quarantined()},
            "files": self.index.count(),
            "leases": {"granted": self.index.leases.count(), "releases_pending": self.index.count_releases()},
            "repair": self.repairer.status() if self.repairer is not None else None,
            "scrub": self.scrubber.status(),
            "audits": self.auditor.status() if self.auditor is not None else None,
        }

