"""The base layer: the vocabulary every other layer shares.

Owns content ids (``cid``), node ids and their human form (``nodeid``), the node's Ed25519 identity
(``identity``), the user-facing exceptions (``errors``), raw buffers (``buffers``), the node-wide buffer
budget (``budget``) and the allocator tuning of a node process (``malloc``).

May import: nothing of cas but the ``cas`` package root (its version). Everything else may import it.
This ``__init__`` imports nothing, so the CLI can load single modules of it without Twisted.
"""
