"""Where blocks live: rendezvous (highest-random-weight) hashing over the membership.

Every node scores every placement key with ``BLAKE3(key || node id)`` and the highest scores hold it, so any
node that knows the membership computes the same holders without asking anyone, a node joining or leaving
moves only the keys it wins or held (about 1/n of them), and no table of locations is kept. The unit placed
is a stripe of consecutive blocks of one file (``STRIPE_BLOCKS``), so a small file lives on N nodes, a large
one spreads over many, and an upload talks to a bounded number of peers at a time. See docs/placement.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence

import blake3
from zope.interface import Interface, implementer

from cas.base.cid import CID
from cas.content.manifest import data_links, decode_node, decode_root

STRIPE_BLOCKS = 64  # blocks per stripe: 64 MiB of 1 MiB segments
RANK_SLACK = 4  # nodes past the first N of a key's rank that still take its leases and get its renewals
STRIPE_DOMAIN = b"cas/stripe/v1"
MANIFEST_DOMAIN = b"cas/manifest/v1"


class IPlacement(Interface):
    """The placement seam: which members hold a key, in preference order."""

    def rank(key: bytes, members: Sequence[bytes]) -> list[bytes]:
        """Every member, best holder first (ties cannot happen: scores are 256-bit hashes)."""

    def holders(key: bytes, members: Sequence[bytes], n: int, exclude: Collection[bytes] = ()) -> list[bytes]:
        """The first ``n`` members of ``rank`` not in ``exclude`` (fewer if there are not enough)."""


@implementer(IPlacement)
class Rendezvous:
    """Highest-random-weight hashing with BLAKE3 scores."""

    def score(self, key: bytes, node_id: bytes) -> bytes:
        return blake3.blake3(key + node_id).digest()

    def rank(self, key: bytes, members: Sequence[bytes]) -> list[bytes]:
        return sorted(members, key=lambda m: self.score(key, m), reverse=True)

    def holders(self, key: bytes, members: Sequence[bytes], n: int, exclude: Collection[bytes] = ()) -> list[bytes]:
        if n <= 0:
            return []
        out = []
        for m in self.rank(key, members):
            if m not in exclude:
                out.append(m)
                if len(out) == n:
                    break
        return out


def stripe_of(block_index: int, stripe_blocks: int = STRIPE_BLOCKS) -> int:
    return block_index // stripe_blocks


def stripe_key(file_salt: bytes, stripe: int) -> bytes:
    """The placement key of one stripe of one file. ``file_salt`` names the file for placement (it must be
    known to every reader and repairer, and chosen before the upload starts)."""
    return STRIPE_DOMAIN + len(file_salt).to_bytes(1, "big") + file_salt + stripe.to_bytes(8, "big")


def manifest_key(cid_bytes: bytes) -> bytes:
    """The placement key of a manifest block: its own id (readers know it before they fetch it)."""
    return MANIFEST_DOMAIN + cid_bytes


async def file_placement(root: CID, get: Callable[[CID], Awaitable[bytes]]) -> list[tuple[CID, bytes]]:
    """Every block of the file named by ``root`` with its placement key, in file order: the root and the
    manifest nodes (under their own ids) and the data blocks (under their stripe's key). ``get`` gives a
    block's verified bytes (the local store, or the network). Manifests are not encrypted: the verify
    capability (the root id) is enough."""
    decoded = decode_root(await get(root))
    out = [(root, manifest_key(root.to_bytes()))]

    async def load(cid: CID) -> object:
        out.append((cid, manifest_key(cid.to_bytes())))
        return decode_node(await get(cid), decoded.segment_size)

    async for i, link in data_links(decoded, load):  # type: ignore[arg-type]
        out.append((link.cid, stripe_key(decoded.salt, stripe_of(i))))
    return out
