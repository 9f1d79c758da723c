#!/usr/bin/env python
"""CPU per GiB of the peer TLS layer alone, in one process (no sockets): an A/B harness for cas/peer/peertls.py
(``--root``: another checkout). See bench/README.md."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import harness


def cpu() -> float:
    return sum(harness.cpu_split()[:2])


def run(a: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.abspath(a.root))
    env = harness.environment()

    from cas.base.malloc import tune

    tune()
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport
    from zope.interface import implementer

    from cas.base.identity import load_or_create
    from cas.peer import frames, peertls

    d = tempfile.mkdtemp(prefix="cas-tlspath-")  # the two identities; removed at the end
    srv_id = load_or_create(d + "/s.key", d + "/s.crt")
    cli_id = load_or_create(d + "/c.key", d + "/c.crt")
    payload = os.urandom(1 << 20)

    @implementer(peertls.IReceiveBuffer)
    class Sink(Protocol):
        def __init__(self) -> None:
            self.dec, self.frames = frames.FrameDecoder(), 0

        def get_buffer(self) -> memoryview:
            return self.dec.get_buffer()

        def buffer_updated(self, n: int) -> None:
            self.frames += len(self.dec.buffer_updated(n))

        def dataReceived(self, data: bytes) -> None:
            self.frames += len(self.dec.feed(data))

    class FDTransport(StringTransport):
        """Twisted FileDescriptor's buffering: writes append, a flush joins (no copy for a lone buffer)."""

        def __init__(self) -> None:
            super().__init__()
            self.pieces: list[bytes] = []

        def write(self, data: bytes) -> None:
            assert isinstance(data, bytes)
            self.pieces.append(data)

        def flush(self) -> bytes:
            out = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
            self.pieces = []
            return out

    def connected(proto_app: Protocol) -> tuple:
        """A server PeerTLSProtocol (on an FDTransport) and a client one (on a StringTransport), handshaken."""
        server = peertls.PeerTLSFactory(peertls.server_creator(srv_id), False,
                                        Factory.forProtocol(Protocol)).buildProtocol(None)
        st = FDTransport()
        server.makeConnection(st)
        client = peertls.PeerTLSFactory(peertls.client_creator(cli_id, srv_id.node_id), True,
                                        Factory.forProtocol(lambda: proto_app)).buildProtocol(None)
        ct = StringTransport()
        client.makeConnection(ct)
        for _ in range(20):
            c2s = ct.value()
            ct.clear()
            if c2s:
                server.dataReceived(c2s)
            s2c = st.flush()
            if s2c:
                client.dataReceived(s2c)
            if server._handshakeDone and client._handshakeDone and not ct.value() and not st.pieces:
                break
        assert server._handshakeDone and client._handshakeDone, "handshake"
        return server, st, client

    def frame() -> list:
        return frames.encode(frames.Frame(frames.GET_BLOCK, frames.RESPONSE, 7, header={}, payload=payload))

    def recv_once() -> float:
        sink = Sink()
        server, st, client = connected(sink)
        wire = bytearray()
        for _ in range(a.blocks):
            server.wrappedProtocol.transport.writeSequence(frame())
            wire += st.flush()
        chunks = [bytes(wire[o:o + a.chunk]) for o in range(0, len(wire), a.chunk)]
        t = cpu()
        for c in chunks:
            client.dataReceived(c)
        spent = cpu() - t
        assert sink.frames == a.blocks, (sink.frames, a.blocks)
        return spent / (a.blocks / 1024)

    def send_once() -> float:
        server, st, _client = connected(Sink())
        out = server.wrappedProtocol.transport
        t = cpu()
        for _ in range(a.blocks):
            out.writeSequence(frame())
            st.flush()
        return (cpu() - t) / (a.blocks / 1024)

    rounds = []
    for i in range(a.repeat):
        rounds.append({"recv_cpu_s_per_gib": recv_once(), "send_cpu_s_per_gib": send_once()})
        print(f"round {i + 1}: recv {rounds[-1]['recv_cpu_s_per_gib']:.3f} CPU s/GiB  send "
              f"{rounds[-1]['send_cpu_s_per_gib']:.3f} CPU s/GiB", file=sys.stderr, flush=True)
    shutil.rmtree(d, ignore_errors=True)
    med = {k: harness.median([r[k] for r in rounds]) for k in rounds[0]}
    a.json = a.json or os.path.join(harness.RESULTS, f"tlspath-{a.blocks}-r{a.repeat}.json")
    harness.finish(a, "tlspath", env, [f"cas from {os.path.dirname(peertls.__file__)}, {a.blocks} frames of 1 MiB, "
                                       f"{a.chunk}-byte reads, {a.repeat} round(s): CPU seconds per GiB, medians"],
                   harness.render([("recv", 8), ("send", 8)], [[[f"{med['recv_cpu_s_per_gib']:.3f}",
                                                              f"{med['send_cpu_s_per_gib']:.3f}"]]]),
                   {"rounds": rounds, "median": med})


if __name__ == "__main__":
    p = harness.parser(__doc__.split("\n")[0], files=False)
    p.add_argument("--root", default=harness.REPO, help="the tree whose cas package is measured (default: this one)")
    p.add_argument("--blocks", type=int, default=512, help="1 MiB frames per measurement (default 512)")
    p.add_argument("--chunk", type=int, default=1 << 18,
                   help="bytes per socket read on the recv side (default 256 KiB)")
    p.set_defaults(repeat=3)
    harness.main(p, {}, run)
