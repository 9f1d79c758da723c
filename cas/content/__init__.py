"""The content format: what a stored file is, independent of where its blocks live.

Owns the segment and metadata cipher (``cipher``), manifests and their canonical CBOR codec (``manifest``),
read and verify capabilities, the user's key (``capability``), and whole-file verification (``verify``).

May import: ``cas.base``. This ``__init__`` imports nothing: the CLI parses keys with ``capability``
and must not load Twisted or cryptography.
"""
