"""Network storage: which peers hold a file's blocks, and getting blocks to and from them.

Owns placement by rendezvous hashing (``placement``), replication of an upload's blocks to their holders
(``replication``) and retrieval of blocks this node lacks (``retrieval``). The peer layer is reached
through what the node injects, not imported for its internals.

May import: ``cas.base``, ``cas.content``, ``cas.store``, ``cas.peer``.
"""
