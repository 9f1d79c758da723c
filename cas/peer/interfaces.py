"""The addresses a node bound to a wildcard address advertises: candidates read from its network interfaces.

A node listening on every interface (``--port 3000``) has no address of its own to put in its record, and a
node that advertises nothing cannot be dialled by nodes that learn of it through gossip. So it advertises the
addresses of its interfaces that others can plausibly reach, chosen per address family:

- global unicast addresses; the other unicast ones (RFC 1918, IPv6 ULA and site-local, CGNAT, the documentation
  and benchmarking ranges: whatever ``ipaddress`` does not call global) only when the family has no global
  address; loopback only when no interface has any other address at all (a test network in one namespace);
- never link-local, multicast, unspecified, reserved or IPv4-mapped addresses, nor those of interfaces that
  are down or are known virtual bridges of containers and VMs (``docker*``, Docker's ``br-`` and 12 hex
  digits, ``virbr*``, ``lxcbr*``, ``lxdbr*``, ``podman*``, ``cni*``, ``vboxnet*``, ``vmnet*``), whose addresses
  other hosts cannot reach;
- at most ``PER_FAMILY`` (7) per family, in the order the system lists them: with one observed address per
  family (``cas.peer.reach``) that fills a record's 16 addresses at most.

Interfaces are listed with psutil (``net_if_addrs``/``net_if_stats``, getifaddrs and netlink underneath). The
service checks them again every few minutes and signs a new record when the candidates change.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence

from cas.peer.records import Address

PER_FAMILY = 7
RECHECK_INTERVAL = 300.0  # seconds between two reads of the interfaces
VIRTUAL_BRIDGES = ("docker*", "virbr*", "lxcbr*", "lxdbr*", "podman*", "cni*", "vboxnet*", "vmnet*")
DOCKER_NETWORK = re.compile(r"br-[0-9a-f]{12}")  # a user-defined Docker network (a LAN's br-lan is not one)

Interfaces = Mapping[str, Sequence[str]]  # name of an interface that is up -> its IP addresses, as listed
Lister = Callable[[], Interfaces]


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
    anything_else = False  # any usable address, on any interface, in any family, but loopback
    for name, addresses in interfaces.items():
        bridge = DOCKER_NETWORK.fullmatch(name) or any(fnmatch.fnmatchcase(name, p) for p in VIRTUAL_BRIDGES)
        for text in addresses:
            try:
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            kind = _kind(ip)
            if kind is None:
                continue
            anything_else = anything_else or kind != "loopback"
            if not bridge and ip.version in families and str(ip) not in found[kind][ip.version]:
                found[kind][ip.version].append(str(ip))
    chosen: list[str] = []
    for family in (4, 6):
        chosen += (found["global"][family] or found["private"][family])[:PER_FAMILY]
    if not chosen and not anything_else:  # peers on this host only: loopback reaches them, and nothing else does
        for family in (4, 6):
            chosen += found["loopback"][family][:PER_FAMILY]
    return [Address("tcp", host, port) for host in chosen]


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return None
        if ip.is_site_local:  # fec0::/10, deprecated: ipaddress calls it global
            return "private"
    return "global" if ip.is_global else "private"


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")

