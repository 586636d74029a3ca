"""A real Flower deployment on 127.0.0.1: SuperLink, two SuperNodes, ``flwr run``.

TLS with certificates made here, SuperNode authentication with keys registered through the
Control API, and each SuperNode serving one user from its own SQLite store (one user consents,
one does not). Two nodes, one round: each message starts a fresh ``flwr-clientapp`` process that
imports torch and Opacus, which is most of the test's time. Every process started is stopped by
its PID, whatever happens.
"""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedrec.client import FedrecClient
from fedrec.loopback import BIN, Processes, free_port, loopback_env, wait_for_port

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 400  # the synthetic "small" preset the ServerApp's config names
DIM = 8
RUN_TIMEOUT_S = 240


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca, cert, key = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(_pem(server_key))
    return ca, cert, key


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` writes."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return private, public


def make_store(path: Path, *, consent: bool, first_item: int) -> list[tuple]:
    """A user with 12 interactions in three categories; returns their rows."""
    with FedrecClient.open(path, num_items=NUM_ITEMS) as client:
        for offset in range(12):
            category = ("view", "rating", "purchase")[offset % 3]
            client.record_interaction(
                first_item + offset,
                category=category,
                rating=4.0 if category == "rating" else None,
                timestamp=1_600_000_000 + offset,
            )
        if consent:
            client.grant_consent(["view", "rating", "purchase"])
        return [(r.item, r.rating, r.timestamp, r.category) for r in client.interactions()]


@pytest.mark.skipif(shutil.which("flower-superlink", path=str(BIN)) is None, reason="no flwr")
def test_deployment_with_tls_and_node_auth_trains_from_stores(tmp_path):
    home, logs, keys = tmp_path / "flwr_home", tmp_path / "logs", tmp_path / "keys"
    for folder in (home, logs, keys):
        folder.mkdir()
    ca, cert, key = make_tls_files(keys)
    port = free_port()
    env = loopback_env(home, port, root_certificates=ca)
    stores = {
        "alice": (tmp_path / "alice.sqlite", True, 0),
        "carol": (tmp_path / "carol.sqlite", False, 200),  # never opted in
    }
    rows_before = {
        name: make_store(path, consent=consent, first_item=first)
        for name, (path, consent, first) in stores.items()
    }
    run_dir = tmp_path / "run"
    processes = Processes(logs, env, REPO)
    try:
        superlink = processes.start(
            "superlink",
            "flower-superlink",
            "--disable-runtime-dependency-installation",
            "--enable-supernode-auth",
            "--ssl-ca-certfile",
            str(ca),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        wait_for_port(port, superlink)
        for name in stores:
            private, public = make_node_key(keys, name)
            registered = subprocess.run(
                [str(BIN / "flwr"), "supernode", "register", str(public), "loopback"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert registered.returncode == 0, registered.stdout + registered.stderr
        for name, (path, _, _) in stores.items():
            processes.start(
                f"supernode-{name}",
                "flower-supernode",
                "--superlink",
                f"127.0.0.1:{port}",
                "--root-certificates",
                str(ca),
                "--auth-supernode-private-key",
                str(keys / name),
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                f'store="{path}" holdout-latest=1',
            )
        overrides = (
            "privacy=record federation.num_clients=2 federation.clients_per_round=2 "
            f"federation.rounds=1 model.embedding_dim={DIM} federation.local.batch_size=4"
        )
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(REPO),
                "loopback",
                "--stream",
                "--run-config",
                f'overrides="{overrides}" run-dir="{run_dir}"',
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        metrics_file = run_dir / "metrics.csv"
        assert metrics_file.exists(), run.stdout[-4000:] + processes.tail()
    finally:
        processes.stop_all()
    rows = list(csv.DictReader(metrics_file.open()))
    trained = rows[-1]
    assert [row["server_round"] for row in rows] == ["0", "1"]
    # Alice trained; Carol declined (no consent): her metrics-only reply is counted as
    # declined, not as a rejected update, and the round goes on with Alice's update; only Alice
    # is evaluated.
    assert (trained["sampled"], trained["accepted"], trained["declined"]) == ("2", "1", "1")
    assert trained["rejected"] == "0"
    assert trained["failed"] == "0"
    assert float(trained["epsilon_max"]) > 0 and float(trained["train_loss"]) > 0
    assert [float(row["num_users"]) for row in rows] == [1.0, 1.0]
    assert 0 <= float(trained["ndcg@10"]) <= 1
    for name, (path, consent, _) in stores.items():
        with FedrecClient.open(path) as client:
            assert [
                (r.item, r.rating, r.timestamp, r.category) for r in client.interactions()
            ] == rows_before[name]
            sent = client.store.sent_rounds()
            if consent:
                assert [s.server_round for s in sent] == [1]
                assert {t.name: t.shape for t in sent[0].tensors} == {
                    "item_embedding.weight": (NUM_ITEMS, DIM),
                    "item_bias.weight": (NUM_ITEMS, 1),
                }
                assert client.privacy_report().epsilon == pytest.approx(
                    float(sent[0].metrics["epsilon"])
                )
            else:
                assert sent == [] and client.store.ledger() is None
