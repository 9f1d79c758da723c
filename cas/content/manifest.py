"""Manifests: the blocks that describe a file.

A root manifest lists the file's data blocks (or, for big files, manifest nodes that list them) and carries
the file's metadata sealed under the file key. The root manifest's id is the file's address. Manifests are
canonical CBOR (RFC 8949 section 4.2.1), hold ids and sizes only, and are decoded strictly: any other encoding
of the same content is refused, so one file has exactly one address. See docs/format.md.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, Iterable

import attrs
import cbor2

from cas.base.cid import CID
from cas.base.errors import InvalidMetadata, MalformedManifest, TamperedData
from cas.content import cipher

VERSION = 2  # 2 added the root's placement salt
SALT_SIZE = 16  # bytes of the root's placement salt (see cas/network/placement.py)
FANOUT = 20_000  # links per manifest block: 20,000 x <= 48 bytes stays under 1 MiB
MAX_LINKS = 20_000
MAX_DEPTH = 6  # 20,000 ** 7 blocks of 1 MiB is far beyond any disk
MAX_MANIFEST_SIZE = 1 << 20
MAX_META_SIZE = 64 * 1024
MAX_NAME_LEN = 4096
MAX_TYPE_LEN = 256


@attrs.frozen
class Link:
    """One entry of a manifest: a block id and a count.

    At depth 0 the block is a data block and ``count`` its size in bytes; above, the block is a manifest
    node and ``count`` the number of data blocks below it.
    """

    cid: CID
    count: int


def check_name(name: str, content_type: str) -> None:
    """Refuse, before any byte is stored, a name or type that the metadata decoder would refuse later."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN:
        raise InvalidMetadata(f"file name longer than {MAX_NAME_LEN} characters")
    if not isinstance(content_type, str) or len(content_type) > MAX_TYPE_LEN:
        raise InvalidMetadata(f"content type longer than {MAX_TYPE_LEN} characters")


@attrs.frozen
class Metadata:
    """What the owner said about the file; sealed inside the root manifest."""

    name: str
    content_type: str
    size: int
    created: int  # Unix time, seconds

    def encode(self) -> bytes:
        check_name(self.name, self.content_type)
        return cbor2.dumps(
            {"name": self.name, "type": self.content_type, "size": self.size, "created": self.created},
            canonical=True,
        )

    @classmethod
    def decode(cls, raw: bytes) -> "Metadata":
        obj = _loads(raw, "metadata")
        if not isinstance(obj, dict) or set(obj) != {"name", "type", "size", "created"}:
            raise MalformedManifest("file metadata has unexpected fields")
        name, ctype, size, created = obj["name"], obj["type"], obj["size"], obj["created"]
        if not isinstance(name, str) or len(name) > MAX_NAME_LEN:
            raise MalformedManifest("file metadata: bad name")
        if not isinstance(ctype, str) or len(ctype) > MAX_TYPE_LEN:
            raise MalformedManifest("file metadata: bad content type")
        _check_uint(size, "size")
        _check_uint(created, "created")
        return cls(name, ctype, size, created)


@attrs.frozen
class Node:
    """A non-root manifest block: links one level down."""

    depth: int
    links: tuple[Link, ...]

    @property
    def blocks(self) -> int:
        return _count_blocks(self.depth, self.links)

    def encode(self) -> bytes:
        return _dumps({"v": VERSION, "type": "node", "depth": self.depth, "links": _enc_links(self.links)})


@attrs.frozen
class Root:
    """The root manifest; its id is the file's address."""

    segment_size: int
    blocks: int
    depth: int
    links: tuple[Link, ...]
    sealed_meta: bytes
    salt: bytes  # names the file for placement: its stripes' holders derive from it (not secret)

    def encode(self) -> bytes:
        return _dumps(
            {
                "v": VERSION,
                "type": "root",
                "segment_size": self.segment_size,
                "blocks": self.blocks,
                "depth": self.depth,
                "links": _enc_links(self.links),
                "meta": self.sealed_meta,
                "salt": self.salt,
            }
        )

    def metadata(self, key: bytes) -> Metadata:
        """Decrypt and check the metadata; the size must agree with the block count."""
        meta = Metadata.decode(cipher.open_metadata(key, self.sealed_meta))
        if blocks_for_size(meta.size, self.segment_size) != self.blocks:
            raise TamperedData("file metadata disagrees with the manifest's block count")
        return meta


def blocks_for_size(size: int, segment_size: int) -> int:
    """Number of segments for ``size`` plaintext bytes: an empty file still has one (empty) segment."""
    return max(1, -(-size // segment_size))  # integer ceiling: float division is inexact above 2**53


def _dumps(obj: dict) -> bytes:
    raw = cbor2.dumps(obj, canonical=True)
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ValueError("manifest block too large")
    return raw


def _loads(raw: bytes, what: str) -> object:
    try:
        obj = cbor2.loads(raw, max_depth=8, allow_indefinite=False, allow_duplicate_keys=False)
    except Exception as e:  # cbor2 raises several types on garbage
        raise MalformedManifest(f"{what} is not valid CBOR ({e.__class__.__name__})") from None
    try:
        canonical = cbor2.dumps(obj, canonical=True)
    except Exception:
        raise MalformedManifest(f"{what} holds values cas never writes") from None
    if canonical != raw:
        raise MalformedManifest(f"{what} is not in canonical CBOR form")
    return obj


def _check_uint(v: object, what: str, upper: int = (1 << 64) - 1) -> int:
    if type(v) is not int or not 0 <= v <= upper:
        raise MalformedManifest(f"manifest field {what!r} must be an integer in 0..{upper}")
    return v


def _enc_links(links: Iterable[Link]) -> list:
    return [[l.cid.to_bytes(), l.count] for l in links]


def _dec_links(obj: object, depth: int, segment_size: int | None) -> tuple[Link, ...]:
    if not isinstance(obj, list) or not 1 <= len(obj) <= MAX_LINKS:
        raise MalformedManifest(f"manifest links must be a list of 1..{MAX_LINKS} entries")
    out = []
    max_data = (segment_size if segment_size else cipher.SEGMENT_SIZE) + cipher.TAG_SIZE
    for item in obj:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes):
            raise MalformedManifest("manifest link must be [id bytes, count]")
        try:
            cid = CID.from_bytes(item[0])
        except Exception:
            raise MalformedManifest("manifest link holds an invalid block id") from None
        if depth == 0:
            count = _check_uint(item[1], "size", max_data)
            if count < cipher.TAG_SIZE:
                raise MalformedManifest("data block smaller than an authentication tag")
        else:
            count = _check_uint(item[1], "blocks")
            if count < 1:
                raise MalformedManifest("manifest node with no blocks")
        out.append(Link(cid, count))
    return tuple(out)


def _count_blocks(depth: int, links: Iterable[Link]) -> int:
    return sum(l.count for l in links) if depth else sum(1 for _ in links)


def _check_depth(v: object) -> int:
    return _check_uint(v, "depth", MAX_DEPTH)


def decode_root(raw: bytes) -> Root:
    if len(raw) > MAX_MANIFEST_SIZE:
        raise MalformedManifest("manifest too large")
    obj = _loads(raw, "manifest")
    if not isinstance(obj, dict) or obj.get("type") != "root":
        raise MalformedManifest("not a root manifest")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:  # not True or 1.0, which compare equal to 1
        raise MalformedManifest(f"unsupported manifest version {obj.get('v')!r}")
    if set(obj) != {"v", "type", "segment_size", "blocks", "depth", "links", "meta", "salt"}:
        raise MalformedManifest("root manifest has unexpected fields")
    seg = _check_uint(obj["segment_size"], "segment_size", cipher.SEGMENT_SIZE)
    if seg < 1:
        raise MalformedManifest("segment size must be positive")
    depth = _check_depth(obj["depth"])
    blocks = _check_uint(obj["blocks"], "blocks")
    links = _dec_links(obj["links"], depth, seg)
    if _count_blocks(depth, links) != blocks:
        raise MalformedManifest("root manifest block count does not match its links")
    meta = obj["meta"]
    if not isinstance(meta, bytes) or not cipher.TAG_SIZE <= len(meta) <= MAX_META_SIZE:
        raise MalformedManifest("root manifest metadata is missing or too large")
    salt = obj["salt"]
    if not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
        raise MalformedManifest(f"root manifest salt must be {SALT_SIZE} bytes")
    return Root(seg, blocks, depth, links, meta, salt)


def decode_node(raw: bytes, segment_size: int | None = None) -> Node:
    if len(raw) > MAX_MANIFEST_SIZE:
        raise MalformedManifest("manifest node too large")
    obj = _loads(raw, "manifest node")
    if not isinstance(obj, dict) or obj.get("type") != "node":
        raise MalformedManifest("not a manifest node")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:  # not True or 1.0, which compare equal to 1
        raise MalformedManifest(f"unsupported manifest version {obj.get('v')!r}")
    if set(obj) != {"v", "type", "depth", "links"}:
        raise MalformedManifest("manifest node has unexpected fields")
    depth = _check_depth(obj["depth"])
    return Node(depth, _dec_links(obj["links"], depth, segment_size))


def is_manifest(raw: bytes | memoryview) -> bool:
    """Whether ``raw`` is a manifest block (root or node): a holder, which has no key, can tell one from
    ciphertext (random bytes are not canonical CBOR of a manifest)."""
    if not raw or raw[0] >> 5 != 5:  # a manifest is a CBOR map: 7 in 8 random blocks stop here, uncopied
        return False
    data = bytes(raw[:MAX_MANIFEST_SIZE + 1])
    for decode in (decode_root, decode_node):
        try:
            decode(data)
        except (MalformedManifest, ValueError, TypeError):
            continue
        return True
    return False


class ManifestBuilder:
    """Builds the manifest tree as data links arrive in order, in memory bounded by fanout x depth.

    ``add`` and ``finish`` return the manifest nodes completed so far as ``(cid, bytes)`` pairs, for the
    caller to store; ``finish`` returns the root last, so the root is written after everything it names.
    """

    def __init__(self, fanout: int = FANOUT) -> None:
        if not 2 <= fanout <= MAX_LINKS:
            raise ValueError("fanout must be in 2..20000")
        self.fanout = fanout
        self._levels: list[list[Link]] = [[]]
        self.blocks = 0

    def add(self, link: Link) -> list[tuple[CID, bytes]]:
        out: list[tuple[CID, bytes]] = []
        self._push(0, link, out)
        self.blocks += 1
        return out

    def _push(self, level: int, link: Link, out: list[tuple[CID, bytes]]) -> None:
        if level == len(self._levels):
            if level > MAX_DEPTH:
                raise ValueError("file too large for the manifest tree")
            self._levels.append([])
        if len(self._levels[level]) == self.fanout:
            self._flush(level, out)
        self._levels[level].append(link)

    def _flush(self, level: int, out: list[tuple[CID, bytes]]) -> None:
        node = Node(level, tuple(self._levels[level]))
        self._levels[level] = []
        raw = node.encode()
        cid = CID.of(raw)
        out.append((cid, raw))
        self._push(level + 1, Link(cid, node.blocks), out)

    def finish(self, segment_size: int, sealed_meta: bytes, salt: bytes) -> tuple[list[tuple[CID, bytes]], CID, bytes]:
        """Close the tree: returns (nodes still to store, root id, root bytes)."""
        if self.blocks == 0:
            raise ValueError("a file has at least one block")
        out: list[tuple[CID, bytes]] = []
        level = 0
        while level < len(self._levels) - 1:
            self._flush(level, out)
            level += 1
        links = tuple(self._levels[level])
        root = Root(segment_size, self.blocks, level, links, sealed_meta, salt)
        raw = root.encode()
        return out, CID.of(raw), raw


LoadNode = Callable[[CID], Awaitable[Node]]


async def data_links(root: Root, load_node: LoadNode, start: int = 0, stop: int | None = None) -> AsyncIterator[tuple[int, Link]]:
    """Yield ``(block index, link)`` for data blocks ``start <= i < stop`` in order, loading only the
    manifest nodes on the way. Each node must sit at the expected depth and hold the block count its parent
    claims, or MalformedManifest is raised."""
    stop = root.blocks if stop is None else min(stop, root.blocks)
    async for item in _walk(root.depth, root.links, 0, start, stop, load_node):
        yield item


async def _walk(depth: int, links: tuple[Link, ...], base: int, start: int, stop: int, load: LoadNode) -> AsyncIterator[tuple[int, Link]]:
    for link in links:
        n = link.count if depth else 1
        if base >= stop:
            return
        if base + n > start:
            if depth == 0:
                yield base, link
            else:
                node = await load(link.cid)
                if node.depth != depth - 1 or node.blocks != n:
                    raise MalformedManifest("manifest node does not match its parent")
                async for item in _walk(depth - 1, node.links, base, start, stop, load):
                    yield item
        base += n
