"""An app team's whole round with fedrec.client, from the docs alone.

``tests/test_docs.py`` runs this file, so it cannot rot. Run it yourself with
``python docs/examples/app_team.py``.
"""

import json
import tempfile
from pathlib import Path

from fedrec.client import (
    FedrecClient,
    LocalTrainingSpec,
    ModelSpec,
    PrivacySpec,
    RoundRefused,
    RoundSettings,
    initial_item_arrays,
    parse_round_config,
    round_config,
)

NUM_ITEMS = 500  # the app's catalog: item ids 0..499, the same on the server
DIM = 16

with tempfile.TemporaryDirectory() as home:
    store = Path(home) / "user.sqlite"

    # 1. The app creates the user's store once (num_items only on creation) and logs events.
    #    The context manager closes the SQLite file; call client.close() yourself otherwise.
    with FedrecClient.open(store, num_items=NUM_ITEMS) as client:
        for i, item in enumerate([3, 17, 42, 99, 120, 7, 8, 250, 251, 300]):
            client.record_interaction(item, category="view", timestamp=1_700_000_000 + i)
        client.record_interaction(42, category="purchase", timestamp=1_700_000_100)
        client.grant_consent(["view"])  # purchases stay on the device, unused

    # 2. The server's side of a round: the item table and the flat config it sends.
    #    A fresh table is N(0, init_std²) embeddings and zero biases (float32): the scale the
    #    device's own user embedding starts at, too.
    settings = RoundSettings(
        model=ModelSpec(embedding_dim=DIM, init_std=0.1),
        training=LocalTrainingSpec(epochs=1, batch_size=32, lr=0.05, optimizer="sgd"),
        privacy=PrivacySpec(
            mode="record", noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=8.0
        ),
        seed=-1,  # a deployment: every device draws fresh randomness
        server_round=1,
    )
    config = round_config(settings)  # {"training.lr": 0.05, ..., "server-round": 1}
    table = initial_item_arrays(NUM_ITEMS, DIM, init_std=0.1, seed=0)

    # 3. On the device: check the config, train, send only the item update and the metrics.
    with FedrecClient.open(store) as client:
        try:
            update = client.train_round(table, parse_round_config(config))
        except RoundRefused as refused:  # a bad config or a table that does not fit
            raise SystemExit(f"refused ({refused.reason.name}): {refused}") from None
        sent = {name: value.shape for name, value in update.item_update.items()}
        print("sends", sent, "metrics", update.metrics)

        # 4. On-device recommendations and their explanation (nothing leaves the device).
        recommendations = client.recommend(5, item_table=table)
        print("top 5", [r.item for r in recommendations])
        print("why", client.explain(recommendations[0].item, item_table=table))

        # 5. The user's rights: what was collected, what left, how much privacy was spent.
        report = client.privacy_report()
        print("privacy report", report)
        exported = client.export()
        print("export keys", sorted(exported))
        json.dumps(exported)  # the export is plain JSON
        print("deleted", client.delete())
