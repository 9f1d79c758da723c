"""The peer table: every node this one knows, its signed record, addresses, state and health.

States (docs/peers.md): ``new`` (learned, never reached), ``connected`` (an accepted connection is open),
``alive`` (reached recently, no connection open now), ``suspect`` (the last contact failed, since
``suspect_since``) and ``dead`` (still failing ``dead_after`` seconds later). Membership is every peer with an
unexpired signed record with a dialable address that is not dead.

The table is saved in the data dir (``peers.json``, written atomically) so that a restarted node rejoins
without bootstrap: records are saved with their signatures and verified again on load; addresses are kept
even when a record expired while the node was down, so that it can be dialled to get a fresh one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.logger import Logger

from cas.peer.records import Address, InvalidRecord, PeerRecord, decode_record

log = Logger()

NEW, CONNECTED, ALIVE, SUSPECT, DEAD = "new", "connected", "alive", "suspect", "dead"
STATES = (NEW, CONNECTED, ALIVE, SUSPECT, DEAD)
TABLE_FORMAT = 1


@attrs.define
class PeerEntry:
    node_id: bytes
    record: PeerRecord | None = None
    addresses: tuple[Address, ...] = ()  # dialled in this order: from the record, or given by the operator
    state: str = NEW
    last_seen: float | None = None  # last successful contact (wall clock)
    suspect_since: float | None = None
    rtt: float | None = None  # seconds, last PING
    failures: int = 0  # consecutive failed contacts
    next_attempt: float = 0.0  # no dial before this (backoff)
    software: str | None = None
    pinned: bool = False  # an operator gave this id (bootstrap NODEID@HOST:PORT), or we trusted it on first use
    operator_addresses: tuple[Address, ...] = ()  # where an operator's --bootstrap reached it: kept, dialled too
    dead_since: float | None = None  # wall clock; a record signed before this does not revive the node

    def member(self, now: float) -> bool:
        """A placement member: a live signed record with an address others can dial. A node that advertises
        none can still store and read (it dials out), but no node could reach it to hold or serve blocks."""
        return self.record is not None and self.record.expires > now and self.state != DEAD and bool(self.record.dialable)

    def dial_addresses(self) -> tuple[Address, ...]:
        """The record's addresses, then those an operator gave (a node may advertise none)."""
        return self.addresses + tuple(a for a in self.operator_addresses if a not in self.addresses)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "record": self.record.encode().hex() if self.record else None,
            "addresses": [a.to_cbor() for a in self.addresses],
            "state": self.state,
            "last_seen": self.last_seen,
            "rtt": self.rtt,
            "software": self.software,
            "pinned": self.pinned,
            "operator_addresses": [a.to_cbor() for a in self.operator_addresses],
            "dead_since": self.dead_since,
        }


class PeerTable:
    """In-memory table with atomic saves. Not thread-safe: reactor thread only."""

    def __init__(self, path: str | None, own_id: bytes, capacity: int = 10_000) -> None:
        self.path = path
        self.own_id = own_id
        self.capacity = capacity
        self.entries: dict[bytes, PeerEntry] = {}
        self.dirty = False
        self.own_seq = 0  # the sequence number of our last signed record: a clock stepped back cannot reuse it

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[PeerEntry]:
        return iter(list(self.entries.values()))

    def get(self, node_id: bytes) -> PeerEntry | None:
        return self.entries.get(node_id)

    def add(self, node_id: bytes) -> PeerEntry | None:
        """The entry for ``node_id``, created if there is room (None when the table is full)."""
        e = self.entries.get(node_id)
        if e is None:
            if node_id == self.own_id:
                return None
            if len(self.entries) >= self.capacity and not self._evict():
                return None
            e = self.entries[node_id] = PeerEntry(node_id)
            self.dirty = True
        return e

    def _evict(self) -> bool:
        """Make room by dropping one unpinned peer that is dead, has no record, or was never reached."""
        for e in self.entries.values():
            if not e.pinned and (e.state == DEAD or e.record is None or (e.state == NEW and e.last_seen is None)):
                del self.entries[e.node_id]
                return True
        return False

    def members(self, now: float) -> list[PeerEntry]:
        return [e for e in self.entries.values() if e.member(now)]

    def remove(self, node_id: bytes) -> None:
        if self.entries.pop(node_id, None) is not None:
            self.dirty = True

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self) -> None:
        if self.path is None:
            return
        data = {"format": TABLE_FORMAT, "own_seq": self.own_seq, "peers": [e.to_json() for e in self.entries.values()]}
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.dirty = False

    def load(self, now: float) -> int:
        """Read the saved table; returns how many peers it held. A damaged file is logged and ignored."""
        if self.path is None or not os.path.exists(self.path):
            return 0
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
                raise ValueError("unknown format")
            peers = data["peers"]
            if not isinstance(peers, list):
                raise ValueError("no peer list")
            own_seq = data.get("own_seq", 0)
            if type(own_seq) is int and own_seq >= 0:
                self.own_seq = own_seq
        except (OSError, ValueError, KeyError, RecursionError) as e:  # RecursionError: absurdly deep JSON
            log.warn("ignoring the saved peer table {path}: {error}", path=self.path, error=str(e))
            return 0
        for item in peers:
            try:
                self._load_entry(item, now)
            except (ValueError, KeyError, TypeError, InvalidRecord) as e:
                log.warn("ignoring a saved peer: {error}", error=str(e))
        return len(self.entries)

    def _load_entry(self, item: dict[str, Any], now: float) -> None:
        # Everything is checked before the entry is made, so that a damaged item leaves nothing behind.
        node_id = bytes.fromhex(item["node_id"])
        if len(node_id) != 32 or node_id == self.own_id:
            return
        record = None
        if item.get("record"):
            try:
                record = decode_record(bytes.fromhex(item["record"]), now)
            except InvalidRecord:
                record = None  # expired while we were down: dial the addresses to get a fresh one
            if record is not None and record.node_id != node_id:
                raise ValueError("record of another node")
        addresses, operator = [], []
        for field, out in (("addresses", addresses), ("operator_addresses", operator)):
            for value in item.get(field) or ():
                try:
                    out.append(Address.from_cbor(value))
                except InvalidRecord:
                    continue
        last_seen, rtt, software = item.get("last_seen"), item.get("rtt"), item.get("software")
        dead_since = item.get("dead_since")
        for name, v in (("last_seen", last_seen), ("rtt", rtt), ("dead_since", dead_since)):
            if v is not None and (type(v) not in (int, float) or not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number")
        if software is not None and not isinstance(software, str):
            raise ValueError("software must be text")
        e = self.add(node_id)
        if e is None:
            return
        e.record = record
        e.addresses = record.dialable if record is not None and record.dialable else tuple(addresses)
        e.last_seen = last_seen
        e.rtt = rtt
        e.software = software
        e.pinned = bool(item.get("pinned"))
        e.operator_addresses = tuple(operator)
        if item.get("state") == DEAD and dead_since is not None:
            e.state, e.dead_since = DEAD, dead_since  # still dead after a restart, until it answers or re-signs
        else:
            e.state = NEW  # until contacted again
