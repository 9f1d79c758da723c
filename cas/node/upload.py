"""The store pipeline: source -> segment -> encrypt -> hash -> store, with bounded buffers.

``Upload`` is an ``IConsumer``: register any Twisted producer (streaming or pull) and write plaintext to it,
or call ``write`` directly. Plaintext is cut into segments; each segment is sealed, hashed and written
durably on the worker pool, at most ``window`` at a time. When the window is full the producer is paused,
so memory stays near ``window x 2 x segment size`` whatever the file size. The manifest tree is built as
blocks complete, in order, and the root manifest is written last, after every block it names is durable.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cas.base import crash
from cas.base.budget import Budget
from cas.base.cid import CID
from cas.base.errors import CasError, SessionNotFound, TooFewReplicas
from cas.content import cipher
from cas.content.capability import ReadCap
from cas.content.manifest import FANOUT, SALT_SIZE, Link, ManifestBuilder, Metadata, check_name
from cas.network.placement import STRIPE_BLOCKS, manifest_key, stripe_key
from cas.store.blockstore import IBlockStore
from cas.store.collector import Pins
from cas.store.index import FileRecord, Index, Session, Underplaced
from cas.store.leases import LEASE_TIME
from cas.store.placements import PROVISIONAL

Runner = Callable[..., Deferred]
SESSION_TTL = 24 * 3600  # seconds a resumable upload is kept after its last progress
Place = Callable[[CID, bytes, bytes], Deferred]  # (block id, bytes, placement key) -> [holders that acknowledged]
log = Logger()


@attrs.frozen
class StoredFile:
    cap: ReadCap
    size: int
    blocks: int
    metadata: Metadata
    replicas: int = 0  # holders that acknowledged every block (the fewest over the file's blocks)
    wanted: int = 0  # holders every block was to have (the node's --replicas; 0 when it places nothing)


class UploadAborted(CasError):
    code = "aborted"


@implementer(IConsumer)
class Upload:
    def __init__(
        self,
        *,
        store: IBlockStore,
        index: Index,
        pins: Pins,
        run: Runner,
        clock: IReactorTime,
        name: str,
        content_type: str = "application/octet-stream",
        segment_size: int = cipher.SEGMENT_SIZE,
        fanout: int = FANOUT,
        window: int = 4,
        ref_batch: int = 64,
        key: bytes | None = None,
        salt: bytes | None = None,
        replicate: Place | None = None,
        min_replicas: int = 0,
        want_replicas: int = 0,
        budget: Budget | None = None,
        session: Session | None = None,
        resume: Sequence[Link] = (),
        prior_replicas: int | None = None,
        lease_time: int = LEASE_TIME,
    ) -> None:
        check_name(name, content_type)
        self.lease_time = lease_time  # what holders are asked for once the file is recorded
        self._store, self._index, self._pins, self._run, self._clock = store, index, pins, run, clock
        self.name, self.content_type = name, content_type
        self._seg = segment_size
        self._window = window
        self._ref_batch = ref_batch
        self._key = key or cipher.new_file_key()
        self.salt = salt if salt is not None else os.urandom(SALT_SIZE)  # chosen first: blocks are placed by it
        self._replicate = replicate
        self._min_replicas = min_replicas
        self._want = want_replicas
        self._budget = budget
        self._segments_in_flight = 0  # segments holding budget
        self._budget_waiting = False
        self._source_done = False
        self._last_dispatched = False
        self._cut_waiting = False
        self._underplaced: list[Underplaced] = []  # blocks short of ``want_replicas``: recorded with the file
        # The fewest acknowledgements of any block so far; a resumed session starts from its earlier pieces'
        # blocks still short of holders (``prior_replicas``), so the answer covers the whole file.
        self.replicas: int | None = prior_replicas
        self.on_progress: Callable[[], None] | None = None  # called whenever a block is stored (and placed)
        self._session = session  # a resumable upload: progress is recorded instead of dropped (checkpoint)
        self._owner = session.owner if session is not None else index.new_upload_owner()
        self._builder = ManifestBuilder(fanout)
        self._first = len(resume)  # data blocks stored by earlier pieces of a session
        self._links_new: list[Link] = []  # data links added to the tree by this object, in order
        self._cut = False  # end of a piece of a session: every complete segment goes, the rest is dropped
        self._done_segments: set[int] = set()  # segments stored and placed (sessions record them in order)
        self._recorded = 0  # links of ``_links_new`` recorded in the session
        self._buf: deque[bytes | memoryview] = deque()
        self._buflen = 0
        self.size = 0  # plaintext bytes received
        self.stored = 0  # plaintext bytes durably stored (progress)
        self._next_segment = 0
        self._next_link = 0
        self._results: dict[int, Link] = {}
        self._inflight = 0
        self._pinned: list[CID] = []  # stored and pinned, reference not yet committed
        self._producer: IPushProducer | IPullProducer | None = None
        self._streaming = True
        self._paused = False
        self._pull_wanted = False
        self._failure: Failure | None = None
        self._finishing = False
        self._drained: list[Deferred] = []  # waiting for no task in flight
        self.done: Deferred[StoredFile] = Deferred()
        self._settled = False
        if resume:
            self._resume(resume)

    def _resume(self, links: Sequence[Link]) -> None:
        """Rebuild the manifest tree of a session's earlier pieces; the manifest nodes they completed are
        stored (again: the store keeps one copy) and placed again (one per 20,000 blocks)."""
        for link in links:
            if link.count != self._seg + cipher.TAG_SIZE:
                raise SessionNotFound("this upload session's record is damaged (a partial segment): drop it and start again")
            for cid, raw in self._builder.add(link):
                self._start(self._node_stored(cid, raw), self._put, cid, raw)
        self._next_segment = self._next_link = len(links)
        self.size = self.stored = len(links) * self._seg

    # -- IConsumer -----------------------------------------------------------------------------------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer, self._streaming, self._paused = producer, streaming, False
        if not streaming:
            self._pull_wanted = True
            self._clock.callLater(0, self._pull)

    def unregisterProducer(self) -> None:
        self._producer = None
        self._pull_wanted = False

    def write(self, data: bytes) -> None:
        if self._failure is not None or self._finishing:
            return  # the outcome is reported through ``done``
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the producer may reuse a mutable buffer
        self._buf.append(data)
        self._buflen += len(data)
        self.size += len(data)
        self._dispatch_ready()

    def _take(self, n: int) -> bytes | memoryview:
        """Remove the first ``n`` buffered bytes, copying only when they span several writes."""
        first = self._buf[0]
        self._buflen -= n
        if len(first) >= n:
            if len(first) == n:
                self._buf.popleft()
                return first
            view = memoryview(first)
            self._buf[0] = view[n:]
            return view[:n]
        parts = []
        while n:
            piece = self._buf[0]
            if len(piece) <= n:
                parts.append(self._buf.popleft())
                n -= len(piece)
            else:
                view = memoryview(piece)
                parts.append(view[:n])
                self._buf[0] = view[n:]
                n = 0
        return b"".join(parts)

    # -- flow control --------------------------------------------------------------------------------------
    def _full(self) -> bool:
        # A segment waiting for the node's budget counts as full too: the source must stop.
        return self._inflight >= self._window or self._buflen > self._seg

    def _dispatch_ready(self) -> None:
        """Dispatch every complete segment that the node's budget lets in (the last one once the source is
        done); what does not fit waits in the buffer, the source paused, until budget is given back."""
        while self._failure is None and not self._last_dispatched:
            # At a cut the last complete segment stays too: it may be the file's last (the client resends it).
            if self._buflen > self._seg:  # more follows: not the last segment
                last = False
            elif self._source_done:
                last = True
            else:
                if self._cut and not self._cut_waiting:
                    self._cut_waiting = True  # every complete segment is on its way: record once they are done
                    self._when_drained().addCallback(lambda _: self._settle_checkpoint())
                break
            if not self._take_budget():
                break
            if last:
                plaintext: bytes | memoryview = b"".join(self._buf)
                self._buf.clear()
                self._buflen = 0
                self._last_dispatched = True
            else:
                plaintext = self._take(self._seg)
            self._dispatch_segment(plaintext, last)
            if last:
                self._when_drained().addCallback(lambda _: self._write_tree())
        self._throttle()

    def _take_budget(self) -> bool:
        if self._budget is None:
            return True
        cost = 2 * self._seg  # plaintext and sealed block, at most, while the segment is in flight
        if self._budget.take(cost):
            self._segments_in_flight += 1
            return True
        if not self._budget_waiting:
            self._budget_waiting = True
            self._budget.wait(self._budget_freed)
        return False

    def _give_budget(self, result: Any) -> Any:
        if self._budget is not None:
            self._segments_in_flight -= 1
            self._budget.give(2 * self._seg)
        return result

    def _budget_freed(self) -> None:
        self._budget_waiting = False
        if self._failure is None:
            self._dispatch_ready()

    def _throttle(self) -> None:
        p = self._producer
        if p is None or self._failure is not None:
            return
        if self._streaming:
            if self._full() and not self._paused:
                self._paused = True
                p.pauseProducing()
            elif not self._full() and self._paused:
                self._paused = False
                p.resumeProducing()
        elif not self._full() and not self._pull_wanted:
            self._pull_wanted = True
            self._clock.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_wanted = False
        if self._producer is not None and not self._streaming and not self._full() and self._failure is None:
            self._producer.resumeProducing()

    # -- the pipeline ----------------------------------------------------------------------------------------
    def _dispatch_segment(self, plaintext: bytes | memoryview, last: bool) -> None:
        index = self._next_segment
        self._next_segment += 1
        d = self._start(lambda done: self._sealed(done, index, len(plaintext)), self._seal_and_store, index, last, plaintext)
        d.addBoth(self._give_budget)
        d.addBoth(self._segment_done, index)

    def _segment_done(self, result: Any, index: int) -> Any:
        if self._failure is None:
            self._done_segments.add(index)  # stored and placed
        return result

    def _start(self, on_success: Callable[[Any], None], f: Callable[..., Any], *args: Any) -> Deferred:
        """Run ``f`` on the worker pool; ``on_success`` runs before the task counts as finished."""
        self._inflight += 1
        d = self._run(f, *args)
        d.addCallbacks(on_success, self._fail)
        d.addErrback(self._fail)
        d.addBoth(self._task_done)
        return d

    def _seal_and_store(self, index: int, last: bool, plaintext: bytes | memoryview) -> tuple[Link, bytes]:
        """Worker thread: encrypt, hash, pin and store one segment."""
        block = cipher.seal_segment(self._key, index, last, plaintext)
        cid = CID.of(block)
        self._put(cid, block, True)
        return Link(cid, len(block)), block

    def _put(self, cid: CID, block: bytes, hashed_here: bool = False) -> None:
        """Worker thread: pin, then write; the pin is ours to release once the reference is committed."""
        self._pins.pin(cid)
        try:
            self._store.put(cid, block, verified=hashed_here)
        except BaseException:
            self._pins.release([cid])
            raise
        crash.point("put.block_stored")

    def _task_done(self, result: Any) -> Any:
        self._inflight -= 1
        if self.on_progress is not None:
            self.on_progress()
        self._throttle()
        if self._inflight == 0 and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)
        return result

    def _keep_pinned(self, cid: CID) -> None:
        if self._settled:  # a job that finished after the upload failed: its block is garbage
            self._pins.release([cid])
        else:
            self._pinned.append(cid)

    def _sealed(self, done: tuple[Link, bytes], index: int, plain_len: int) -> Deferred | None:
        link, block = done
        self._keep_pinned(link.cid)
        self.stored += plain_len
        self._results[index] = link
        while self._next_link in self._results and self._failure is None:
            link_done = self._results.pop(self._next_link)
            nodes = self._builder.add(link_done)
            self._links_new.append(link_done)
            self._next_link += 1
            for cid, raw in nodes:
                self._start(self._node_stored(cid, raw), self._put, cid, raw)
        if len(self._pinned) >= self._ref_batch:
            self._commit_refs()
        return self._place(link.cid, block, stripe_key(self.salt, index // STRIPE_BLOCKS))

    def _node_stored(self, cid: CID, raw: bytes) -> Callable[[object], Deferred | None]:
        def stored(_: object) -> Deferred | None:
            self._keep_pinned(cid)
            return self._place(cid, raw, manifest_key(cid.to_bytes()))

        return stored

    def _place(self, cid: CID, block: bytes, key: bytes) -> Deferred | None:
        """Send a stored block to its holders; the task it belongs to ends when they answered."""
        if self._replicate is None or self._failure is not None:
            return None

        def counted(holders: list[bytes]) -> None:
            acks = len(holders)
            self.replicas = acks if self.replicas is None else min(self.replicas, acks)
            if acks < self._want:
                self._underplaced.append(Underplaced(cid, key, tuple(holders)))
            if acks < self._min_replicas:
                raise TooFewReplicas(
                    f"block {cid} reached {acks} holder(s), fewer than the {self._min_replicas} required")

        return self._replicate(cid, block, key).addCallback(counted)

    def plan(self, key: bytes, holders: list[bytes]) -> None:
        """The replicator is about to send blocks under ``key`` to ``holders``: recorded durably first, so that a
        crash leaves what the next start needs to release them."""
        self._index.plan_placement(self._owner, key, holders, min(PROVISIONAL, self.lease_time),
                                   int(self._clock.seconds()))

    def _commit_refs(self) -> None:
        if self._session is not None:
            self._record_progress()
            return
        batch, self._pinned = self._pinned, []
        self._index.add_refs(self._owner, batch)
        self._pins.release(batch)

    def _record_progress(self, upto: int | None = None) -> None:
        """Sessions: record, with the references, the segments stored and placed so far, in order (up to
        ``upto`` links), so that a node that dies in the middle of a piece keeps them."""
        s = self._session
        assert s is not None
        n = self._recorded
        end = len(self._links_new) if upto is None else upto
        while n < end and (self._first + n) in self._done_segments:
            if self._last_dispatched and self._first + n == self._next_segment - 1:
                break  # the file's last segment is only ever recorded with the file
            n += 1
        if upto is not None:
            n = max(n, min(upto, len(self._links_new)))  # after a drain every dispatched task has ended
        refs, self._pinned = self._pinned, []
        under, self._underplaced = self._underplaced, []
        try:
            self._index.session_progress(
                s.id, self._first + self._recorded,
                [(link.cid, link.count) for link in self._links_new[self._recorded:n]], refs, under,
                int(self._clock.seconds()) + SESSION_TTL,
            )
        finally:
            self._pins.release(refs)
        self._recorded = n

    def _fail(self, f: Failure) -> None:
        if self._failure is None:
            self._failure = f
            if not f.check(UploadAborted):
                log.warn("upload of {name!r} failed: {error}", name=self.name, error=f.getErrorMessage())
            if self._producer is not None:
                p, self._producer = self._producer, None
                p.stopProducing()
            if not self._last_dispatched:  # else the tree step, once drained, sees the failure and settles
                self._finishing = True
                self._when_drained().addCallback(lambda _: self._settle_failure())

    def _when_drained(self) -> Deferred:
        if self._inflight == 0:
            return succeed(None)
        d: Deferred = Deferred()
        self._drained.append(d)
        return d

    def _settle_failure(self) -> None:
        if self._settled:
            return
        self._settled = True
        if self._budget is not None and self._budget_waiting:
            self._budget.forget(self._budget_freed)
            self._budget_waiting = False
        if self._session is not None:
            # A piece of a resumable upload failed (or its client went away): what was stored stays, in order,
            # for the next piece to continue from.
            try:
                self._record_session()
            except Exception:
                log.failure("recording the progress of upload session {id} failed", id=self._session.id)
        else:
            self._pins.release(self._pinned)
            self._pinned = []
            self._index.drop_owner(self._owner, int(self._clock.seconds()) + PROVISIONAL)
        self.done.errback(self._failure)

    # -- ending ----------------------------------------------------------------------------------------------
    def abort(self, reason: str = "upload aborted") -> None:
        """The source went away (client disconnected): stop, and collect what was written."""
        if self._failure is None and not self._settled:
            self._fail(Failure(UploadAborted(reason)))

    def checkpoint(self) -> Deferred[int]:
        """End of one piece of a resumable upload: send every complete segment on its way, wait until they
        are stored and placed, and record them; ``done`` (returned) fires with the plaintext offset the next
        piece starts at. Bytes of an incomplete last segment are dropped: the client sends them again."""
        if self._session is None:
            raise RuntimeError("checkpoint is for resumable uploads")
        if self._failure is None and not self._finishing:
            self._finishing = True
            self._cut = True
            self._dispatch_ready()
        return self.done  # type: ignore[return-value]

    def _settle_checkpoint(self) -> None:
        if self._failure is not None:
            self._settle_failure()
            return
        self._settled = True
        try:
            offset = self._record_session()
        except Exception:
            self.done.errback(Failure())
            return
        self.done.callback(offset)  # type: ignore[arg-type]

    def _record_session(self) -> int:
        """At the end of a piece (drained): record what is left to record; returns the offset reached."""
        upto = len(self._links_new)
        if self._last_dispatched and upto and upto + self._first == self._next_segment:
            upto -= 1  # the file's last segment (sealed as last) is only ever recorded with the file
        self._record_progress(max(upto, self._recorded))
        return (self._first + self._recorded) * self._seg

    def finish(self) -> Deferred[StoredFile]:
        """The source is complete: seal the last segment, write the manifest tree and the root, and record
        the file. Fires ``done`` (also returned) with a StoredFile."""
        if self._finishing or self._failure is not None:
            return self.done
        self._finishing = True
        self._source_done = True
        self._dispatch_ready()
        return self.done

    def _write_tree(self) -> None:
        if self._failure is None and self.replicas is not None and self.replicas < self._min_replicas:
            # Blocks of earlier pieces of a resumed upload reached too few holders (each of this piece's blocks
            # was checked as it was placed). No file is recorded; the session keeps what was stored.
            self._failure = Failure(TooFewReplicas(
                f"blocks stored by earlier pieces of this upload reached {self.replicas} holder(s), fewer than "
                f"the {self._min_replicas} required; they are placed on more nodes as peers return or join: "
                "send the last piece again later"))
            log.warn("upload of {name!r} failed: {error}", name=self.name, error=self._failure.getErrorMessage())
        if self._failure is not None:
            self._settle_failure()
            return
        meta = Metadata(self.name, self.content_type, self.size, int(self._clock.seconds()))
        nodes, root_cid, root_raw = self._builder.finish(self._seg, cipher.seal_metadata(self._key, meta.encode()), self.salt)

        def put_nodes() -> Deferred:
            return gatherResults([self._start(self._node_stored(cid, raw), self._put, cid, raw) for cid, raw in nodes])

        def put_root(_: object) -> Deferred | None:
            if self._failure is not None:
                return None  # never write a root that names a missing block
            return self._start(self._node_stored(root_cid, root_raw), self._put, root_cid, root_raw)

        def record(_: object) -> None:
            if self._failure is not None:
                self._settle_failure()
                return
            crash.point("put.before_record")
            self._index.add_refs(self._owner, self._pinned)
            blocks = self._builder.blocks
            self._index.commit_file(
                self._owner,
                FileRecord(root_cid, self._key, meta.name, meta.content_type, meta.size, blocks, meta.created),
                self._underplaced,
                session=self._session.id if self._session is not None else None,
                lease_time=self.lease_time,
            )
            crash.point("put.after_record")
            self._pins.release(self._pinned)
            self._pinned = []
            self._settled = True
            self.done.callback(StoredFile(ReadCap(root_cid, self._key), self.size, blocks, meta, self.replicas or 0,
                                         self._want))

        d = put_nodes()
        d.addCallback(put_root)
        d.addCallback(record)
        d.addErrback(self._record_failed)

    def _record_failed(self, f: Failure) -> None:
        if self._failure is None:
            self._failure = f
            log.failure("recording upload of {name!r} failed", f, name=self.name)
        self._settle_failure()
