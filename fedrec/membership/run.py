"""One audit setting: a short in-process federation in one privacy mode at one budget, every
round's updates attacked from the server's seat.

The rounds are the one round loop (:func:`fedrec.federation.loop.run_rounds`) over the
in-process transport, with the one server rule. Per round the server sends the current item
table; every participant trains (per user the device's own computation) and releases its update;
the audit, in the server's seat,

- simulates its shadow clients on the same table and fits the supervised attacks on them;
- scores every participant's items with every attack (per-user ROC AUC);
- plays the in/out game (:mod:`fedrec.membership.game`) with a counterfactual round per user;

and the server rule applies FedAvg: ``items += server_lr · mean(updates)`` (user-level DP:
``server_lr ·`` the noisy mean of the clipped updates).

What the server sees in each mode (``view``): without DP and with record-level DP, each user's
update. With user-level DP (DP-FedAvg) each user's *clipped* update, before any noise: the
noise is added by the server to the sum, so an honest-but-curious server without secure
aggregation sees every clipped update, and user-level DP gives no protection against it. With
secure aggregation (``secure_aggregation=secaggplus`` in a simulation) it sees only the sum; the
``aggregate`` view scores each user's items against the one released noisy mean, which is what
a server behind SecAgg+ with the noise added to the sum would see.

In the last round the server also acts: it sends a crafted table (:mod:`fedrec.membership.active`)
to the participants instead, as a counterfactual of that round (so no budget is spent twice),
and the device-side plausibility check (:mod:`fedrec.training.table_check`) is run on every
honest table and on the crafted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from fedrec.federation.in_process import InProcessTransport
from fedrec.federation.loop import FederationPlan, run_rounds
from fedrec.federation.server_step import StrategySpec
from fedrec.membership.active import CRAFTED_TABLES
from fedrec.membership.attacks import LabelledUpdate, ObservedUpdate, make_attack, roc_auc
from fedrec.membership.bounds import auc_bound
from fedrec.membership.game import GameScores, drop_one_item
from fedrec.model.spec import ITEM_EMBEDDING
from fedrec.nodes.simulated import ACTIVE, ACTIVE_GAME, GAME, LocalRecipe, SimulatedClients, Update
from fedrec.privacy import PrivacySpec
from fedrec.privacy.user_level import UserLevelPlan, clip_update, plan_user_level
from fedrec.protocol.replies import NodeReply
from fedrec.protocol.settings import LocalTrainingSpec, RoundSettings
from fedrec.training.table_check import ImplausibleTable, check_item_table


@dataclass
class AuditFederationSpec:
    """The audited federation: ``num_clients`` users, all training every round; the server's
    ``shadow_clients`` are other users of the dataset (data the server holds itself)."""

    num_clients: int = 100
    shadow_clients: int = 50
    rounds: int = 5
    server_lr: float = 40.0
    local: LocalTrainingSpec = field(
        default_factory=lambda: LocalTrainingSpec(epochs=2, lr=0.01, optimizer="adam")
    )

    def __post_init__(self) -> None:
        if self.num_clients < 2 or self.shadow_clients < 1 or self.rounds < 1:
            raise ValueError(
                "audit federation: num_clients >= 2, shadow_clients >= 1 and rounds >= 1 expected"
            )
        if not self.server_lr > 0:
            raise ValueError(f"federation.server_lr={self.server_lr}; expected > 0")


@dataclass(frozen=True)
class AuditSetting:
    """A privacy mode (``none``, ``record``, ``user``) at a budget (``inf`` for ``none``)."""

    mode: str
    target_epsilon: float


def setting_privacy(setting: AuditSetting, base: PrivacySpec, rounds: int) -> PrivacySpec:
    """The devices' privacy spec for a setting: record-level solves σ per device for the budget
    over the run's rounds; user-level lets the server solve z for it."""
    if setting.mode == "none":
        return replace(base, mode="none", target_epsilon=None, solve_noise_multiplier=False)
    if setting.mode == "record":
        return replace(
            base,
            mode="record",
            target_epsilon=setting.target_epsilon,
            solve_noise_multiplier=True,
            planned_rounds=rounds,
        )
    if setting.mode == "user":
        return replace(
            base,
            mode="user",
            target_epsilon=None,
            solve_noise_multiplier=False,
            user_target_epsilon=setting.target_epsilon,
            solve_user_noise_multiplier=True,
        )
    raise ValueError(f"audit mode '{setting.mode}'; accepted: none, record, user")


@dataclass
class ViewTally:
    """Per-user AUCs and in/out game scores of every attack, for one view of the updates."""

    aucs: dict[str, list[float]] = field(default_factory=dict)
    games: dict[str, GameScores] = field(default_factory=dict)

    def add_auc(self, attack: str, value: float) -> None:
        if not math.isnan(value):
            self.aucs.setdefault(attack, []).append(value)

    def game(self, attack: str) -> GameScores:
        return self.games.setdefault(attack, GameScores())


@dataclass
class SettingOutcome:
    setting: AuditSetting
    views: dict[str, ViewTally]
    epsilon_spent: float
    bounds: dict[str, float]  # per view
    ndcg_at_10: float
    noise: str  # the noise each setting used, in words
    table_check: dict[str, str]


def run_setting(
    setting: AuditSetting,
    *,
    participants: SimulatedClients,
    shadows: SimulatedClients,
    initial_items: Update,
    recipe: LocalRecipe,
    federation: AuditFederationSpec,
    attacks: list[str],
    crafted_table: str | None,
    seed: int,
    log: Callable[[str], None] = print,
) -> SettingOutcome:
    """Run one setting's federation from ``initial_items`` and attack every round.

    The rounds are the one round loop over the in-process transport; the audit sits in the
    server's seat: before the devices train it runs the counterfactual rounds (from the same
    states), and after the server rule it attacks what the server saw."""
    privacy = recipe.privacy
    num_items = initial_items[ITEM_EMBEDDING].shape[0]
    user_plan: UserLevelPlan | None = None
    if privacy.user_level:
        user_plan = plan_user_level(
            privacy,
            num_clients=len(participants.keys),
            clients_per_round=len(participants.keys),
            rounds=federation.rounds,
        )
    rng = np.random.default_rng([seed, 7])
    noise_rng = np.random.default_rng([seed, 11])
    views: dict[str, ViewTally] = {"update": ViewTally()}
    if user_plan is not None:
        views["aggregate"] = ViewTally()
    table_check = {"honest_tables_refused": "0", "crafted_table": "not sent"}
    state = {"previous": None, "refused": 0, "out_updates": {}, "targets": {}}

    def before_train(server_round: int, sent: Update) -> None:
        """The counterfactuals of this round, from the states the devices start it from."""
        try:
            check_item_table(sent, previous=state["previous"])
        except ImplausibleTable:
            state["refused"] += 1
        game_datas, state["targets"] = drop_one_item(participants.datas, rng)
        state["out_updates"] = participants.train(
            sent,
            recipe,
            server_round=server_round,
            seed=seed,
            purpose=GAME,
            datas=game_datas,
            commit=False,
        )
        if server_round == federation.rounds and crafted_table is not None:
            views["active"] = _active_round(
                sent,
                participants,
                shadows,
                recipe,
                attacks,
                crafted_table,
                server_round,
                seed,
                rng,
                num_items,
            )
            try:
                check_item_table(CRAFTED_TABLES.get(crafted_table)(sent), previous=sent)
                table_check["crafted_table"] = "accepted"
            except ImplausibleTable as err:
                table_check["crafted_table"] = f"refused: {err}"

    def observe(server_round: int, sent: Update, replies: list[NodeReply], items: Update) -> None:
        """What the server saw this round, attacked."""
        updates = {r.node: r.arrays for r in replies if r.arrays is not None}
        if len(updates) != len(participants):
            raise RuntimeError(
                f"{len(participants) - len(updates)} simulated users did not train in round "
                f"{server_round}; the audit needs every update"
            )
        shadow_updates = shadows.train(sent, recipe, server_round=server_round, seed=seed)
        fitted = _fit_attacks(attacks, sent, shadows, shadow_updates, num_items)
        out_updates, targets = state["out_updates"], state["targets"]
        _score_view(
            views["update"], fitted, sent, participants, updates, out_updates, targets, num_items
        )
        if user_plan is not None:
            _score_aggregate(
                views["aggregate"],
                fitted,
                sent,
                participants,
                updates,
                out_updates,
                targets,
                rule.last_update,
                user_plan,
                noise_rng,
                num_items,
            )
        state["previous"] = sent
        best = {a: np.mean(v) for a, v in views["update"].aucs.items()}
        log(
            f"  round {server_round}: per-user AUC so far "
            + ", ".join(f"{a} {v:.3f}" for a, v in best.items())
        )

    plan = FederationPlan(
        settings=RoundSettings(
            model=recipe.model, training=recipe.training, privacy=privacy, seed=seed
        ),
        strategy=StrategySpec(name="fedavg", server_lr=federation.server_lr),
        rounds=federation.rounds,
        clients_per_round=len(participants),
        eval_clients_per_round=0,
        seed=seed,
        user_level=user_plan,
    )
    rule = plan.rule()
    transport = InProcessTransport(
        participants, states=participants.states, before_train=before_train
    )
    items = run_rounds(transport, plan, initial_items, observe=observe, rule=rule)
    table_check["honest_tables_refused"] = f"{state['refused']}/{federation.rounds}"
    epsilon, bounds, noise = _guarantee(setting, privacy, participants, user_plan)
    ndcg = participants.ndcg_at_10(items, recipe)
    return SettingOutcome(setting, views, epsilon, bounds, ndcg, noise, table_check)


def _fit_attacks(attacks, sent, shadows, shadow_updates, num_items) -> dict:
    labelled = [
        LabelledUpdate(ObservedUpdate(update, sent), shadows.members(key, num_items))
        for key, update in shadow_updates.items()
    ]
    fitted = {}
    for name in attacks:
        attack = make_attack(name)
        attack.fit(labelled)
        fitted[name] = attack
    return fitted


def _score_view(tally, fitted, sent, participants, updates, out_updates, targets, num_items):
    for key, update in updates.items():
        members = participants.members(key, num_items)
        for name, attack in fitted.items():
            scores = attack.scores(ObservedUpdate(update, sent))
            tally.add_auc(name, roc_auc(scores, members))
            if key in out_updates:
                outside = attack.scores(ObservedUpdate(out_updates[key], sent))
                tally.game(name).add(scores[targets[key]], outside[targets[key]])


def _score_aggregate(
    tally,
    fitted,
    sent,
    participants,
    updates,
    out_updates,
    targets,
    aggregate,
    plan,
    noise_rng,
    num_items,
):
    """The secure-aggregation view: only the noisy mean. The game swaps one user's clipped
    update for their counterfactual one inside a freshly noised sum."""
    total = {k: sum(u[k].astype(np.float64) for u in updates.values()) for k in sent}
    std = plan.noise_multiplier * plan.clip_norm
    for key, update in updates.items():
        members = participants.members(key, num_items)
        out_mean = None
        if key in out_updates:
            swapped = clip_update(out_updates[key], plan.clip_norm)
            out_mean = {
                k: (total[k] - update[k] + swapped[k] + noise_rng.normal(0, std, total[k].shape))
                / plan.expected_clients
                for k in sent
            }
        for name, attack in fitted.items():
            scores = attack.scores(ObservedUpdate(aggregate, sent))
            tally.add_auc(name, roc_auc(scores, members))
            if out_mean is not None:
                outside = attack.scores(ObservedUpdate(out_mean, sent))
                tally.game(name).add(scores[targets[key]], outside[targets[key]])


def _active_round(
    sent, participants, shadows, recipe, attacks, crafted_table, server_round, seed, rng, num_items
) -> ViewTally:
    """The last round again, as it would have gone had the server sent a crafted table."""
    crafted = CRAFTED_TABLES.get(crafted_table)(sent)
    tally = ViewTally()
    updates = participants.train(
        crafted, recipe, server_round=server_round, seed=seed, purpose=ACTIVE, commit=False
    )
    game_datas, targets = drop_one_item(participants.datas, rng)
    out_updates = participants.train(
        crafted,
        recipe,
        server_round=server_round,
        seed=seed,
        purpose=ACTIVE_GAME,
        datas=game_datas,
        commit=False,
    )
    shadow_updates = shadows.train(
        crafted, recipe, server_round=server_round, seed=seed, purpose=ACTIVE, commit=False
    )
    fitted = _fit_attacks(attacks, crafted, shadows, shadow_updates, num_items)
    _score_view(tally, fitted, crafted, participants, updates, out_updates, targets, num_items)
    return tally


def _guarantee(setting, privacy, participants, user_plan):
    """ε spent, the AUC bound per view, and the noise in words."""
    delta = privacy.delta
    if setting.mode == "record":
        spent = [s.ledger.entries[-1].epsilon for s in participants.states.values() if s.ledger]
        sigmas = [
            s.ledger.entries[-1].noise_multiplier for s in participants.states.values() if s.ledger
        ]
        epsilon = max(spent)
        bound = auc_bound(epsilon, delta)
        noise = f"σ per device {min(sigmas):.3g}–{max(sigmas):.3g} (C={privacy.max_grad_norm:g})"
        return epsilon, {"update": bound, "active": bound}, noise
    if setting.mode == "user":
        epsilon = user_plan.epsilon_after(user_plan.rounds)
        noise = f"z={user_plan.noise_multiplier:.3g} on the sum (C={user_plan.clip_norm:g})"
        # The server that sees each clipped update has no guarantee against it.
        return (
            epsilon,
            {"update": 1.0, "active": 1.0, "aggregate": auc_bound(epsilon, delta)},
            noise,
        )
    return math.inf, {"update": 1.0, "active": 1.0}, "none"
