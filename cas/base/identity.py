"""Node identity: one Ed25519 key per node and a long-lived self-signed certificate.

The node id is the BLAKE3-256 hash of the key's DER SubjectPublicKeyInfo: it pins the key, not the
certificate, so a certificate can be renewed without changing who the node is.
"""

from __future__ import annotations

import datetime
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cas.base import nodeid
from cas.base.cid import digest

CERT_VALIDITY = datetime.timedelta(days=3650)


def node_id_of(public_key: object) -> bytes:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return digest(spki)


def format_node_id(node_id: bytes) -> str:
    """The human form (base32 with check characters, in groups): see cas/base/nodeid.py."""
    return nodeid.format_node_id(node_id)


@attrs.frozen(repr=False)
class Identity:
    key: Ed25519PrivateKey
    certificate: x509.Certificate

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.key.public_key())

    def __str__(self) -> str:
        return format_node_id(self.node_id)

    def __repr__(self) -> str:
        return f"Identity({self})"


def write_private(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)  # the rename, durably
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def make_certificate(key: Ed25519PrivateKey, now: datetime.datetime | None = None) -> x509.Certificate:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, format_node_id(node_id_of(key.public_key())))])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + CERT_VALIDITY)
        .sign(key, None)
    )


def load_or_create(key_path: str, cert_path: str) -> Identity:
    """Load the node's key and certificate, creating them (0600) on first start. A missing or expired
    certificate is re-issued for the same key, so the node id never changes."""
    if os.path.exists(key_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{key_path} is not an Ed25519 key")
    else:
        key = Ed25519PrivateKey.generate()
        write_private(
            key_path,
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
    cert = None
    if os.path.exists(cert_path):
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        if node_id_of(cert.public_key()) != node_id_of(key.public_key()) or cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
            cert = None
    if cert is None:
        cert = make_certificate(key)
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Identity(key, cert)


