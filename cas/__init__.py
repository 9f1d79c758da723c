"""cas: a decentralized, encrypted, content-addressed storage network."""

__version__ = "0.1.0"
