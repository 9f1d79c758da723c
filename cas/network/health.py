"""How well a file is stored: which nodes hold each of its blocks under a live lease (``cas status KEY``).

The file's blocks and placement keys come from its manifests (the verify capability is enough: nothing is
decrypted). Each key's first N + ``RANK_SLACK`` in rank over the members are asked with ``HAS`` (version 2
answers also say which blocks are held under a live lease); blocks that still have fewer than N such holders
are then asked of up to ``FAN_OUT`` other members, as readers do. ``lowest_replicas`` is the minimum over the
file's blocks of the distinct nodes that hold the block under a live lease, this one included when it holds
blocks for another node: the origin's own copy is no lease (it is the origin's file), so it is never counted,
wherever the question is asked.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred

from cas.base.cid import CID
from cas.base.nodeid import format_node_id
from cas.network.placement import MANIFEST_DOMAIN, RANK_SLACK
from cas.peer.peers import MAX_HAS

FAN_OUT = 64  # other members asked about blocks the rank did not cover
TIMEOUT = 15.0  # seconds a node has to answer one HAS


async def file_health(node: Any, root: CID) -> dict[str, Any]:
    """The answer of ``GET /v1/files/KEY/health`` (docs/api.md)."""
    blocks = await node.file_blocks(root)
    by_key: dict[bytes, list[CID]] = {}
    for cid, key in blocks:
        by_key.setdefault(key, []).append(cid)
    peers = node.peers
    members = list(peers.members()) if peers is not None else []
    held: dict[CID, set[bytes]] = defaultdict(set)
    leased: dict[CID, set[bytes]] = defaultdict(set)
    unreachable: set[bytes] = set()
    asked: dict[bytes, set[CID]] = defaultdict(set)

    async def ask(m: bytes, cids: list[CID]) -> None:
        asked[m].update(cids)
        for i in range(0, len(cids), MAX_HAS):
            chunk = cids[i:i + MAX_HAS]
            try:
                has, under = await peers.has_leased(m, chunk).addTimeout(TIMEOUT, node.reactor)
            except Exception:
                unreachable.add(m)
                return
            for c, h, u in zip(chunk, has, under if under is not None else [False] * len(chunk)):
                if h:
                    held[c].add(m)
                if u:
                    leased[c].add(m)

    async def round_of(asks: dict[bytes, list[CID]]) -> None:
        await DeferredList([ensureDeferred(ask(m, cids)) for m, cids in asks.items()], consumeErrors=True)

    want = node.replicas
    first: dict[bytes, list[CID]] = defaultdict(list)
    for key, cids in by_key.items():
        for m in node.placement.rank(key, members)[: want + RANK_SLACK]:
            first[m] += cids
    await round_of(first)
    weak = [c for c, _k in blocks if len(leased[c]) < want]
    if weak:
        others = [m for m in members if m not in asked and m not in unreachable]
        random.shuffle(others)
        await round_of({m: weak for m in others[:FAN_OUT]})

    # This node counts too when it holds blocks for another node under a lease (asked on a holder); its own
    # file's copy is no lease.
    me = node.identity.node_id
    local, local_leased = await node.has_leased([c for c, _k in blocks])
    for (c, _k), h, u in zip(blocks, local, local_leased):
        if u:
            held[c].add(me)
            leased[c].add(me)
    now = int(node.clock.seconds())
    ours = node.index.placements.lease_expiries(list(by_key))
    keys = []
    for key, cids in by_key.items():
        holders = sorted({m for c in cids for m in held[c]})
        keys.append({
            **_describe(key, cids),
            "blocks": len(cids),
            "replicas": min(len(leased[c]) for c in cids),
            "holders": [{
                "node_id": format_node_id(m),
                "blocks": sum(1 for c in cids if m in held[c]),
                "leased": sum(1 for c in cids if m in leased[c]),
                "our_lease_expires": ours.get((key, m)),
            } for m in holders],
        })
    return {
        "root": str(root),
        "blocks": len(blocks),
        "local_blocks": sum(local),
        "replicas_wanted": want,
        "lowest_replicas": min((len(leased[c]) for c, _k in blocks), default=0),
        "keys": keys,
        "asked": len(asked),
        "unreachable": sorted(format_node_id(m) for m in unreachable),
        "checked_at": now,
    }


def _describe(key: bytes, cids: list[CID]) -> dict[str, Any]:
    if key.startswith(MANIFEST_DOMAIN):
        return {"kind": "manifest", "stripe": None, "cid": str(cids[0])}
    return {"kind": "stripe", "stripe": int.from_bytes(key[-8:], "big"), "cid": None}
