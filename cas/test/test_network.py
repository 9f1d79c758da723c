"""In-process networks of real nodes on 127.0.0.1: real TLS, real sockets, the real peer layer.

Each node is a ``NodeService`` (peer port and API bound to 127.0.0.1 port 0) with short gossip and probe
intervals, so that a 10-node network converges, detects a killed node and takes back a restarted one in a
few seconds. Conditions are polled on the real reactor with a deadline; no test sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cas.base.cid import CID
from cas.node.core import Node
from cas.peer import frames
from cas.peer.connection import PeerError, RemoteError
from cas.peer.peers import Bootstrap, MembershipChange, PeerSettings
from cas.peer.peertable import DEAD
from cas.peer.records import Address, decode_record, sign_record
from cas.service import NodeService
from cas.store.datadir import prepare

from .util import sync_run

FAST = PeerSettings(
    gossip_interval=0.2, probe_interval=0.1, dead_after=1.0, backoff_base=0.1, backoff_max=1.0,
    connect_timeout=2.0, idle_close=60.0,
)


class Net:
    """Start, kill and restart nodes; every node is stopped at the end of the test."""

    def __init__(self, testcase: TestCase) -> None:
        self.tc = testcase
        self.services: list[NodeService] = []
        testcase.addCleanup(self.stop_all)

    def start(
        self, path: str | None = None, bootstrap: list[Bootstrap] | None = None, settings: PeerSettings = FAST,
        peer_endpoint: str = "tcp:0:interface=127.0.0.1", advertise: list[Address] | None = None, **node_kw: Any,
    ) -> NodeService:
        node = Node(prepare(path or self.tc.mktemp()), reactor, run=sync_run, **node_kw)
        s = NodeService(node, reactor, peer_endpoint, "tcp:0:interface=127.0.0.1",
                        advertise=advertise, bootstrap=bootstrap, settings=settings)
        s.startService()
        self.services.append(s)
        return s

    @staticmethod
    def port(s: NodeService) -> int:
        return s.ports[0].getHost().port

    def bootstrap_to(self, s: NodeService, pinned: bool) -> Bootstrap:
        return Bootstrap(s.node.identity.node_id if pinned else None, "127.0.0.1", self.port(s))

    async def kill(self, s: NodeService) -> None:
        """As abrupt as in-process allows: stop listening, cut every connection, no BYE, no table save."""
        self.services.remove(s)
        m = s.peers
        m._stopping = True
        s.releaser.stop()
        s.renewer.stop()
        s.announcer.stop()
        s.repairer.stop()
        s.node.scrubber.stop()
        s.auditor.stop()
        m.gossip.stop()
        for t in m._timers.values():
            if t.active():
                t.cancel()
        for d in list(m._dials):
            d.cancel()
        for p in s.ports:
            await p.stopListening()
        waits = [c.when_closed() for c in list(m.all)]
        for c in list(m.all):
            c.transport.abortConnection()
        for d in waits:
            await d
        s.node.stop()

    async def stop(self, s: NodeService) -> None:
        self.services.remove(s)
        await s.stopService()

    async def stop_all(self) -> None:
        for s in list(self.services):
            await self.stop(s)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)
    return time.monotonic() - start


def members(s: NodeService) -> set[bytes]:
    return set(s.peers.members())


def ids(services: list[NodeService]) -> set[bytes]:
    return {s.node.identity.node_id for s in services}


class TwoNodeTests(TestCase):
    timeout = 30

    async def test_blocks_between_two_nodes(self) -> None:
        """PUT_BLOCK on one node, GET_BLOCK back (verified), HAS as a bitmap; errors are explicit."""
        net = Net(self)
        a = net.start()
        b = net.start(bootstrap=[net.bootstrap_to(a, pinned=True)])
        a_id, b_id = a.node.identity.node_id, b.node.identity.node_id
        await wait_for(lambda: a_id in members(b) and b_id in members(a), "two members")
        block = os.urandom(100_000)
        cid = CID.of(block)
        await b.peers.put_block(a_id, cid, block, key=b"k" * 38, lease=3600)
        self.assertTrue(a.node.store.has(cid))
        self.assertFalse(b.node.store.has(cid))
        self.assertEqual(await b.peers.get_block(a_id, cid), block)
        other = CID.of(b"not stored")
        self.assertEqual(await b.peers.has(a_id, [cid, other, cid]), [True, False, True])
        # An unknown block: an explicit not_found error, the connection stays up.
        conn = await b.peers.connect(a_id)
        with self.assertRaises(RemoteError) as e:
            await b.peers.get_block(a_id, other)
        self.assertEqual(e.exception.code, "not_found")
        # Bytes that do not match the id are refused.
        with self.assertRaises(RemoteError) as e:
            await conn.request(frames.PUT_BLOCK, {"cid": other.to_bytes()}, b"something else")
        self.assertEqual(e.exception.code, "bad_request")
        self.assertFalse(a.node.store.has(other))
        # A placement key that is not a short byte string is refused; a good one is recorded.
        for bad in ("text", b"", b"k" * 129, 5):
            with self.assertRaises(RemoteError) as e:
                await conn.request(frames.PUT_BLOCK, {"cid": cid.to_bytes(), "key": bad}, block)
            self.assertEqual(e.exception.code, "bad_request")
        await b.peers.put_block(a_id, cid, block, key=b"k" * 38, lease=3600)
        self.assertEqual(a.node.index.hold_keys(cid), {b"k" * 38})
        self.assertIs(await b.peers.connect(a_id), conn)
        # The held block is referenced for its sender, so garbage collection keeps it.
        await a.node.collect_garbage()
        self.assertTrue(a.node.store.has(cid))

    async def test_bootstrap_without_node_id_is_trust_on_first_use(self) -> None:
        net = Net(self)
        a = net.start()
        b = net.start(bootstrap=[net.bootstrap_to(a, pinned=False)])
        await wait_for(lambda: a.node.identity.node_id in members(b), "b to learn a")
        self.assertTrue(b.peers.bootstrap[0].done)

    async def test_bootstrap_pinned_to_another_id_is_refused(self) -> None:
        net = Net(self)
        a = net.start()
        c = net.start()
        wrong = Bootstrap(c.node.identity.node_id, "127.0.0.1", net.port(a))  # a's address, c's id
        b = net.start(bootstrap=[wrong])
        await wait_for(lambda: b.peers.bootstrap[0].failures >= 2, "the pinned bootstrap to fail twice")
        self.assertNotIn(a.node.identity.node_id, members(b))
        self.assertFalse(b.peers.connections)

    async def test_down_bootstrap_is_retried(self) -> None:
        net = Net(self)
        a = net.start()
        port = net.port(a)
        path = a.node.datadir.path
        await net.stop(a)
        b = net.start(bootstrap=[Bootstrap(a.node.identity.node_id, "127.0.0.1", port)])
        await wait_for(lambda: b.peers.bootstrap[0].failures >= 2, "two failed bootstrap attempts")
        # a comes back on the same port: b gets in.
        node = Node(prepare(path), reactor, run=sync_run)
        a2 = NodeService(node, reactor, f"tcp:{port}:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", settings=FAST)
        a2.startService()
        net.services.append(a2)
        await wait_for(lambda: node.identity.node_id in members(b), "b to reach a once it is back")

    async def test_bootstrap_to_itself_is_skipped(self) -> None:
        net = Net(self)
        a = net.start()
        a.peers.bootstrap.append(Bootstrap(None, "127.0.0.1", net.port(a)))
        await wait_for(lambda: a.peers.bootstrap[-1].is_self, "the bootstrap to be recognised as this node")
        self.assertFalse(a.peers.connections)

    async def test_simultaneous_dial_keeps_one_connection(self) -> None:
        net = Net(self)
        a = net.start()
        b = net.start()
        a_id, b_id = a.node.identity.node_id, b.node.identity.node_id
        da = a.peers.dial(Address("tcp", "127.0.0.1", net.port(b)).endpoint(reactor), b_id)
        db = b.peers.dial(Address("tcp", "127.0.0.1", net.port(a)).endpoint(reactor), a_id)
        ca, cb = await da, await db
        # Both sides agree on the survivor: the connection dialled by the lower node id.
        await wait_for(lambda: a.peers.connections[b_id].initiator != b.peers.connections[a_id].initiator,
                       "both sides to pick the same connection")
        lower_dialled = a.peers.connections[b_id].initiator == (a_id < b_id)
        self.assertTrue(lower_dialled)
        self.assertIs(ca, a.peers.connections[b_id])
        self.assertIs(cb, b.peers.connections[a_id])
        # The loser is closed after the grace period; one connection each way remains.
        await wait_for(lambda: len(a.peers.all) == 1 and len(b.peers.all) == 1, "the duplicate to close", timeout=15)
        self.assertEqual(await ca.ping() >= 0, True)


class ConnectionManagementTests(TestCase):
    timeout = 30

    async def test_idle_connections_close_and_reopen_on_demand(self) -> None:
        net = Net(self)
        quiet = PeerSettings(gossip_interval=1000, probe_interval=0.1, idle_close=0.5, dead_after=1.0)
        a = net.start(settings=quiet)
        b = net.start(settings=quiet, bootstrap=[net.bootstrap_to(a, pinned=True)])
        a_id = a.node.identity.node_id
        await wait_for(lambda: a_id in members(b), "b to know a")
        conn = await b.peers.connect(a_id)
        # Keepalive and probe PINGs do not count as use: the connection closes once idle.
        await wait_for(lambda: a_id not in b.peers.connections, "the idle connection to close")
        self.assertFalse(conn._connected)
        self.assertEqual(b.peers.table.get(a_id).state, "alive")  # closed on purpose: not suspect
        again = await b.peers.connect(a_id)  # opened again on demand
        self.assertIsNot(again, conn)
        self.assertEqual(await b.peers.has(a_id, [CID.of(b"x")]), [False])

    async def test_connection_limit_closes_least_recently_used(self) -> None:
        net = Net(self)
        limited = PeerSettings(gossip_interval=1000, probe_interval=0.1, max_connections=1, dead_after=1.0)
        # a and b neither gossip nor probe, so that only c's own requests open and use connections.
        silent = PeerSettings(gossip_interval=1000, probe_interval=1000)
        a, b, c = net.start(settings=silent), net.start(settings=silent), net.start(settings=limited)
        for other in (a, b):
            c.peers.table.add(other.node.identity.node_id).addresses = (Address("tcp", "127.0.0.1", net.port(other)),)
        await c.peers.connect(a.node.identity.node_id)
        await c.peers.connect(b.node.identity.node_id)
        await wait_for(lambda: len(c.peers.connections) == 1, "one connection to be closed")
        self.assertIn(b.node.identity.node_id, c.peers.connections)  # the most recently used stays

    async def test_any_stream_endpoint_carries_the_protocol(self) -> None:
        """The transport seam is the endpoint: a node listening on a unix socket speaks the same TLS and frames."""
        from twisted.internet.endpoints import UNIXClientEndpoint

        short = tempfile.mkdtemp(prefix="cas-")  # a unix socket path must be short (108 bytes)
        self.addCleanup(shutil.rmtree, short, True)  # after the nodes stop (cleanups run last-in first-out)
        net = Net(self)
        sock = os.path.join(short, "peer.sock")
        a = net.start(peer_endpoint=f"unix:{sock}")
        self.assertEqual(a.peers.advertise, [])  # nothing dialable to advertise
        b = net.start()
        a_id = a.node.identity.node_id
        conn = await b.peers.dial(UNIXClientEndpoint(reactor, sock), a_id)
        self.assertEqual(conn.peer_id, a_id)
        block = os.urandom(5000)
        await b.peers.put_block(a_id, CID.of(block), block, key=b"k" * 38, lease=3600)
        self.assertEqual(await b.peers.get_block(a_id, CID.of(block)), block)

    async def test_garbage_on_the_peer_port_affects_nothing_else(self) -> None:
        net = Net(self)
        a = net.start()
        b = net.start(bootstrap=[net.bootstrap_to(a, pinned=True)])
        a_id = a.node.identity.node_id
        await wait_for(lambda: a_id in members(b), "b to know a")
        conn = await b.peers.connect(a_id)
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        closed: Deferred[None] = Deferred()

        class Garbage(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"\x00\xff" * 5000 + b"GET / HTTP/1.1\r\n\r\n")

            def connectionLost(self, reason: object = None) -> None:
                closed.callback(None)

        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", net.port(a)), Garbage())
        await closed  # the node closed it
        self.assertGreaterEqual(await conn.ping(), 0)  # the real peer connection is unaffected
        self.assertIs(a.peers.connections[b.node.identity.node_id].accepted, True)


class ReviewTests(TestCase):
    """Cases found in review of the peer layer."""

    timeout = 60

    async def test_every_waiter_of_one_dial_gets_its_outcome(self) -> None:
        net = Net(self)
        a = net.start()
        ghost = os.urandom(32)
        a.peers.table.add(ghost).addresses = (Address("tcp", "127.0.0.1", 9),)  # nothing listens there
        d1, d2, d3 = (a.peers.connect(ghost) for _ in range(3))
        for d in (d1, d2, d3):
            with self.assertRaises(PeerError):
                await d

    async def test_request_crossing_a_clean_close_is_sent_again(self) -> None:
        """a closes its idle connection to b just as b asks something: b asks again on a new connection."""
        net = Net(self)
        a = net.start()
        b = net.start(bootstrap=[net.bootstrap_to(a, pinned=True)])
        a_id, b_id = a.node.identity.node_id, b.node.identity.node_id
        await wait_for(lambda: a_id in members(b) and b_id in a.peers.connections, "a and b connected")
        block = os.urandom(3000)
        await b.peers.put_block(a_id, CID.of(block), block, key=b"k" * 38, lease=3600)
        old = b.peers.connections[a_id]
        a.peers._close_voluntarily(a.peers.connections[b_id], "idle")  # BYE goes out now
        self.assertEqual(await b.peers.get_block(a_id, CID.of(block)), block)  # asked before b saw the BYE
        self.assertIsNot(b.peers.connections[a_id], old)
        self.assertFalse(old._connected)

    async def test_peers_requests_are_rate_limited(self) -> None:
        """A PEERS answer walks the table: a connection gets a burst of 5, then 5 per second."""
        from twisted.internet.defer import DeferredList

        from cas.peer.peers import PEERS_PER_SECOND

        slow = PeerSettings(gossip_interval=1000, probe_interval=1000)
        net = Net(self)
        a = net.start(settings=slow)
        b = net.start(settings=slow, bootstrap=[net.bootstrap_to(a, pinned=True)])
        a_id = a.node.identity.node_id
        await wait_for(lambda: a_id in b.peers.connections, "b connected to a")
        conn = b.peers.connections[a_id]
        await deferLater(reactor, 1.1, lambda: None)  # the bootstrap's own exchange used a token: let it refill
        results = await DeferredList([conn.request(frames.PEERS, {"records": []}) for _ in range(PEERS_PER_SECOND + 3)],
                                     consumeErrors=True)
        busy = [r for ok, r in results if not ok and r.check(RemoteError) and r.value.code == "busy"]
        self.assertEqual(len(busy), 3)
        self.assertTrue(all(ok for ok, _ in results[:PEERS_PER_SECOND]))
        await deferLater(reactor, 0.5, lambda: None)  # refilled: 2.5 tokens
        self.assertIn("records", (await conn.request(frames.PEERS, {"records": []})).header)

    async def test_failed_dial_does_not_suspect_a_connected_node(self) -> None:
        """A dial to a restarted node's old address fails after the node dialled us from its new one."""
        net = Net(self)
        a = net.start()
        b = net.start(bootstrap=[net.bootstrap_to(a, pinned=True)])
        b_id = b.node.identity.node_id
        await wait_for(lambda: b_id in a.peers.connections, "b connected to a")
        entry = a.peers.table.get(b_id)
        a.peers._contact_failed(entry, "cannot reach node: tcp:127.0.0.1:9: connection refused")
        self.assertEqual(entry.state, "connected")
        self.assertEqual(entry.failures, 0)

    async def test_peer_without_address_is_no_member_and_dies_by_time(self) -> None:
        """A peer that advertises nothing is known (it dials out, its record arrives) but is never a placement
        member: no node could dial it to place or fetch a block. It cannot be probed: time alone makes it dead."""
        net = Net(self)
        a = net.start()
        hidden = net.start(advertise=[], bootstrap=[net.bootstrap_to(a, pinned=True)])
        hid = hidden.node.identity.node_id
        self.assertEqual(hidden.peers.advertise, [])
        await wait_for(lambda: a.node.identity.node_id in members(hidden), "the hidden node to count a as member")
        await wait_for(lambda: getattr(a.peers.table.get(hid), "record", None) is not None, "a to know its record")
        self.assertEqual(a.peers.table.get(hid).state, "connected")
        self.assertNotIn(hid, members(a))
        await net.kill(hidden)
        await wait_for(lambda: a.peers.table.get(hid).state == DEAD, "the hidden node to be marked dead")
        self.assertNotIn(hid, members(a))

    async def test_never_reached_address_is_probed_and_goes_dead(self) -> None:
        """A node learned by gossip whose address answers nothing (a wrong or private address) is probed like a
        suspect and is dead, so out of placement, about dead_after later: it is never kept as a member."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from cas.base.identity import Identity, make_certificate

        net = Net(self)
        a = net.start()
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # a port nobody listens on: connection refused
        port = closed.getsockname()[1]
        self.addCleanup(closed.close)
        key = Ed25519PrivateKey.generate()
        ghost = Identity(key, make_certificate(key))
        record = sign_record(ghost, [Address("tcp", "127.0.0.1", port)], 1, int(time.time()) + 3600)
        self.assertTrue(a.peers.gossip.apply(record, None))
        gid = ghost.node_id
        await wait_for(lambda: a.peers.table.get(gid).state == DEAD, "the unreachable node to be marked dead", 10)
        self.assertNotIn(gid, members(a))
        self.assertGreater(a.peers.table.get(gid).failures, 1)  # probed again as a suspect, not given up at once

    async def test_trust_on_first_use_is_remembered(self) -> None:
        net = Net(self)
        a = net.start()
        b_path = self.mktemp()
        b = net.start(path=b_path, bootstrap=[net.bootstrap_to(a, pinned=False)])
        a_id = a.node.identity.node_id
        await wait_for(lambda: a_id in members(b), "b to reach a")
        self.assertEqual(b.peers.bootstrap[0].node_id, a_id)  # pinned from now on
        e = b.peers.table.get(a_id)
        self.assertTrue(e.pinned)
        self.assertIn(Address("tcp", "127.0.0.1", net.port(a)), e.operator_addresses)
        await net.stop(b)
        again = net.start(path=b_path, bootstrap=[net.bootstrap_to(a, pinned=False)])
        self.assertEqual(again.peers.bootstrap[0].node_id, a_id)  # the earlier first use pins it

    async def test_trust_on_first_use_survives_a_kill(self) -> None:
        """The pin of a contact trusted on first use reaches peers.json within a second or so, not only at the
        next periodic save: a node killed right after first contact still refuses another key there."""
        net = Net(self)
        a = net.start()
        b_path = self.mktemp()
        b = net.start(path=b_path, bootstrap=[net.bootstrap_to(a, pinned=False)])
        a_id = a.node.identity.node_id
        table = os.path.join(b_path, "peers.json")

        def saved_pin() -> bool:
            try:
                with open(table, encoding="utf-8") as f:
                    return any(p["node_id"] == a_id.hex() and p.get("pinned") for p in json.load(f)["peers"])
            except (OSError, ValueError):
                return False

        await wait_for(saved_pin, "the pin to be saved", 3)  # the periodic save comes 5-10 s after start
        await net.kill(b)
        again = net.start(path=b_path, bootstrap=[net.bootstrap_to(a, pinned=False)])
        self.assertEqual(again.peers.bootstrap[0].node_id, a_id)

    async def test_new_identities_from_one_address_are_limited(self) -> None:
        net = Net(self)
        a = net.start()
        a_id = a.node.identity.node_id
        allowed = a.peers.gossip.new_per_source
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from cas.base.identity import Identity, make_certificate
        from cas.peer.peers import PeerManager

        class Fake:
            def __init__(self) -> None:
                key = Ed25519PrivateKey.generate()
                self.identity = Identity(key, make_certificate(key))

        managers = []
        for _ in range(allowed + 2):
            m = PeerManager(Fake(), reactor)
            managers.append(m)
            try:
                await m.dial(Address("tcp", "127.0.0.1", net.port(a)).endpoint(reactor), a_id)
            except PeerError:
                pass  # refused before our side saw a's HELLO
        # a kept the first `allowed` identities and closed the connections of the others.
        await wait_for(lambda: len(a.peers.all) == allowed, "a to close the connections past the allowance")
        self.assertEqual(len(a.peers.connections), allowed)
        self.assertEqual(len(a.peers.table), allowed)
        for m in managers:
            await m.stop()


class NetworkTests(TestCase):
    timeout = 120

    async def _chain(self, net: Net, n: int) -> list[NodeService]:
        nodes = [net.start()]
        for i in range(1, n):
            nodes.append(net.start(bootstrap=[net.bootstrap_to(nodes[i - 1], pinned=i % 2 == 0)]))
        return nodes

    async def test_ten_nodes_converge_kill_and_restart(self) -> None:
        net = Net(self)
        nodes = await self._chain(net, 10)
        everyone = ids(nodes)
        took = await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership", 30)
        changes: list[MembershipChange] = []
        nodes[0].peers.subscribe(changes.append)

        # Kill node 5: every other node marks it dead, and it leaves their membership.
        victim = nodes[5]
        vid = victim.node.identity.node_id
        await net.kill(victim)
        alive = [s for s in nodes if s is not victim]
        await wait_for(lambda: all(s.peers.table.get(vid).state == DEAD for s in alive), "all to mark the node dead", 30)
        self.assertTrue(all(vid not in members(s) for s in alive))
        self.assertIn(MembershipChange(vid, False), changes)

        # Restart node 3 from its saved table, without bootstrap: it rejoins.
        back = nodes[3]
        bid = back.node.identity.node_id
        path = back.node.datadir.path
        await net.stop(back)
        restarted = net.start(path=path)
        self.assertEqual(restarted.node.identity.node_id, bid)
        self.assertEqual(restarted.peers.bootstrap, [])
        others = [s for s in alive if s is not back]
        await wait_for(lambda: members(restarted) == ids(others) and all(bid in members(s) for s in others),
                       "the restarted node to rejoin", 30)
        # Its new address (a new port) reached everyone, with a newer record.
        new_addr = Address("tcp", "127.0.0.1", net.port(restarted))
        await wait_for(lambda: all(new_addr in s.peers.table.get(bid).addresses for s in others), "the new address to spread")
        print(f"\n10 nodes: full membership in {took:.1f} s")

    async def test_forged_records_spread_nowhere(self) -> None:
        net = Net(self)
        nodes = await self._chain(net, 5)
        everyone = ids(nodes)
        await wait_for(lambda: all(members(s) == everyone - ids([s]) for s in nodes), "full membership")
        liar, target, victim = nodes[0], nodes[1], nodes[2]
        vid = victim.node.identity.node_id
        genuine = target.peers.table.get(vid).record
        # 1. The victim's record with the address changed: the signature no longer matches.
        forged = sign_record(victim.node.identity, [Address("tcp", "127.0.0.1", 1)], genuine.seq + 1000, genuine.expires)
        tampered = forged.encode()
        # 2. A record signed by the liar but carrying the victim's key.
        stolen = sign_record(liar.node.identity, [Address("tcp", "127.0.0.1", 2)], genuine.seq + 2000, genuine.expires)
        stolen = type(stolen)(genuine.public_key, stolen.addresses, stolen.seq, stolen.expires, stolen.signature).encode()
        # 3. An expired record of a fresh identity.
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from cas.base.identity import Identity, make_certificate

        key = Ed25519PrivateKey.generate()
        ghost = Identity(key, make_certificate(key))
        expired = sign_record(ghost, [Address("tcp", "127.0.0.1", 3)], 1, int(time.time()) - 10).encode()
        # Make the tampered record's signature wrong: flip its address after signing.
        bad = decode_record(tampered, time.time())
        tampered = type(bad)(bad.public_key, (Address("tcp", "127.0.0.1", 4),), bad.seq, bad.expires, bad.signature).encode()
        conn = await liar.peers.connect(target.node.identity.node_id)
        rejected_before = target.peers.gossip.rejected
        await conn.request(frames.PEERS, {"records": [tampered, stolen, expired]})
        self.assertEqual(target.peers.gossip.rejected - rejected_before, 3)
        # Let gossip run many rounds: nobody holds the forged address or the ghost.
        await deferLater(reactor, 2.0, lambda: None)
        for s in nodes:
            if s is victim:
                continue
            e = s.peers.table.get(vid)
            self.assertEqual(e.record.public_key, genuine.public_key)
            self.assertNotIn(Address("tcp", "127.0.0.1", 4), e.addresses)
            self.assertNotIn(Address("tcp", "127.0.0.1", 2), e.addresses)
            self.assertIsNone(s.peers.table.get(ghost.node_id))

