"""The embeddable client: a real SQLite file, the real trainer, a real Opacus engine.

Item table: 30 items × 8 dimensions, so each DP round takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedrec.client import (
    ConsentRequired,
    FedrecClient,
    LocalEvalSpec,
    LocalStore,
    LocalTrainingSpec,
    NothingToTrain,
    RoundSettings,
    StoreError,
    parse_export,
)
from fedrec.client import local_client as local_client_module
from fedrec.client.store import USER_ARRAYS
from fedrec.model.mf import MatrixFactorization, ModelSpec
from fedrec.privacy.dp_sgd import PrivacySpec

NUM_ITEMS, DIM = 30, 8
DAY = 24 * 3600.0


class Clock:
    """Unix seconds that a test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def item_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    return MatrixFactorization(1, NUM_ITEMS, DIM, generator=generator).item_state()


def settings(server_round: int = 1, *, weight_by_examples: bool = False) -> RoundSettings:
    return RoundSettings(
        model=ModelSpec(embedding_dim=DIM),
        training=LocalTrainingSpec(batch_size=4, lr=0.05),
        privacy=PrivacySpec(mode="record", noise_multiplier=1.0, max_grad_norm=1.0),
        evaluation=LocalEvalSpec(),
        explicit=False,
        seed=0,
        server_round=server_round,
        weight_by_examples=weight_by_examples,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(tmp_path, clock):
    """Items 0-5 viewed, 6-9 rated, 10-11 purchased; no consent yet."""
    with FedrecClient.open(tmp_path / "user.sqlite", num_items=NUM_ITEMS, clock=clock) as opened:
        for item in range(12):
            category = "view" if item < 6 else "rating" if item < 10 else "purchase"
            rating = 4.0 if category == "rating" else None
            opened.record_interaction(item, category=category, rating=rating, timestamp=1e9 + item)
        yield opened


def test_nothing_is_used_before_opt_in(client):
    with pytest.raises(ConsentRequired):
        client.train_round(item_arrays(), settings())
    with pytest.raises(ConsentRequired):
        client.evaluate(item_arrays(), settings())
    store = client.store
    assert store.sent_rounds() == [] and store.ledger() is None
    assert store.arrays(USER_ARRAYS) is None
    assert client.privacy_report().rounds == []
    assert "Nothing has left this device" in client.privacy_report().text()


def test_only_consented_categories_enter_training(client):
    client.grant_consent(["rating", "purchase"])
    update = client.train_round(item_arrays(), settings(weight_by_examples=True))
    assert update.metrics["num-examples"] == 6  # items 6-11; the six views stay out
    client.withdraw_consent(["purchase"])
    update = client.train_round(item_arrays(), settings(2, weight_by_examples=True))
    assert update.metrics["num-examples"] == 4


def test_consent_expires_and_can_be_renewed(client, clock):
    client.grant_consent(["view"], valid_for_s=30 * DAY)
    client.train_round(item_arrays(), settings(1))
    clock.now += 31 * DAY
    status = client.consent_status()
    assert not status.participating and "view" in status.expired
    with pytest.raises(ConsentRequired):
        client.train_round(item_arrays(), settings(2))
    client.renew_consent(valid_for_s=30 * DAY)
    assert client.consent_status().active == {"view": clock.now + 30 * DAY}
    client.train_round(item_arrays(), settings(2))
    assert [s.server_round for s in client.store.sent_rounds()] == [1, 2]


def test_withdrawal_stops_participation_at_once(client, monkeypatch):
    client.grant_consent(["view", "rating"])
    client.train_round(item_arrays(), settings(1))
    before = (client.store.arrays(USER_ARRAYS), client.store.ledger())

    # The user withdraws from another connection (the app's UI) while the round trains.
    real_trainer = local_client_module.train_one

    def trainer_then_withdrawal(*args, **kwargs):
        result = real_trainer(*args, **kwargs)
        with FedrecClient.open(client.store.path) as ui:
            ui.withdraw_consent()
        return result

    monkeypatch.setattr(local_client_module, "train_one", trainer_then_withdrawal)
    with pytest.raises(ConsentRequired, match="withdrawn during the round"):
        client.train_round(item_arrays(), settings(2))
    # Nothing of the discarded round was kept: embedding, ledger and sent-log are as before.
    assert [s.server_round for s in client.store.sent_rounds()] == [1]
    assert len(client.store.ledger().entries) == 1
    np.testing.assert_array_equal(
        client.store.arrays(USER_ARRAYS)["user_embedding.weight"],
        before[0]["user_embedding.weight"],
    )
    monkeypatch.undo()
    with pytest.raises(ConsentRequired):
        client.train_round(item_arrays(), settings(3))


def test_consent_without_matching_data_trains_nothing(tmp_path, clock):
    with FedrecClient.open(tmp_path / "u.sqlite", num_items=NUM_ITEMS, clock=clock) as client:
        client.record_interaction(3, category="view")
        client.grant_consent(["purchase"])
        with pytest.raises(NothingToTrain):
            client.train_round(item_arrays(), settings())


def test_bad_input_raises_a_clear_error_and_loses_nothing(client):
    bad_calls = [
        (lambda: client.record_interaction(1, category="like"), "unknown category 'like'"),
        (lambda: client.record_interaction(NUM_ITEMS, category="view"), "outside the catalog"),
        (lambda: client.record_interaction(-1, category="view"), "outside the catalog"),
        (lambda: client.record_interaction("7", category="view"), "integer item id"),
        (
            lambda: client.record_interaction(1, category="rating", rating=float("nan")),
            "finite",
        ),
        (lambda: client.grant_consent(["view", "likes"]), "unknown category 'likes'"),
        (lambda: client.recommend(-1, item_table=item_arrays()), "k=-1"),
        (lambda: client.recommend(0, item_table=item_arrays()), "k=0"),
        (lambda: client.explain(99, item_table=item_arrays()), "outside the catalog"),
    ]
    for call, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            call()
    assert len(client.interactions()) == 12
    assert client.store.consent_events() == []
    wrong_table = MatrixFactorization(1, NUM_ITEMS + 1, DIM).item_state()
    client.grant_consent(["view"])
    with pytest.raises(ValueError, match="catalog has 30 items"):
        client.train_round(wrong_table, settings())
    assert client.store.sent_rounds() == []


def test_damaged_or_foreign_files_are_refused_untouched(tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    future = tmp_path / "future.sqlite"
    LocalStore(future, num_items=NUM_ITEMS).close()
    with sqlite3.connect(future) as db:
        db.execute("PRAGMA user_version=99")
    for path, message in (
        (corrupt, "not a readable SQLite store"),
        (foreign, "not a fedrec store"),
        (future, "schema version 99; this fedrec reads version 1"),
    ):
        before = path.read_bytes()
        with pytest.raises(StoreError, match=message):
            FedrecClient.open(path)
        assert path.read_bytes() == before, path
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(StoreError, match="no store there"):
        FedrecClient.open(missing)
    assert not missing.exists()
    with pytest.raises(StoreError, match="catalog has 30 items, not 31"):
        LocalStore(future.with_name("ok.sqlite"), num_items=30).close()
        LocalStore(future.with_name("ok.sqlite"), num_items=31)


CRASHING_WRITER = """
import os, sys
from fedrec.client.store import LocalStore
store = LocalStore(sys.argv[1], num_items=30)
for item in range(3):
    store.add_interaction(item, "view", None, 1e9 + item)
with store.transaction() as db:
    db.executemany(
        "INSERT INTO interactions (item, rating, timestamp, category) VALUES (?, ?, ?, ?)",
        [(i % 30, None, 2e9, "view") for i in range(20000)],
    )
    os._exit(1)  # the process dies in the middle of the write
"""


def test_a_crash_mid_write_loses_nothing_committed(tmp_path):
    path = tmp_path / "crash.sqlite"
    done = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], capture_output=True)
    assert done.returncode == 1, done.stderr.decode()
    assert path.with_name("crash.sqlite-journal").exists()  # a half-done write was on disk
    with LocalStore(path) as store:
        assert [(row.item, row.timestamp) for row in store.interactions()] == [
            (0, 1e9),
            (1, 1e9 + 1),
            (2, 1e9 + 2),
        ]


def test_export_round_trips(client, clock, tmp_path):
    client.grant_consent(["view", "rating"], valid_for_s=10 * DAY)
    client.train_round(item_arrays(), settings(1))
    clock.now += DAY
    client.withdraw_consent(["rating"])
    client.train_round(item_arrays(), settings(2))
    exported = json.loads(client.export_json(tmp_path / "export.json").read_text())
    assert exported["format"] == "fedrec.client.export"
    record = parse_export(exported)
    store = client.store
    assert [(r.item, r.rating, r.timestamp, r.category) for r in record.interactions] == [
        (r.item, r.rating, r.timestamp, r.category) for r in store.interactions()
    ]
    assert record.consent_history == store.consent_events()
    assert [e.action for e in record.consent_history] == ["grant", "withdraw"]
    assert record.privacy_ledger == store.ledger()
    assert record.sent_rounds == store.sent_rounds()
    assert exported["consent"]["active"] == {"view": clock.now - DAY + 10 * DAY}
    embedding = exported["user_embedding"]["user_embedding.weight"]
    np.testing.assert_allclose(
        np.array(embedding["values"], dtype=np.float32),
        store.arrays(USER_ARRAYS)["user_embedding.weight"],
    )
    with pytest.raises(ValueError, match="not a fedrec.client.export version 1"):
        parse_export(exported | {"format_version": 2})


def test_delete_leaves_no_trace_in_the_file(tmp_path, clock):
    path = tmp_path / "erase.sqlite"
    rating, timestamp = 3.14159265358979, 1234567890.125
    with FedrecClient.open(path, num_items=NUM_ITEMS, clock=clock) as client:
        client.record_interaction(17, category="purchase", rating=rating, timestamp=timestamp)
        for item in range(5):
            client.record_interaction(item, category="purchase")
        client.grant_consent(["purchase"])
        client.train_round(item_arrays(), settings())
        embedding = client.store.arrays(USER_ARRAYS)["user_embedding.weight"].tobytes()
        traces = [struct.pack(">d", rating), struct.pack(">d", timestamp), embedding, b"purchase"]

        def file_bytes() -> bytes:
            return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("erase.sqlite*")))

        assert all(trace in file_bytes() for trace in traces)
        report = client.delete()
        assert report.removed == {
            "interactions": 6,
            "consent_events": 1,
            "user_embedding_arrays": 1,
            "privacy_ledger_entries": 1,
            "sent_rounds": 1,
        }
        assert "6 interactions" in report.text()
        assert [trace in file_bytes() for trace in traces] == [False] * 4
        assert client.export()["interactions"] == [] and client.store.ledger() is None
        with pytest.raises(ConsentRequired):
            client.train_round(item_arrays(), settings(2))
    with FedrecClient.open(path) as reopened:  # still a valid, empty store
        assert reopened.interactions() == [] and reopened.store.num_items == NUM_ITEMS


def test_privacy_report_matches_what_was_sent(client):
    client.grant_consent(["view", "rating", "purchase"])
    updates = [client.train_round(item_arrays(), settings(r)) for r in (1, 2)]
    report = client.privacy_report()
    assert report.modes == ["record"] and report.rounds == [1, 2]
    assert [(t.name, t.shape, t.dtype) for t in report.tensors] == [
        (name, value.shape, value.dtype.str)
        for name, value in sorted(updates[0].item_update.items())
    ]
    assert report.bytes_sent == sum(
        sum(v.nbytes for v in u.item_update.values()) + 8 * len(u.metrics) for u in updates
    )
    assert report.metrics == list(updates[0].metrics)
    assert report.epsilon == updates[-1].metrics["epsilon"]
    # ε of the whole history, recomputed by Opacus' own accountant from the steps taken.
    accountant = RDPAccountant()
    accountant.history = client.store.ledger().history()
    assert report.epsilon == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert (report.delta, report.accountant) == (1e-5, "rdp")
    data = report.as_dict()
    assert data["rounds_taken_part"] == 2
    assert data["tensors"][1] == {
        "name": "item_embedding.weight",
        "shape": [NUM_ITEMS, DIM],
        "dtype": "<f4",
        "bytes": NUM_ITEMS * DIM * 4,
    }
    text = report.text()
    assert "item_embedding.weight (30 × 8, float32)" in text
    assert f"ε = {report.epsilon:.3g} at δ = 1e-05" in text
    assert "user_embedding" not in json.dumps(data)


def test_recommend_and_explain_by_hand(tmp_path):
    """Six items on two axes; the user has seen items 0 and 3 and likes the x axis."""
    with FedrecClient.open(tmp_path / "empty.sqlite", num_items=6) as client:
        # no interaction and no round: nothing to solve from, items rank by their bias
        table0 = {
            "item_embedding.weight": np.eye(6, 2, dtype=np.float32),
            "item_bias.weight": np.arange(6, dtype=np.float32)[:, None],
        }
        assert [r.item for r in client.recommend(2, item_table=table0)] == [5, 4]
    table = {
        "item_embedding.weight": np.array(
            [[1, 0], [0.9, 0.1], [0.5, 0], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32
        ),
        "item_bias.weight": np.array([[0], [0], [0.3], [0], [0], [0]], dtype=np.float32),
    }
    with FedrecClient.open(tmp_path / "r.sqlite", num_items=6) as client:
        client.record_interaction(0, category="view")
        client.record_interaction(3, category="view")
        # Before any round (a cold start): the factor is solved in closed form from the user's
        # own items against this table, u = (V_ΩᵀV_Ω + α₀VᵀV + λI)⁻¹ V_Ωᵀ1 (λ = 3, α₀ = 0.3).
        items = np.asarray(table["item_embedding.weight"], np.float64)
        own = items[[0, 3]]
        u = np.linalg.solve(own.T @ own + 0.3 * items.T @ items + 3 * np.eye(2), own.sum(0))
        expected = items @ u + table["item_bias.weight"][:, 0]
        cold = client.recommend(2, item_table=table)
        assert [r.item for r in cold] == [2, 4]  # 2: 0.5·u₀ + 0.3; 4: leans on item 3's axis
        assert [r.score for r in cold] == pytest.approx(expected[[2, 4]])
        with client.store.transaction() as db:
            client.store.write_arrays(
                db, USER_ARRAYS, {"user_embedding.weight": np.array([[2.0, 0.0]], np.float32)}
            )
        recommended = client.recommend(3, item_table=table)
        # scores: 1 → 1.8, 2 → 1.0 + 0.3, 4 → 0.2, 5 → -2; items 0 and 3 are excluded.
        assert [r.item for r in recommended] == [1, 2, 4]
        assert [r.score for r in recommended] == pytest.approx([1.8, 1.3, 0.2])
        assert len(client.recommend(10, item_table=table)) == 4
        explanation = client.explain(1, top=2, item_table=table)
        cos_0 = 0.9 / np.hypot(0.9, 0.1)
        cos_3 = 0.1 / np.hypot(0.9, 0.1)
        assert [item for item, _ in explanation.because] == [0, 3]
        assert [score for _, score in explanation.because] == pytest.approx([cos_0, cos_3])


def test_recommendations_after_training_skip_seen_items(client):
    client.grant_consent(["view", "rating", "purchase"])
    client.train_round(item_arrays(), settings())
    recommended = client.recommend(5)  # the item table stored at the round
    assert len(recommended) == 5
    assert not {r.item for r in recommended} & set(range(12))
    assert [r.score for r in recommended] == sorted((r.score for r in recommended), reverse=True)
    because = client.explain(recommended[0].item).because
    assert len(because) == 3 and {item for item, _ in because} <= set(range(12))


def test_client_library_imports_no_server_ray_hydra_or_flower_simulation():
    code = (
        "import sys\n"
        "import fedrec.client, fedrec.client.local_client, fedrec.client.store\n"
        "import fedrec.client.consent, fedrec.client.rights, fedrec.client.recommend\n"
        "embedded = [m for m in sys.modules if m.split('.')[0] == 'flwr']\n"
        "import fedrec.flower.client_app\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'hydra', 'omegaconf')"
        " or m.startswith(('fedrec.federation.', 'fedrec.jobs', 'flwr.simulation'))]\n"
        "print(embedded, bad); sys.exit(1 if bad or embedded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_store_node_replies_without_an_update_until_the_user_consents(client, clock):
    from fedrec.client.device import evaluate_from_store, train_from_store
    from fedrec.protocol.settings import round_config

    clock.now = time.time()  # the node opens the store with the real clock

    node = {"store": str(client.store.path), "holdout-latest": 1}
    assert train_from_store(node, item_arrays(), round_config(settings())) == (
        None,
        {"num-examples": 0, "consent_missing": 1},
    )
    assert evaluate_from_store(node, item_arrays(), round_config(settings())) == {
        "num-examples": 1,
        "evaluated": 0,
    }
    client.grant_consent(["view"])
    update, metrics = train_from_store(node, item_arrays(), round_config(settings()))
    assert set(update) == {"item_embedding.weight", "item_bias.weight"}
    assert metrics["epsilon"] > 0 and metrics["num-examples"] == 1
    evaluation = evaluate_from_store(node, item_arrays(), round_config(settings()))
    assert evaluation["evaluated"] == 1 and 0 <= evaluation["hr@10"] <= 1
    budget = dataclasses.replace(settings(2), privacy=PrivacySpec(mode="record", target_epsilon=1))
    update, metrics = train_from_store(node, item_arrays(), round_config(budget))
    assert update is None and metrics["budget_exhausted"] == 1
    assert metrics["epsilon"] == client.privacy_report().epsilon
    assert [s.server_round for s in client.store.sent_rounds()] == [1]


def test_privacy_report_says_when_rounds_left_without_record_level_dp(client):
    client.grant_consent(["view"])
    no_dp = dataclasses.replace(settings(1), privacy=PrivacySpec(mode="none"))
    client.train_round(item_arrays(), no_dp)
    report = client.privacy_report()
    assert report.modes == ["none"] and report.epsilon == float("inf")
    assert "WITHOUT record-level differential privacy" in report.text()
    user_level = dataclasses.replace(settings(2), privacy=PrivacySpec(mode="user"))
    client.train_round(item_arrays(), user_level)
    report = client.privacy_report()
    assert report.modes == ["none", "user"] and report.user_level
    assert "not from the server" in report.text()
