"""``twistd cas``: command-line options and the service maker."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.python import usage

from cas.base.errors import DataDirError
from cas.base.malloc import tune as tune_allocator
from cas.node.core import Node
from cas.peer.peers import Bootstrap, PeerSettings
from cas.peer.records import Address, InvalidRecord, parse_operator_address
from cas.service import NodeService
from cas.store.datadir import prepare
from cas.store.paths import default_data_dir

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
          "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def parse_size(text: str) -> int:
    """``1048576``, ``500M``, ``10GiB``, ``2.5G``, ``1TB``: K/M/G/T and KiB.. are powers of 1024, KB.. of 1000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise usage.UsageError(f"not a size: {text!r} (try 500M, 10G, 1TiB or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[unit])


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``31d``, ``12h``, ``90m``, ``45s`` or a number of seconds, as whole seconds (at least 1)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m or float(m.group(1)) * _SECONDS[m.group(2) or "s"] < 1:
        raise usage.UsageError(f"not a duration: {text!r} (try 31d, 12h, 90m or a number of seconds)")
    return int(float(m.group(1)) * _SECONDS[m.group(2) or "s"])


class Options(usage.Options):
    synopsis = (
        "[--port 3000|ENDPOINT] [--api ENDPOINT] [--data-dir DIR] [--storage-limit SIZE] [--quota SIZE] "
        "[--buffer-budget SIZE] [--lease-time DURATION] [--max-lease-time DURATION] [--repair-after DURATION] "
        "[--repair-rate SIZE] [--dead-after DURATION] [--scrub-interval DURATION] "
        "[--replicas N] [--bootstrap [NODEID@]HOST:PORT]... [--advertise HOST:PORT]... [--gossip-interval SECONDS]"
    )
    longdesc = (
        "Run a cas storage node. --port is the peer-to-peer endpoint (a bare number means tcp:NUMBER). "
        "--api defaults to 127.0.0.1 on the next port and --data-dir to $XDG_DATA_HOME/cas/node-PORT, "
        "both only when --port is a plain number."
    )
    optParameters = [
        ["port", "p", "3000", "Peer-to-peer listen endpoint or port number."],
        ["api", "a", None, "HTTP API endpoint (default: tcp:PORT+1:interface=127.0.0.1)."],
        ["data-dir", "d", None, "Data directory (default: $XDG_DATA_HOME/cas/node-PORT)."],
        ["storage-limit", None, None, "Most bytes of blocks to keep on disk, e.g. 500M, 20G (default: the disk)."],
        ["quota", None, None, "Most bytes of blocks to hold for other nodes, e.g. 10G (default: up to --storage-limit)."],
        ["replicas", None, 3, "Holders of every block besides this node (placed on upload).", int],
        ["buffer-budget", None, "16M", "Block buffers all uploads may hold together; past it they wait (default 16M)."],
        ["gossip-interval", None, 5.0, "Seconds between gossip rounds (jittered by +-25%).", float],
        ["lease-time", None, "31d", "How long holders are asked to keep this node's blocks (renewed before it ends)."],
        ["max-lease-time", None, "62d", "The longest lease this node grants others on the blocks it holds."],
        ["repair-after", None, "10m", "How long a peer is dead before the copies it held are replaced."],
        ["repair-rate", None, "20M", "Bytes per second repair may send at most (e.g. 20M)."],
        ["dead-after", None, "30s", "How long a peer fails every contact before it is taken for dead."],
        ["scrub-interval", None, "7d", "How long a pass re-checking every stored block takes (at most 10% of disk time)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bootstrap"] = []
        self["advertise"] = []

    def opt_bootstrap(self, value: str) -> None:
        """A peer to contact first: [NODEID@]HOST:PORT (repeatable). With NODEID the contact is pinned,
        without it trusted on first use."""
        try:
            node_id, host, port = parse_operator_address(value)
        except ValueError as e:
            raise usage.UsageError(f"--bootstrap: {e}") from None
        self["bootstrap"].append(Bootstrap(node_id, host, port))

    def opt_advertise(self, value: str) -> None:
        """An address peers can reach this node at, HOST:PORT with HOST an IP address (repeatable).
        Default: the --port interface when it is a specific address."""
        try:
            node_id, host, port = parse_operator_address(value)
            if node_id is not None:
                raise ValueError("a node id has no place here")
            self["advertise"].append(Address.from_cbor(["tcp", host, port]))
        except (ValueError, InvalidRecord) as e:
            raise usage.UsageError(f"--advertise {value!r}: {e}") from None

    def postOptions(self) -> None:
        from twisted.internet import reactor

        port = self["port"].strip()
        if re.fullmatch(r"\d+", port):
            n = int(port)
            if n > 65535:
                raise usage.UsageError(f"--port {n}: a TCP port is at most 65535")
            self["port"] = f"tcp:{n}"
            if self["api"] is None:
                self["api"] = f"tcp:{n + 1 if n else 0}:interface=127.0.0.1"
            if self["data-dir"] is None:
                if n == 0:  # every such node would share node-0 (and be refused by its lock): say so at once
                    raise SystemExit("cas: --port 0 picks a new port at each start, so it has no default data dir; "
                                     "give --data-dir DIR")
                self["data-dir"] = default_data_dir(n)
        elif self["api"] is None or self["data-dir"] is None:
            raise usage.UsageError("--api and --data-dir are required when --port is an endpoint, not a port number")
        for name in ("port", "api"):
            try:
                endpoints.serverFromString(reactor, self[name])
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--{name} {self[name]!r} is not a valid endpoint: {e}") from None
        for name in ("storage-limit", "quota", "buffer-budget", "repair-rate"):
            if self[name] is not None:
                self[name] = parse_size(self[name])
        for name in ("lease-time", "max-lease-time", "repair-after", "dead-after", "scrub-interval"):
            self[name] = parse_duration(self[name])
        if self["repair-rate"] < 64 << 10:
            raise usage.UsageError("--repair-rate must be at least 64K (bytes per second)")
        if self["buffer-budget"] < 4 << 20:
            raise usage.UsageError("--buffer-budget must be at least 4M")
        if not 0 <= self["replicas"] <= 16:
            raise usage.UsageError("--replicas must be between 0 and 16")
        if not (math.isfinite(self["gossip-interval"]) and self["gossip-interval"] > 0):
            raise usage.UsageError("--gossip-interval must be a positive number of seconds")


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    tune_allocator()  # this process is a node: large block buffers are reused instead of re-faulted
    try:
        datadir = prepare(options["data-dir"], lease_time=options["lease-time"])
        node = Node(datadir, reactor, storage_limit=options["storage-limit"], replicas=options["replicas"],
                    quota=options["quota"], buffer_budget=options["buffer-budget"], lease_time=options["lease-time"],
                    max_lease_time=options["max-lease-time"], repair_after=options["repair-after"],
                    repair_rate=options["repair-rate"], scrub_interval=options["scrub-interval"],
                    monotonic=time.monotonic)
    except DataDirError as e:
        raise SystemExit(f"cas: {e}") from None
    settings = PeerSettings(gossip_interval=options["gossip-interval"], dead_after=options["dead-after"])
    return NodeService(
        node, reactor, options["port"], options["api"],
        advertise=options["advertise"] or None, bootstrap=options["bootstrap"], settings=settings,
    )
