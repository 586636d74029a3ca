"""Interaction-membership attacks: from one user's item-side update, which items did they use?

An honest-but-curious server holds, for every participating user, the update that user
released (``item_embedding.weight`` [items × dim] and ``item_bias.weight`` [items × 1] deltas)
and the item table it sent. Each attack turns that into one score per item; a higher score
means "more likely in the user's training log". Attacks are registered by name
(:data:`ATTACKS`) so a config lists them.

Every feature here is a function of the *update* (the sent table only serves as a reference
direction). None looks at the sent table alone: item vectors and biases of a trained model
encode popularity, and a score built from them would "find" popular items in anyone's log
without the update saying anything, an advantage the DP bound does not speak to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedrec.model.spec import ITEM_BIAS, ITEM_EMBEDDING
from fedrec.registry import Registry


@dataclass
class ObservedUpdate:
    """What the server holds about one user in one round: the update and the table it sent."""

    update: dict[str, np.ndarray]
    sent: dict[str, np.ndarray]


@dataclass
class LabelledUpdate:
    """A shadow client's update with the truth the server knows, since it simulated it."""

    observed: ObservedUpdate
    members: np.ndarray  # bool [items]: the item is in the shadow user's training log


class MembershipAttack(Protocol):
    """Scores items by how likely the update's user interacted with them."""

    supervised: bool

    def fit(self, shadows: Sequence[LabelledUpdate]) -> None:
        """Learn from shadow clients (a no-op for unsupervised attacks)."""

    def scores(self, observed: ObservedUpdate) -> np.ndarray:
        """One score per item, [items]; higher: more likely a training item."""


ATTACKS: Registry[type] = Registry("membership attack")


def _rows(observed: ObservedUpdate) -> tuple[np.ndarray, np.ndarray]:
    delta = np.asarray(observed.update[ITEM_EMBEDDING], dtype=np.float64)
    bias = np.asarray(observed.update[ITEM_BIAS], dtype=np.float64).reshape(-1)
    return delta, bias


@ATTACKS.register("update_norm")
class UpdateNormAttack:
    """The simple attack: the L2 norm of each item's row of the update, bias included.

    Rows of items the user trained on move at every local step; rows of sampled negatives move
    only when drawn; all others not at all (without DP). Under DP-SGD every row gets the same
    Gaussian noise, which this score cannot tell from signal.
    """

    supervised = False

    def fit(self, shadows: Sequence[LabelledUpdate]) -> None:
        return None

    def scores(self, observed: ObservedUpdate) -> np.ndarray:
        delta, bias = _rows(observed)
        return np.sqrt(np.einsum("id,id->i", delta, delta) + bias**2)


def user_direction(delta: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """An estimate of the user's (never sent) embedding direction from the update alone.

    For a logistic MF step a positive row moves by ``+c·p_u`` and its bias up, a sampled
    negative's by ``−c'·p_u`` and its bias down; so ``Σ_i Δb_i · Δq_i`` points along ``p_u``.
    Returns a unit vector (zeros if the update is zero).
    """
    direction = bias @ delta
    norm = np.linalg.norm(direction)
    return direction / norm if norm > 0 else direction


def row_features(observed: ObservedUpdate) -> np.ndarray:
    """Per-item features [items × F], each standardized over the user's items.

    Columns: row norm (with bias), bias change, projection on the estimated user direction,
    cosine with it, change along the item's own sent vector, and its cosine. Standardizing
    within the user makes a classifier trained on shadow users transfer to users of other log
    sizes and to clipped (rescaled) updates.
    """
    delta, bias = _rows(observed)
    sent = np.asarray(observed.sent[ITEM_EMBEDDING], dtype=np.float64)
    row_norm = np.sqrt(np.einsum("id,id->i", delta, delta))
    full_norm = np.sqrt(row_norm**2 + bias**2)
    along_user = delta @ user_direction(delta, bias)
    sent_norm = np.linalg.norm(sent, axis=1)
    along_item = np.einsum("id,id->i", delta, sent) / np.maximum(sent_norm, 1e-12)
    safe = np.maximum(row_norm, 1e-12)
    columns = [
        full_norm,
        bias,
        along_user,
        along_user / safe,
        along_item,
        along_item / safe,
    ]
    features = np.stack(columns, axis=1)
    spread = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


@ATTACKS.register("user_direction")
class UserDirectionAttack:
    """Unsupervised: how far each row moved along the estimated user direction (plus the bias
    change). Positives move towards the user, negatives away, untouched rows not at all."""

    supervised = False

    def fit(self, shadows: Sequence[LabelledUpdate]) -> None:
        return None

    def scores(self, observed: ObservedUpdate) -> np.ndarray:
        features = row_features(observed)
        return features[:, 1] + features[:, 2]


@ATTACKS.register("shadow_classifier")
class ShadowClassifierAttack:
    """Logistic regression over :func:`row_features` (and their squares), trained on shadow
    clients: users the server simulates itself from data it holds (public or held-out users),
    with the same settings and against the same sent table, so it knows their true items.

    This is the shadow-model approach of Shokri et al. 2017 ("Membership inference attacks
    against machine learning models", IEEE S&P), applied per item row of one update.
    """

    supervised = True

    def __init__(self, l2: float = 1e-3, iterations: int = 25) -> None:
        self.l2, self.iterations = l2, iterations
        self.weights: np.ndarray | None = None

    @staticmethod
    def _design(observed: ObservedUpdate) -> np.ndarray:
        features = row_features(observed)
        return np.hstack([features, features**2, np.ones((len(features), 1))])

    def fit(self, shadows: Sequence[LabelledUpdate]) -> None:
        if not shadows:
            raise ValueError("the shadow classifier needs at least one shadow client")
        design = np.vstack([self._design(s.observed) for s in shadows])
        labels = np.concatenate([s.members.astype(np.float64) for s in shadows])
        self.weights = fit_logistic(design, labels, l2=self.l2, iterations=self.iterations)

    def scores(self, observed: ObservedUpdate) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("fit the shadow classifier before scoring")
        return self._design(observed) @ self.weights


def fit_logistic(
    design: np.ndarray, labels: np.ndarray, *, l2: float, iterations: int
) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (few features, many rows), with
    classes reweighted to equal total weight (a user's items are mostly non-members)."""
    positives = labels.sum()
    if positives == 0 or positives == len(labels):
        raise ValueError("shadow rows must hold both members and non-members")
    sample_weight = np.where(labels > 0, 0.5 / positives, 0.5 / (len(labels) - positives))
    weights = np.zeros(design.shape[1])
    penalty = l2 * np.eye(design.shape[1])
    for _ in range(iterations):
        predicted = 1 / (1 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (sample_weight * (predicted - labels)) + penalty @ weights
        curvature = (design * (sample_weight * predicted * (1 - predicted))[:, None]).T @ design
        step = np.linalg.solve(curvature + penalty, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return weights


def roc_auc(scores: np.ndarray, members: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``members`` (Mann–Whitney; ties count one half).
    NaN when either class is empty."""
    members = np.asarray(members, dtype=bool)
    positives, negatives = int(members.sum()), int((~members).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[members].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    ranks = np.empty(len(values))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks


def make_attack(name: str) -> MembershipAttack:
    """A fresh attack of the registered kind ``name``."""
    return ATTACKS.get(name)()
