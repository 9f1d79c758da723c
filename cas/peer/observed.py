"""What peers say our address is: the source address each one sees our connections come from (HELLO's
``observed``), kept until enough independent peers agree on one IP to try it.

A node behind NAT sees only private addresses on its interfaces, while its peers see its public one. One peer's
word is not enough (it may lie, or sit behind the same NAT): an IP counts only once peers in ``NEEDED`` (3)
distinct networks, /24 for IPv4 and /48 for IPv6 as we see those peers, reported it; then the node asks one of
them to dial it back there (``cas.peer.reach``) before advertising it. Each peer has one vote, its latest
report, so no peer can push another's report out; at most ``MAX_REPORTERS`` peers are remembered, the one
heard from longest ago dropped first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

NEEDED = 3
MAX_REPORTERS = 256


def network_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) holding ``ip``: reports from one network count once."""
    addr = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 48}", strict=False))


def canonical_ip(value: object) -> str | None:
    """``value`` as the canonical text of a unicast IP address, or None (not text, not an IP, multicast...).
    An IPv4-mapped IPv6 address (how a dual-stack socket shows an IPv4 peer) is given as the IPv4 address."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            return None
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
    if addr.is_unspecified or addr.is_multicast:
        return None
    return str(addr)


def family(ip: str) -> int:
    return 6 if ":" in ip else 4


class ObservedAddresses:
    def __init__(self) -> None:
        self._reports: OrderedDict[bytes, tuple[str, str]] = OrderedDict()  # reporter -> (ip, its network)

    def report(self, reporter: bytes, reporter_ip: str, ip: str) -> None:
        """Peer ``reporter``, which we see at ``reporter_ip``, sees us at ``ip``: its one current report."""
        self._reports.pop(reporter, None)
        self._reports[reporter] = (ip, network_of(reporter_ip))
        while len(self._reports) > MAX_REPORTERS:
            self._reports.popitem(last=False)

    def confirmed(self, ip: str) -> bool:
        """Peers in at least ``NEEDED`` distinct networks currently see us at ``ip``."""
        return len({net for seen, net in self._reports.values() if seen == ip}) >= NEEDED

    def reporters(self, ip: str) -> list[bytes]:
        """Who currently sees us at ``ip``, most recent first (the peers to ask for a dial-back)."""
        return [r for r, (seen, _net) in reversed(self._reports.items()) if seen == ip]
