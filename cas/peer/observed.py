"""What peers say our address is: the source address each one sees our connections come from (HELLO's
``observed``), kept until enough independent peers agree on one IP to try it.

A node behind NAT sees only private addresses on its interfaces, while its peers see its public one. One peer's
word is not enough (it may lie, or sit behind the same NAT): an IP counts only once peers in ``NEEDED`` (3)
distinct networks, /24 for IPv4 and /48 for IPv6 as we see those peers, reported it; then the node asks one of
them to dial it back there (``cas.peer.reach``) before advertising it. Memory is bounded: at most
``MAX_IPS`` IPs, each with at most ``MAX_REPORTS`` reporters, the oldest dropped first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

NEEDED = 3
MAX_IPS = 16
MAX_REPORTS = 16


def network_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) holding ``ip``: reports from one network count once."""
    addr = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 48}", strict=False))


def canonical_ip(value: object) -> str | None:
    """``value`` as the canonical text of a unicast IP address, or None (not text, not an IP, multicast...)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if addr.is_unspecified or addr.is_multicast:
        return None
    return str(addr)


class ObservedAddresses:
    def __init__(self) -> None:
        self._reports: OrderedDict[str, OrderedDict[bytes, str]] = OrderedDict()  # ip -> reporter -> its network

    def report(self, reporter: bytes, reporter_ip: str, ip: str) -> None:
        """Peer ``reporter``, which we see at ``reporter_ip``, sees us at ``ip``."""
        reports = self._reports.pop(ip, None) or OrderedDict()
        self._reports[ip] = reports  # most recent last
        while len(self._reports) > MAX_IPS:
            self._reports.popitem(last=False)
        reports.pop(reporter, None)
        reports[reporter] = network_of(reporter_ip)
        while len(reports) > MAX_REPORTS:
            reports.popitem(last=False)

    def confirmed(self, ip: str) -> bool:
        """Peers in at least ``NEEDED`` distinct networks reported ``ip``."""
        return len(set(self._reports.get(ip, {}).values())) >= NEEDED

    def reporters(self, ip: str) -> list[bytes]:
        """Who reported ``ip``, most recent first (the peers to ask for a dial-back)."""
        return list(reversed(self._reports.get(ip, {})))

