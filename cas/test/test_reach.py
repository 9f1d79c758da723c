"""A node learns its address from what peers observe (cas.peer.observed) and checks it by dial-back
(cas.peer.reach): over real TLS connections on loopback addresses in distinct /24 networks."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cas.node.core import Node
from cas.peer import frames
from cas.peer.connection import RemoteError, Response
from cas.peer.interfaces import RECHECK_INTERVAL
from cas.peer.observed import MAX_REPORTERS, ObservedAddresses, canonical_ip, network_of
from cas.peer.peers import Bootstrap
from cas.peer.records import MAX_ADDRESSES, Address
from cas.service import NodeService
from cas.store.datadir import prepare

from .test_network import Net, wait_for
from .util import sync_run


def nid(i: int) -> bytes:
    return i.to_bytes(32, "big")


class ObservedTests(SynchronousTestCase):
    def test_three_networks_needed(self) -> None:
        o = ObservedAddresses()
        for i in range(5):  # five peers, one /24: one network
            o.report(nid(i), f"198.51.100.{i + 1}", "203.0.113.7")
        self.assertFalse(o.confirmed("203.0.113.7"))
        o.report(nid(10), "192.0.2.1", "203.0.113.7")
        self.assertFalse(o.confirmed("203.0.113.7"))
        o.report(nid(11), "198.18.0.1", "203.0.113.7")
        self.assertTrue(o.confirmed("203.0.113.7"))
        self.assertEqual(o.reporters("203.0.113.7")[0], nid(11))  # most recent first

    def test_one_current_vote_per_reporter_and_ipv6_48(self) -> None:
        o = ObservedAddresses()
        for net in ("2001:db8:1::5", "2001:db8:2::5", "2001:db8:3::5"):
            o.report(nid(1), net, "2001:db8:ff::1")  # one peer moving around counts once
        self.assertFalse(o.confirmed("2001:db8:ff::1"))
        o.report(nid(2), "2001:db8:1:ffff::9", "2001:db8:ff::1")  # the /48 2001:db8:1::
        o.report(nid(3), "2001:db8:3:1::9", "2001:db8:ff::1")  # the /48 of peer 1's latest report
        self.assertFalse(o.confirmed("2001:db8:ff::1"))
        o.report(nid(4), "2001:db8:2::9", "2001:db8:ff::1")
        self.assertTrue(o.confirmed("2001:db8:ff::1"))
        o.report(nid(4), "2001:db8:2::9", "2001:db8:ff::2")  # its vote moves: the first IP loses it
        self.assertFalse(o.confirmed("2001:db8:ff::1"))
        self.assertEqual(network_of("2001:db8:1:ffff::9"), "2001:db8:1::/48")
        self.assertEqual(network_of("10.1.2.3"), "10.1.2.0/24")

    def test_one_peer_cannot_push_others_out(self) -> None:
        o = ObservedAddresses()
        for i, net in enumerate(("10.1.0.1", "10.2.0.1", "10.3.0.1")):
            o.report(nid(i), net, "203.0.113.7")
        for n in range(1000):  # a liar reporting a new IP at every HELLO
            o.report(nid(99), "10.9.0.1", f"198.51.{n // 256}.{n % 256}")
        self.assertTrue(o.confirmed("203.0.113.7"))

    def test_memory_is_bounded_by_reporters(self) -> None:
        o = ObservedAddresses()
        for r in range(MAX_REPORTERS * 3):
            o.report(nid(r), f"10.{r % 250}.0.1", f"192.0.2.{r % 200}")
        self.assertEqual(len(o._reports), MAX_REPORTERS)

    def test_canonical_ip(self) -> None:
        self.assertEqual(canonical_ip("2001:DB8::0:1"), "2001:db8::1")
        self.assertEqual(canonical_ip("::ffff:127.0.0.1"), "127.0.0.1")  # a dual-stack socket's IPv4 peer
        for bad in (None, 5, b"1.2.3.4", "host.example", "0.0.0.0", "::", "224.0.0.1", "1.2.3.4:80", "x" * 100,
                    "fe80::1%eth0"):
            self.assertIsNone(canonical_ip(bad), bad)


def free_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DialBackTests(TestCase):
    """R listens on 127.0.0.1; three peers listen in three /24 networks of 127/8 and see R's connections come
    from 127.0.0.1 (the source the kernel picks for loopback)."""

    timeout = 60

    async def network(self, port: int | None) -> tuple[Net, Any, list[Any], list[str]]:
        net = Net(self)
        r = net.start()
        verified: list[str] = []
        r.peers.reach.port = port if port is not None else Net.port(r)
        r.peers.reach.on_verified = verified.append
        peers = [net.start(peer_endpoint=f"tcp:0:interface=127.0.{i}.1") for i in (1, 2, 3)]
        for p in peers:
            host = p.ports[0].getHost()
            r.peers.bootstrap.append(Bootstrap(p.node.identity.node_id, host.host, host.port))
        r.peers._bootstrap_tick()
        await wait_for(lambda: all(p.node.identity.node_id in r.peers.connections for p in peers), "R connected")
        return net, r, peers, verified

    async def test_observed_address_checked_by_dial_back(self) -> None:
        _net, r, peers, verified = await self.network(None)
        for p in peers:  # what each peer saw, as R heard it
            self.assertEqual(r.peers.connections[p.node.identity.node_id].hello_info.observed, "127.0.0.1")
        await wait_for(lambda: verified == ["127.0.0.1"], "the observed address to be verified")
        self.assertEqual(r.peers.reach.current, {4: "127.0.0.1"})

    async def test_no_dial_back_no_address(self) -> None:
        closed = free_port("127.0.0.1")
        _net, r, _peers, verified = await self.network(closed)  # R claims a port it does not listen on
        await wait_for(lambda: "127.0.0.1" in r.peers.reach._retry_at, "the dial-backs to fail")
        self.assertEqual((verified, r.peers.reach.current), ([], {}))

    async def test_a_verifier_saying_yes_without_dialling_is_not_believed(self) -> None:
        net = Net(self)
        r = net.start()
        liars = [net.start(peer_endpoint=f"tcp:0:interface=127.0.{i}.1") for i in (1, 2, 3)]
        for liar in liars:
            liar.peers.reach.answer = lambda conn, header: Response({"dial_back": True}, b"")  # type: ignore
        verified: list[str] = []
        r.peers.reach.port = Net.port(r)
        r.peers.reach.on_verified = verified.append
        for p in liars:
            host = p.ports[0].getHost()
            r.peers.bootstrap.append(Bootstrap(p.node.identity.node_id, host.host, host.port))
        r.peers._bootstrap_tick()
        await wait_for(lambda: "127.0.0.1" in r.peers.reach._retry_at, "the check to end")
        self.assertEqual((verified, r.peers.reach.current), ([], {}))

    async def test_dial_back_only_to_the_askers_ip_and_rate_limited(self) -> None:
        _net, r, peers, _verified = await self.network(None)
        asker = peers[0]  # asks R to dial it back
        conn = asker.peers.connections[r.node.identity.node_id]
        token = b"t" * 16
        for bad in ({"dial_back": 0}, {"dial_back": 70000}, {"dial_back": "3000"}, {"dial_back": None},
                    {"dial_back": Net.port(asker), "ip": "127.0.1.1", "token": b"short"}):
            try:
                await conn.request(frames.PING, {"ip": "127.0.1.1", "token": token, **bad})
            except RemoteError as e:
                self.assertEqual(e.code, "bad_request")
            else:
                self.fail(f"{bad!r} was accepted")
        # Another IP than the one the connection comes from: refused, nothing dialled.
        other = await conn.request(frames.PING, {"dial_back": Net.port(asker), "ip": "192.0.2.1", "token": token})
        self.assertEqual(other.header, {"dial_back": False, "reason": "this connection comes from 127.0.1.1"})
        # The asker's own IP (asker listens on 127.0.1.1): dialled, and the token comes back to the asker.
        asker.peers.reach._token, asker.peers.reach._expected = token, r.node.identity.node_id
        first = await conn.request(frames.PING, {"dial_back": Net.port(asker), "ip": "127.0.1.1", "token": token})
        self.assertEqual(first.header, {"dial_back": True})
        self.assertTrue(asker.peers.reach._proven)
        try:
            await conn.request(frames.PING, {"dial_back": Net.port(asker), "ip": "127.0.1.1", "token": token})
        except RemoteError as e:
            self.assertEqual(e.code, "busy")
        else:
            self.fail("a second dial-back within the spacing was served")
        plain = await conn.request(frames.PING, {"some_later_key": 1})
        self.assertEqual(plain.header, {})


class ServiceTests(SynchronousTestCase):
    def service(self, interfaces: Any, port: str = "tcp:3000") -> NodeService:
        reactor = MemoryReactorClock()
        node = Node(prepare(self.mktemp()), reactor, run=sync_run)
        service = NodeService(node, reactor, port, "tcp:3001:interface=127.0.0.1", interfaces=interfaces)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_verified_address_advertised_first_with_our_port(self) -> None:
        service = self.service(lambda: {"eth0": ["10.0.0.5"]})
        self.assertEqual(service.peers.reach.port, 3000)
        service.peers.reach.on_verified("203.0.113.9")  # type: ignore[misc]
        self.assertEqual(service.peers.advertise, [Address("tcp", "203.0.113.9", 3000), Address("tcp", "10.0.0.5", 3000)])
        assert service.peers.own_record is not None
        self.assertEqual(list(service.peers.own_record.dialable), service.peers.advertise)
        service.peers.reach.on_verified("198.51.100.4")  # type: ignore[misc]  # the NAT's address changed
        self.assertEqual([a.host for a in service.peers.advertise], ["198.51.100.4", "10.0.0.5"])

    def test_a_full_record_still_signs(self) -> None:
        many = [f"8.8.{i}.1" for i in range(20)] + [f"2001:4860:{i}::1" for i in range(20)]
        service = self.service(lambda: {"eth0": many}, "tcp6:3000")  # on :: (in memory): both families
        self.assertEqual(len(service.peers.advertise), 14)  # 7 per family
        service.peers.reach.on_verified("203.0.113.9")  # type: ignore[misc]
        service.peers.reach.on_verified("2001:db8:99::1")  # type: ignore[misc]
        self.assertEqual(len(service.peers.advertise), MAX_ADDRESSES)
        assert service.peers.own_record is not None
        self.assertEqual(list(service.peers.own_record.dialable), service.peers.advertise)
        self.assertEqual(service.peers.hello()["addresses"][0], ["tcp", "203.0.113.9", 3000])

    def test_losing_every_address_takes_two_reads(self) -> None:
        seen = {"eth0": ["192.0.2.7"], "lo": ["127.0.0.1"]}
        service = self.service(lambda: seen)
        seen = {"lo": ["127.0.0.1"]}  # the cable is out, or the interface flaps
        service.reactor.advance(RECHECK_INTERVAL)
        self.assertEqual([a.host for a in service.peers.advertise], ["192.0.2.7"])
        service.reactor.advance(RECHECK_INTERVAL)
        self.assertEqual([a.host for a in service.peers.advertise], ["127.0.0.1"])

    def test_operator_addresses_learn_nothing(self) -> None:
        reactor = MemoryReactorClock()
        node = Node(prepare(self.mktemp()), reactor, run=sync_run)
        service = NodeService(node, reactor, "tcp:3000", "tcp:3001:interface=127.0.0.1",
                              advertise=[Address("tcp", "192.0.2.1", 3000)])
        service.privilegedStartService()
        self.addCleanup(node.stop)
        self.assertIsNone(service.peers.reach.port)
