"""cas: a decentralized, encrypted, content-addressed storage network.

The layers, lowest first (``cas/test/layers.py`` declares the order and ``cas/test/test_layers.py`` enforces it):
``cas.base``, ``cas.content``, ``cas.store``, ``cas.peer``, ``cas.network``, ``cas.node``; on top, the app's
face in this package's top level: ``api`` (HTTP), ``cli`` (the ``cas`` command), ``service`` and ``tap``
(``twistd cas``). Imports only point down. This ``__init__`` imports nothing: the CLI must stay light.
"""

__version__ = "0.1.0"
