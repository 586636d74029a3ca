"""``fedrec certs``: a CA, the SuperLink's certificate, and the SuperNodes' authentication keys.

For a trial deployment or a closed network: a self-made CA signs a server certificate for the
SuperLink's addresses (127.0.0.1 and localhost unless told otherwise); SuperNodes trust the CA
(``--root-certificates ca.crt``). Node keys are ECDSA P-384 in OpenSSH format, as
``ssh-keygen -t ecdsa -b 384`` writes them, for ``flwr supernode register`` and
``flower-supernode --auth-supernode-private-key``. Private keys are written mode 0600. A real
deployment with a public address should use certificates from its own CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _refuse_overwrite(paths: Sequence[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exist; remove them or use another folder")


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_tls_files(
    folder: str | Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365
) -> dict[str, Path]:
    """``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` in ``folder`` (created)."""
    if days < 1 or not hosts:
        raise ValueError("certs: days >= 1 and at least one host expected")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / n for n in ("ca.crt", "ca.key", "server.pem", "server.key")}
    _refuse_overwrite(list(paths.values()))
    now = dt.datetime.now(dt.UTC)
    valid = {"not_valid_before": now - dt.timedelta(minutes=5)}
    valid["not_valid_after"] = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(pem))
    paths["server.pem"].write_bytes(server_cert.public_bytes(pem))
    for name, key in (("ca.key", ca_key), ("server.key", server_key)):
        _private(
            paths[name],
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
    return paths


def make_node_key(folder: str | Path, name: str) -> tuple[Path, Path]:
    """The key pair ``<name>`` / ``<name>.pub`` of one SuperNode, in ``folder``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"node key name {name!r}: a plain file name expected")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / name, folder / f"{name}.pub"
    _refuse_overwrite([private, public])
    key = ec.generate_private_key(ec.SECP384R1())
    _private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return private, public
