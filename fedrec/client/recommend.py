"""Recommendations and their explanations, computed on the device from plain arrays.

Scores use the model's own formula (``<p_u, q_i> + b_i``, plus ``b_u + μ`` for ratings), so the
ranking a user sees is the one the federation trained. An explanation names the user's own
items whose item embeddings lie nearest (cosine similarity) to the recommended one: "because
you interacted with X and Y". Nothing here leaves the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.model.spec import GLOBAL_BIAS, ITEM_BIAS, ITEM_EMBEDDING, USER_BIAS, USER_EMBEDDING
from fedrec.protocol.settings import AlsSpec

ITEM_EMBEDDING, ITEM_BIAS = ITEM_EMBEDDING, ITEM_BIAS
USER_EMBEDDING, USER_BIAS, GLOBAL_BIAS = (
    USER_EMBEDDING,
    USER_BIAS,
    GLOBAL_BIAS,
)


@dataclass(frozen=True)
class Recommendation:
    item: int
    score: float


@dataclass(frozen=True)
class Explanation:
    """Why ``item`` was recommended: the user's own items nearest to it, most similar first.

    ``because`` holds ``(own item, cosine similarity in [-1, 1])`` pairs."""

    item: int
    because: tuple[tuple[int, float], ...]


def scores(
    item_table: dict[str, np.ndarray], user_arrays: dict[str, np.ndarray] | None
) -> np.ndarray:
    """The model's score for every item. Without a user embedding (the user never trained) the
    user vector is zero, so items rank by their bias: what the federation found popular."""
    embeddings = np.asarray(item_table[ITEM_EMBEDDING], dtype=np.float64)
    result = np.asarray(item_table[ITEM_BIAS], dtype=np.float64).reshape(-1).copy()
    if user_arrays is not None:
        result += embeddings @ np.asarray(user_arrays[USER_EMBEDDING], dtype=np.float64)[0]
        if USER_BIAS in user_arrays:
            result += float(np.asarray(user_arrays[USER_BIAS]).reshape(-1)[0])
    if GLOBAL_BIAS in item_table:
        result += float(np.asarray(item_table[GLOBAL_BIAS]).reshape(-1)[0])
    return result


def solve_own_factor(
    item_table: dict[str, np.ndarray], own_items: Sequence[int], spec: AlsSpec
) -> dict[str, np.ndarray]:
    """The user's factor solved in closed form from their own items against ``item_table``
    (the ALS user step, :func:`fedrec.training.als.solve.solve_users`): personal
    recommendations for a user who took part in no round, at once and on the device."""
    from fedrec.training.als.solve import solve_users

    items = np.unique(np.asarray(list(own_items), dtype=np.int64))
    factor = solve_users(
        item_table[ITEM_EMBEDDING],
        [items],
        reg=spec.reg,
        unobserved_weight=spec.unobserved_weight,
        reg_exponent=spec.reg_exponent,
    )[0]
    return {USER_EMBEDDING: factor.reshape(1, -1)}


def top_k(item_scores: np.ndarray, k: int, exclude: Sequence[int]) -> list[Recommendation]:
    """The ``k`` best-scored items not in ``exclude``; ties go to the lower item id."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k={k!r}; expected a positive integer")
    candidates = np.ones(len(item_scores), dtype=bool)
    candidates[np.asarray(list(exclude), dtype=np.int64)] = False
    ids = np.flatnonzero(candidates)
    order = ids[np.lexsort((ids, -item_scores[ids]))][:k]
    return [Recommendation(int(i), float(item_scores[i])) for i in order]


def nearest_own_items(
    item: int, own_items: Sequence[int], item_embeddings: np.ndarray, top: int
) -> Explanation:
    """The user's own items most similar to ``item`` by cosine similarity of item embeddings."""
    if top < 1:
        raise ValueError(f"top={top}; expected >= 1")
    own = np.asarray(sorted(set(own_items) - {item}), dtype=np.int64)
    if len(own) == 0:
        return Explanation(item, ())
    table = np.asarray(item_embeddings, dtype=np.float64)
    norms = np.linalg.norm(table[own], axis=1) * np.linalg.norm(table[item])
    similarity = (table[own] @ table[item]) / np.maximum(norms, 1e-12)
    order = np.lexsort((own, -similarity))[:top]
    return Explanation(item, tuple((int(own[i]), float(similarity[i])) for i in order))
