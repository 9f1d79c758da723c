"""The peer layer: how nodes find, authenticate and talk to each other.

Owns the frame codec (``frames``), TLS with node-id pinning (``peertls``), one peer connection
(``connection``), signed peer records and dialable addresses (``records``), the peer table (``peertable``),
gossip (``gossip``) and the ``PeerManager`` that listens, dials, detects failures and serves blocks
(``peers``).

May import: ``cas.base``, ``cas.content``, ``cas.store``.
"""
