"""Candidate addresses of a node bound to a wildcard address (cas.peer.interfaces), and the service that
advertises them and checks them again."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cas.node.core import Node
from cas.peer.interfaces import PER_FAMILY, RECHECK_INTERVAL, candidates, list_interfaces
from cas.peer.records import Address
from cas.service import NodeService
from cas.store.datadir import prepare

from .util import sync_run


def hosts(addresses: list[Address]) -> list[str]:
    return [a.host for a in addresses]


class CandidateTests(SynchronousTestCase):
    def test_global_before_private_per_family(self) -> None:
        found = candidates("::", 3000, {
            "eth0": ["10.0.0.5", "8.8.4.4", "fd00::2", "fe80::1%eth0"],
            "wlan0": ["192.168.1.7", "2001:4860::8"],
        })
        self.assertEqual(hosts(found), ["8.8.4.4", "2001:4860::8"])
        self.assertEqual({a.port for a in found}, {3000})

    def test_private_only_when_the_family_has_no_global(self) -> None:
        found = candidates("::", 4000, {"eth0": ["10.0.0.5", "2001:4860::8", "fd00::2"], "eth1": ["100.64.0.1"]})
        self.assertEqual(hosts(found), ["10.0.0.5", "100.64.0.1", "2001:4860::8"])

    def test_loopback_only_when_nothing_else(self) -> None:
        self.assertEqual(hosts(candidates("0.0.0.0", 1, {"lo": ["127.0.0.1", "::1"]})), ["127.0.0.1"])
        self.assertEqual(hosts(candidates("::", 1, {"lo": ["127.0.0.1", "::1"]})), ["127.0.0.1", "::1"])
        self.assertEqual(hosts(candidates("::", 1, {"lo": ["127.0.0.1", "::1"], "eth0": ["fd00::2"]})), ["fd00::2"])
        self.assertEqual(hosts(candidates("::", 1, {"lo": ["127.0.0.1"], "eth0": ["fe80::1%eth0"]})), ["127.0.0.1"])

    def test_ipv4_bind_advertises_ipv4_only(self) -> None:
        self.assertEqual(hosts(candidates("0.0.0.0", 1, {"eth0": ["192.168.1.7", "2001:4860::8"]})), ["192.168.1.7"])

    def test_never_link_local_multicast_or_bridges(self) -> None:
        found = candidates("::", 1, {
            "eth0": ["169.254.3.4", "fe80::1%eth0", "ff02::1", "224.0.0.1", "0.0.0.0", "::", "240.0.0.1",
                     "::ffff:10.0.0.1", "not an address"],
            "docker0": ["172.17.0.1"], "br-0123456789ab": ["172.18.0.1"], "virbr0": ["192.168.122.1"],
            "lxcbr0": ["10.0.3.1"], "vboxnet0": ["192.168.56.1"], "lo": ["127.0.0.1"],
        })
        self.assertEqual(found, [])  # not even loopback: the host has other addresses, only none to advertise

    def test_a_lan_bridge_is_not_a_container_bridge(self) -> None:
        self.assertEqual(hosts(candidates("0.0.0.0", 1, {"br-lan": ["192.168.1.1"]})), ["192.168.1.1"])

    def test_loopback_never_when_the_host_has_other_addresses(self) -> None:
        """An IPv6-only host running the documented --port 3000 (IPv4): advertising 127.0.0.1 would make it a
        member nobody can reach, so it advertises nothing (and the service warns)."""
        self.assertEqual(candidates("0.0.0.0", 1, {"lo": ["127.0.0.1", "::1"], "eth0": ["2001:4860::8"]}), [])

    def test_site_local_ipv6_is_not_global(self) -> None:
        self.assertEqual(hosts(candidates("::", 1, {"eth0": ["fec0::5", "fd00::2"]})), ["fec0::5", "fd00::2"])
        self.assertEqual(hosts(candidates("::", 1, {"eth0": ["fec0::5", "2001:4860::8"]})), ["2001:4860::8"])

    def test_at_most_eight_per_family_no_duplicates(self) -> None:
        many = [f"10.0.0.{i}" for i in range(1, 20)] + ["10.0.0.1"]
        found = candidates("0.0.0.0", 1, {"eth0": many, "eth1": ["10.0.0.2"]})
        self.assertEqual(hosts(found), [f"10.0.0.{i}" for i in range(1, PER_FAMILY + 1)])

    def test_this_machine_lists_its_loopback(self) -> None:
        found = list_interfaces()
        self.assertTrue(any("127.0.0.1" in addresses for addresses in found.values()), found)


class AdvertiseTests(SynchronousTestCase):
    """A service whose peer port is bound on every interface (in memory: nothing is bound for real)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.seen = {"eth0": ["192.0.2.7"], "lo": ["127.0.0.1"]}
        self.node = Node(prepare(self.mktemp()), self.reactor, run=sync_run)
        self.service = NodeService(self.node, self.reactor, "tcp:3000", "tcp:3001:interface=127.0.0.1",
                                   interfaces=lambda: self.seen)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def advertised(self) -> list[str]:
        record = self.service.peers.own_record
        assert record is not None
        return hosts(list(record.dialable))

    def test_wildcard_port_advertises_its_interfaces(self) -> None:
        self.assertEqual(self.advertised(), ["192.0.2.7"])
        self.assertEqual(self.service.peers.hello()["addresses"], [["tcp", "192.0.2.7", 3000]])

    def test_candidates_checked_again_and_record_signed_anew(self) -> None:
        before = self.service.peers.own_record
        assert before is not None
        self.reactor.advance(RECHECK_INTERVAL)
        self.assertIs(self.service.peers.own_record, before)  # nothing changed: no new record
        self.seen = {"eth0": ["192.0.2.8"], "lo": ["127.0.0.1"]}
        self.reactor.advance(RECHECK_INTERVAL)
        after = self.service.peers.own_record
        assert after is not None
        self.assertGreater(after.seq, before.seq)
        self.assertEqual(self.advertised(), ["192.0.2.8"])

    def test_unreadable_interfaces_keep_what_was_advertised(self) -> None:
        def broken() -> dict[str, list[str]]:
            raise OSError("netlink refused")

        self.service.advertiser.interfaces = broken  # type: ignore[union-attr]
        self.reactor.advance(RECHECK_INTERVAL)
        self.assertEqual(self.advertised(), ["192.0.2.7"])
        self.flushLoggedErrors()
