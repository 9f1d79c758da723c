"""What a node bound to a wildcard address advertises, over its life: its interfaces' candidates
(``cas.peer.interfaces``), read again every few minutes, and in front of them the addresses peers see it at
once a dial-back proved them (``cas.peer.reach``), one per family. Every change is a new signed record.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import Logger

from cas.peer.interfaces import RECHECK_INTERVAL, Lister, candidates
from cas.peer.records import MAX_ADDRESSES, Address

log = Logger()


class Advertiser:
    def __init__(self, peers: Any, clock: Any, host: str, port: int, interfaces: Lister) -> None:
        self.peers, self.clock, self.host, self.port, self.interfaces = peers, clock, host, port, interfaces
        self.found: list[Address] = self._read() or []  # the interfaces' candidates, last read
        self.observed: list[Address] = []  # where peers see us, proven by dial-back
        self.current = list(self.found)  # what the record says
        self._worse_once = False  # the last read lost every reachable address
        self._timer: Any = None
        peers.reach.port = port  # learn a NAT's public address too
        peers.reach.on_verified = self.observed_verified

    def start(self) -> None:
        self._timer = self.clock.callLater(RECHECK_INTERVAL, self.recheck)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _read(self) -> list[Address] | None:
        """The interface candidates; None (logged) if the interfaces cannot be read."""
        try:
            return candidates(self.host, self.port, self.interfaces())
        except Exception as e:
            log.warn("cannot list the network interfaces: {e}", e=f"{type(e).__name__}: {e}")
            return None

    def recheck(self) -> None:
        """Interfaces come and go (DHCP, VPNs, a cable): advertise what is there now."""
        self._timer = self.clock.callLater(RECHECK_INTERVAL, self.recheck)
        found = self._read()
        if found is None:
            return
        # A flapping interface must not publish a record nobody can dial: losing every non-loopback address
        # takes two reads in a row.
        if _reachable(self.found) and not _reachable(found) and not self._worse_once:
            self._worse_once = True
            return
        self._worse_once = False
        self.found = found
        self._publish()

    def observed_verified(self, ip: str) -> None:
        """Peers see this node at ``ip`` and one dialled it back there: advertise it first, with our own port.
        One per family: a newer one (the NAT's address changed) replaces the older."""
        address = Address("tcp", ip, self.port)  # before any state changes: InvalidRecord leaves all as is
        self.observed = [a for a in self.observed if a.is_ipv6 != address.is_ipv6] + [address]
        self._publish()

    def _publish(self) -> None:
        new = (self.observed + [a for a in self.found if a not in self.observed])[:MAX_ADDRESSES]
        if new == self.current:
            return
        try:
            self.peers.set_advertise(new)  # signs first: a record it cannot sign changes nothing
        except Exception:
            log.failure("signing a record with the addresses {new} failed", new=", ".join(map(str, new)))
            return
        log.info("advertised addresses changed: {old} -> {new}", old=", ".join(map(str, self.current)) or "none",
                 new=", ".join(map(str, new)) or "none")
        self.current = new


def _reachable(addresses: list[Address]) -> bool:
    return any(not ipaddress.ip_address(a.host).is_loopback for a in addresses)
