"""The local store: what a node keeps on its own disk.

Owns the verified block store (``blockstore``), the owner's SQLite index of files, keys and block
references (``index``), garbage collection (``collector``), the data dir's layout and format version
(``datadir``) and where a node keeps its data by default (``paths``).

May import: ``cas.base``, ``cas.content``.
"""
