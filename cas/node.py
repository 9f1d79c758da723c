"""The node core: one object that owns the data dir, the block store, the index and the worker pool, and
offers storing, reading, listing and forgetting files. The HTTP API and the CLI call this; it calls the
upload/download pipelines, which call the block store.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import FileBodyProducer

from . import __version__, cipher
from .blockstore import DiskBlockStore
from .capability import ReadCap
from .cid import CID
from .collector import CollectResult, Pins, collect
from .datadir import DataDir
from .download import Download, OpenFile, open_file
from .errors import FileNotFound
from .index import FileRecord, Index
from .manifest import FANOUT
from .upload import StoredFile, Upload
from .verify import VerifyReport, verify_file

log = Logger()


class Node:
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
    ) -> None:
        self.datadir = datadir
        self.reactor: IReactorTime = reactor
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
        self.started_at = time.time()
        self.peers: Any = None  # the PeerManager, set by the service (a node can run without peers in tests)

    @property
    def node_id(self) -> str:
        return str(self.identity)

    def _run_in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred:
        assert self._pool is not None
        return deferToThreadPool(self.reactor, self._pool, f, *args)  # type: ignore[arg-type]

    def start(self) -> None:
        if self._pool is not None:
            self._pool.start()
        # Blocks of uploads cut short by a crash (their refs were dropped when the index opened).
        self.collect_garbage().addErrback(lambda f: log.failure("collecting garbage failed", f))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
        self.index.close()

    # -- storing -----------------------------------------------------------------------------------------------
    def upload(self, name: str, content_type: str = "application/octet-stream") -> Upload:
        """A consumer to write a file into; call ``finish()`` when the source is complete."""
        up = Upload(
            store=self.store, index=self.index, pins=self.pins, run=self.run, clock=self.reactor,
            name=name, content_type=content_type, segment_size=self.segment_size, fanout=self.fanout,
            window=self.window,
        )
        up.done.addErrback(self._collect_after_failure)
        return up

    def _collect_after_failure(self, failure: Any) -> Any:
        """A failed upload leaves unreferenced blocks: free their space now rather than at the next start."""
        self.collect_garbage().addErrback(lambda f: log.failure("collecting garbage failed", f))
        return failure

    def put_path(self, path: str, name: str | None = None, content_type: str = "application/octet-stream") -> Deferred[StoredFile]:
        """Store a local file, streaming it through the pipeline."""
        f = open(path, "rb")
        up = self.upload(name if name is not None else os.path.basename(path), content_type)
        producer = FileBodyProducer(f, readSize=self.segment_size)
        up.registerProducer(producer, True)
        d = producer.startProducing(up)

        def source_done(result: object) -> Deferred[StoredFile]:
            up.unregisterProducer()
            f.close()
            return up.finish()

        def source_failed(failure: Any) -> Deferred[StoredFile]:
            f.close()
            up.abort(f"reading {path} failed: {failure.getErrorMessage()}")
            return up.done

        d.addCallbacks(source_done, source_failed)
        return d

    # -- reading -----------------------------------------------------------------------------------------------
    def fetch(self, cid: CID) -> Deferred[bytes]:
        """A verified block from the local store."""
        return self.run(self.store.get, cid)

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

    def has_blocks(self, cids: list[CID]) -> Deferred[list[bool]]:
        return self.run(lambda: [self.store.has(c) for c in cids])

    def hold_block(self, owner: str, cid: CID, data: bytes | memoryview) -> Deferred[bool]:
        """Store a block a peer sent (checked against its id, written durably) and keep it for ``owner``
        (``hold:<peer>``) until that owner lets go. Fires with False if the block was already here."""

        def work() -> bool:
            self.pins.pin(cid)  # garbage collection must not take it before its reference commits
            try:
                return self.store.put(cid, data)  # type: ignore[arg-type]
            except BaseException:
                self.pins.release([cid])
                raise

        def recorded(stored: bool) -> bool:
            try:
                self.index.add_refs(owner, [cid])
            finally:
                self.pins.release([cid])
            return stored

        # The write goes on to its reference even if the caller stops waiting (a peer cancelled, or its
        # connection dropped): a cancelled outer Deferred must not skip ``recorded`` and leak the pin.
        outer: Deferred[bool] = Deferred()
        inner = self.run(work).addCallback(recorded)

        def settle(result: Any) -> None:
            if outer.called:  # cancelled: nobody waits for the outcome
                if isinstance(result, Failure):
                    log.info("storing block {cid} for {owner} failed after the request was cancelled: {e}",
                             cid=str(cid), owner=owner, e=result.getErrorMessage())
            elif isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        inner.addBoth(settle)
        return outer

    def open(self, cap: ReadCap) -> Deferred[OpenFile]:
        return ensureDeferred(open_file(cap, self.fetch))

    def verify(self, root: CID) -> Deferred[VerifyReport]:
        """Check every block of a file by its verify capability (no key needed, nothing decrypted)."""
        return ensureDeferred(verify_file(root, self.fetch))

    def download(self, f: OpenFile, offset: int = 0, length: int | None = None) -> Download:
        return Download(f, self.fetch, self.run, offset, length, window=self.window)

    # -- the owner's files -------------------------------------------------------------------------------------
    def files(self) -> list[FileRecord]:
        return self.index.files()

    def forget(self, root: CID) -> Deferred[CollectResult]:
        """Forget a file: its blocks are released and collected unless another file needs them."""
        if not self.index.forget(root):
            raise FileNotFound(f"no file with id {root} is stored by this node's owner")
        return self.collect_garbage()

    def collect_garbage(self) -> Deferred[CollectResult]:
        """One collection pass on the worker pool; reads and writes go on meanwhile."""

        def run(_: object) -> Deferred[CollectResult]:
            self.pins.begin_pass()
            referenced = self.index.referenced()
            d = self.run(collect, self.store, self.pins, referenced)

            def end(result: Any) -> Any:
                self.pins.end_pass()
                self._gc_lock.release()
                return result

            return d.addBoth(end)

        return self._gc_lock.acquire().addCallback(run)

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "version": __version__,
            "uptime": max(0.0, time.time() - self.started_at),
            "storage": {"used": self.store.used(), "free": self.store.free(), "limit": self.store.limit},
            "files": self.index.count(),
        }

