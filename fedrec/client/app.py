"""The Flower ClientApp: a thin adapter from Messages to the on-device trainer."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.data_source import UserDataSource
from fedrec.client.device_state import load_device_state, store_device_state
from fedrec.client.messages import (
    ARRAYS_KEY,
    BUDGET_EXHAUSTED,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    parse_round_config,
    user_seed,
)
from fedrec.client.trainer import evaluate_user, train_round
from fedrec.privacy.ledger import PrivacyBudgetExhausted

TRAIN_SEED, EVAL_SEED = 1, 2


def _request(msg: Message):
    settings = parse_round_config(dict(msg.content[CONFIG_KEY]))
    arrays = {name: array.numpy() for name, array in msg.content[ARRAYS_KEY].items()}
    return settings, arrays


def build_client_app(source: UserDataSource, mods: Sequence = ()) -> ClientApp:
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings, arrays = _request(msg)
        user_key, data = source.local_data(dict(context.node_config), dict(context.run_config))
        state = load_device_state(context.state)
        try:
            result = train_round(
                arrays,
                data,
                state,
                model_spec=settings.model,
                training=settings.training,
                privacy=settings.privacy,
                explicit=settings.explicit,
                seed=user_seed(settings, user_key, TRAIN_SEED),
                server_round=settings.server_round,
            )
        except PrivacyBudgetExhausted:
            # The user sits this round out and says so; nothing trained, nothing to send.
            spent = state.ledger.epsilon if state.ledger else 0.0
            metrics = {NUM_EXAMPLES: 0, BUDGET_EXHAUSTED: 1, "epsilon": spent}
            return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)
        # The state (user embedding, ledger) is saved before the update leaves: a device that
        # drops after this point has still recorded the privacy it spent.
        store_device_state(context.state, result.state)
        weight = len(data.train_items) if settings.weight_by_examples else 1
        metrics = {
            NUM_EXAMPLES: weight,
            "train_loss": result.loss,
            "epsilon": result.epsilon,
            "local_steps": result.steps,
        }
        content = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in result.item_update.items()}),
                METRICS_KEY: MetricRecord(metrics),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        settings, arrays = _request(msg)
        user_key, data = source.local_data(dict(context.node_config), dict(context.run_config))
        metrics: dict[str, float] = {NUM_EXAMPLES: 1, "evaluated": 0}
        if len(data.test_items):
            metrics |= evaluate_user(
                arrays,
                data,
                load_device_state(context.state),
                model_spec=settings.model,
                eval_spec=settings.evaluation,
                explicit=settings.explicit,
                num_negatives=settings.training.num_negatives,
                seed=user_seed(settings, user_key, EVAL_SEED),
            )
            metrics["evaluated"] = 1
        return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)

    return app
