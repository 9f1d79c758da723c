"""The node's data directory: layout, first-start initialisation and the format-version check.

    format-version   "1"; a directory of another version is refused
    node.key         Ed25519 private key (0600)
    node.crt         self-signed certificate (0600)
    api.token        bearer token of the HTTP API (0600)
    index.sqlite     the owner's index: files, their keys, block references (0600)
    blocks/ tmp/ quarantine/   the block store
    api.url          written at every start: where the API listens
"""

from __future__ import annotations

import base64
import os
import secrets

import attrs

from cas.base.errors import DataDirError
from cas.base.identity import Identity, load_or_create, write_private

FORMAT_VERSION = 1


@attrs.frozen
class DataDir:
    path: str

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "path", os.path.abspath(self.path))

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def token_path(self) -> str:
        return self.join("api.token")

    def read_token(self) -> str:
        with open(self.token_path, encoding="ascii") as f:
            return f.read().strip()

    def identity(self) -> Identity:
        return load_or_create(self.join("node.key"), self.join("node.crt"))

    def write_public(self, name: str, text: str) -> None:
        tmp = self.join(name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.join(name))


def prepare(path: str) -> DataDir:
    """Create (0700) or open a data dir; raises DataDirError with a one-line message on any problem."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise DataDirError(f"cannot create data dir {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise DataDirError(f"data dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not writable")
    version_file = os.path.join(path, "format-version")
    try:
        if os.path.exists(version_file):
            with open(version_file, encoding="ascii", errors="replace") as f:
                text = f.read().strip()
            if text != str(FORMAT_VERSION):
                raise DataDirError(
                    f"data dir {path} has format version {text!r}; this cas understands version {FORMAT_VERSION} only"
                )
        else:
            if [n for n in os.listdir(path) if not n.startswith(".")]:
                raise DataDirError(f"{path} is not empty and is not a cas data dir (no format-version file)")
            with open(version_file, "w", encoding="ascii") as f:
                f.write(f"{FORMAT_VERSION}\n")
        d = DataDir(path)
        if not os.path.exists(d.token_path):
            write_private(d.token_path, (base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=") + b"\n"))
        d.identity()
        return d
    except DataDirError:
        raise
    except OSError as e:
        raise DataDirError(f"data dir {path}: {e.strerror} ({e.filename})") from None
