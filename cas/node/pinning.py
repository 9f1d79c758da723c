"""Pins: keeping a file of another node alive by taking this node's own leases on it (``cas pin``).

A pin walks the file's manifests (its root id, the verify capability, is enough: nothing is decrypted), records
its placement keys under the owner ``pin:<root>`` and asks each key's first N + 4 nodes in rank for a lease of
``--lease-time``: those that hold every block under the key grant it and are recorded as holders. From then on
the ``Renewer`` renews them as it renews a stored file's, so the holders keep the blocks after the uploader
released its leases or vanished. With ``local`` the node also keeps a copy of every block (fetched and
verified), so that it can place a key that lost its holders again, as the uploader would. ``unpin`` releases
the leases (queued when a holder is away, as ``cas rm`` does) and lets the local copy be collected.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from cas.base.cid import CID
from cas.base.errors import FileNotFound, PinRefused

log = Logger()


async def pin(node: Any, root: CID, local: bool) -> dict[str, Any]:
    """Pin the file named by ``root``; the answer of ``POST /v1/pins/KEY`` (docs/api.md)."""
    if node.index.get(root) is not None:
        raise PinRefused("this node stored this file: it renews the file's leases already (cas pin is for files "
                         "of other nodes)")
    was = node.index.pinned(root)
    blocks = await node.file_blocks(root)
    keys = list(dict.fromkeys(k for _c, k in blocks))
    local = local or bool(was and was[0])
    node.index.add_pin(root, local, int(node.clock.seconds()), keys, [c for c, _k in blocks] if local else ())
    try:
        if local:
            for cid, key in blocks:
                if not node.store.has(cid):
                    data = await node.fetch_placed(cid, key)
                    await node.run(node.store.put, cid, data, True)
        if node.renewer is not None and keys:
            await node.renewer.take(keys, node.lease_time)
    except BaseException:
        if was is None:  # a new pin that failed half-way is not kept (nor its partial copy, nor its leases)
            node.index.drop_pin(root, int(node.clock.seconds()) + node.lease_time)
            if node.releaser is not None:
                node.releaser.send().addErrback(lambda f: log.failure("sending releases failed", f))
        raise
    holders = node.index.placements.holders(f"pin:{root}")
    counts = [len(holders.get(k, [])) for k in keys]
    if not any(counts):
        log.warn("pinned a file but no node granted a lease on any of its blocks")
    return {
        "root": str(root),
        "pinned": True,
        "local": local,
        "blocks": len(blocks),
        "keys": len(keys),
        "lowest_holders": min(counts, default=0),
        "holders": len({h for hs in holders.values() for h in hs}),
    }


def pins(node: Any) -> dict[str, Any]:
    """The answer of ``GET /v1/pins``."""
    return {"pins": [{"root": r, "local": loc, "created": c, "keys": k, "holders": h}
                     for r, loc, c, k, h in node.index.pins()]}


def unpin_holders(node: Any, root: CID, also: list[tuple[bytes, bytes]] = ()) -> list[bytes]:  # type: ignore[assignment]
    """Drop the pin (FileNotFound if there is none): the holders whose leases are to be released (and
    ``also`` (node, key), queued too)."""
    holders = node.index.drop_pin(root, int(node.clock.seconds()) + node.lease_time, also)
    if holders is None:
        raise FileNotFound("this node has not pinned this file")
    return holders
