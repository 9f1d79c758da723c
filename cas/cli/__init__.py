"""``cas``: the command line client of a node's HTTP API (docs/api.md, docs/cli.md).

It speaks HTTP with the standard library's ``http.client`` only and streams in 1 MiB chunks, so it runs in
constant, small memory whatever the file size. It must not import Twisted (checked by the tests): the
client is a short-lived process that should start fast and stay small.

Exit codes (docs/cli.md): 0 ok; 1 the operation failed; 2 usage, malformed key, refused file name or an
existing file; 3 not found; 4 the node is unreachable or refused the token; 130 interrupted.

The package, one concern a module, lowest first: ``exits`` (exit codes and the exceptions carrying them),
``output`` (what people see), ``files`` (local file names and the download sink), ``client`` (the HTTP client of
the API), ``commands``, ``parser`` (argument parsing) and ``program`` (``main`` and the console script's
``entry``). This ``__init__`` loads only ``program``, which the ``cas`` script names as ``cas.cli:entry``.
"""

from cas.cli.program import entry, main

__all__ = ["entry", "main"]
