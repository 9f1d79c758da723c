"""Checking a file with its verify capability (the root manifest id) alone: every manifest node and data
block is fetched and checked against its id and its size, and nothing is decrypted."""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.defer import Deferred

from cas.base.cid import CID
from cas.base.errors import CasError
from cas.content.manifest import Node, data_links, decode_node, decode_root


@attrs.frozen
class VerifyReport:
    blocks: int  # data blocks checked and good
    nodes: int  # manifest blocks checked and good, root included
    bad: tuple[tuple[str, str], ...]  # (block id, reason)

    @property
    def ok(self) -> bool:
        return not self.bad


async def verify_file(root_cid: CID, fetch: Callable[[CID], Deferred]) -> VerifyReport:
    """Walk the file's manifest tree and check every block; a bad manifest node stops the walk below it."""
    root = decode_root(await fetch(root_cid))
    nodes = 1
    good = 0
    bad: list[tuple[str, str]] = []

    async def load(cid: CID) -> Node:
        nonlocal nodes
        node = decode_node(await fetch(cid), root.segment_size)
        nodes += 1
        return node

    try:
        async for _i, link in data_links(root, load):
            try:
                block = await fetch(link.cid)
            except CasError as e:
                bad.append((str(link.cid), str(e)))
                continue
            if len(block) != link.count:
                bad.append((str(link.cid), f"{len(block)} bytes, the manifest says {link.count}"))
            else:
                good += 1
    except CasError as e:
        bad.append((str(root_cid), f"manifest tree: {e}"))
    return VerifyReport(good, nodes, tuple(bad))
