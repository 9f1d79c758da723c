"""The node and its pipelines: one node's storage service, below its HTTP and command-line faces.

Owns the node core (``core``: data dir, block store, index, worker pool, store/open/read/forget/collect),
the store pipeline (``upload``) and the read pipeline (``download``).

May import: every layer below it (``cas.base``, ``cas.content``, ``cas.store``, ``cas.peer``,
``cas.network``); never the app's face.
"""
