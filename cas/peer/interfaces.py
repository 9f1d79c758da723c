"""The addresses a node bound to a wildcard address advertises: candidates read from its network interfaces.

A node listening on every interface (``--port 3000``) has no address of its own to put in its record, and a
node that advertises nothing cannot be dialled by nodes that learn of it through gossip. So it advertises the
addresses of its interfaces that others can plausibly reach, chosen per address family:

- global unicast addresses; private ones (RFC 1918, IPv6 ULA, CGNAT and the like) only when the family has no
  global address; loopback only when the node has no other address at all (a test network in one namespace);
- never link-local, multicast or unspecified addresses, nor those of interfaces that are down or are known
  virtual bridges of containers and VMs (``docker0``, ``br-*``, ``virbr*``, ...), whose addresses other hosts
  cannot reach;
- at most ``PER_FAMILY`` (8) per family, in the order the system lists them.

Interfaces are listed with psutil (``net_if_addrs``/``net_if_stats``, getifaddrs and netlink underneath). The
service checks them again every few minutes and signs a new record when the candidates change.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Mapping, Sequence

from cas.peer.records import Address

PER_FAMILY = 8
RECHECK_INTERVAL = 300.0  # seconds between two reads of the interfaces
VIRTUAL_BRIDGES = ("docker*", "br-*", "virbr*", "lxcbr*", "lxdbr*", "podman*", "cni*")

Interfaces = Mapping[str, Sequence[str]]  # name of an interface that is up -> its IP addresses, as listed


def list_interfaces() -> dict[str, list[str]]:
    """The IP addresses of every interface that is up (psutil)."""
    import socket

    import psutil

    stats = psutil.net_if_stats()
    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        out[name] = [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
    return out


def candidates(bound: str, port: int, interfaces: Interfaces) -> list[Address]:
    """What a node listening on ``bound`` (``0.0.0.0``: IPv4; ``::``: both families) and ``port`` advertises."""
    families = {4, 6} if ":" in bound else {4}
    found: dict[str, dict[int, list[str]]] = {"global": {4: [], 6: []}, "private": {4: [], 6: []},
                                              "loopback": {4: [], 6: []}}
    for name, addresses in interfaces.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in VIRTUAL_BRIDGES):
            continue
        for text in addresses:
            try:
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            kind = _kind(ip)
            if kind is not None and ip.version in families and str(ip) not in found[kind][ip.version]:
                found[kind][ip.version].append(str(ip))
    chosen: list[str] = []
    for family in (4, 6):
        chosen += (found["global"][family] or found["private"][family])[:PER_FAMILY]
    if not chosen:
        for family in (4, 6):
            chosen += found["loopback"][family][:PER_FAMILY]
    return [Address("tcp", host, port) for host in chosen]


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return None
    return "global" if ip.is_global else "private"


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


Lister = Callable[[], Interfaces]
