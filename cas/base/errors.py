"""Exceptions with messages meant for people: every one of them is safe to show as a one-line error."""

from __future__ import annotations


class CasError(Exception):
    """Base class: ``code`` is a short machine-readable name, ``str(e)`` a one-line message."""

    code = "error"


class MalformedKey(CasError):
    code = "malformed_key"


class MalformedManifest(CasError):
    code = "malformed_manifest"


class InvalidMetadata(CasError):
    """A file name or content type that cas cannot record."""

    code = "invalid_metadata"


class CorruptBlock(CasError):
    """A block's bytes do not hash to its id (it has been quarantined)."""

    code = "corrupt_block"


class NotInRank(CasError):
    """A lease asked of a node that is not among the first N + 4 of the key's rank (as this node sees it)."""

    code = "bad_request"


class WrongPlacementKey(CasError):
    """A peer sent a block with a placement key it cannot have: a manifest block's key is its own id."""

    code = "bad_request"


class TamperedData(CasError):
    """Authenticated decryption failed: the data was altered, reordered or truncated."""

    code = "tampered"


class BlockNotFound(CasError):
    code = "not_found"


class FileNotFound(CasError):
    code = "not_found"


class StorageFull(CasError):
    """The storage limit or the disk is full; nothing partial was left behind."""

    code = "storage_full"


class StorageLimitExceeded(StorageFull):
    code = "storage_limit"


class DiskFull(StorageFull):
    code = "disk_full"


class QuotaExceeded(StorageFull):
    """Holding this block for another node would pass the space this node offers others (``--quota``)."""

    code = "over_quota"


class DataDirError(CasError):
    code = "data_dir"


class RangeNotSatisfiable(CasError):
    code = "range_not_satisfiable"


class TooFewReplicas(CasError):
    """An upload could not place a block on as many holders as the caller required (``min_replicas``)."""

    code = "too_few_replicas"


class Busy(CasError):
    """The node is at its limit of concurrent work; the same request can be tried again shortly."""

    code = "busy"


class SessionNotFound(CasError):
    code = "no_such_upload"


class OffsetMismatch(CasError):
    """A piece of a resumable upload does not start where the upload stands (``offset``)."""

    code = "offset_mismatch"

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class SessionBusy(CasError):
    """A piece of this resumable upload is already being received."""

    code = "upload_busy"


class PinRefused(CasError):
    """A pin of a file this node stored itself (its leases are renewed already)."""

    code = "stored_here"


class Pinned(CasError):
    """``cas rm`` of a file this node pinned but did not store: ``cas unpin`` is the way."""

    code = "pinned"
