"""Adapters to the peer libraries (Surprise, implicit) that the benchmarks compare against.

The peers are benchmark-only dependencies (``pip install -e .[bench]``): they are imported
lazily inside each function so this module, and anything that merely imports it, works
without them. Ids are dense ints passed straight through, so row ``u`` / column ``i`` of
every output lines up with fedrec's own user ``u`` / item ``i``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# Surprise's documented SVD defaults, spelled out so benchmark reports can cite them.
SURPRISE_SVD_DEFAULTS: dict[str, Any] = {
    "n_factors": 100,
    "n_epochs": 20,
    "lr_all": 0.005,
    "reg_all": 0.02,
}

# Chosen by benchmarks/tune_peers.py on ML-100K implicit feedback: small grid, selected by
# full-ranking NDCG@10 on a validation item (each user's latest *training* interaction),
# never on the test item. ALS's alpha is implicit's confidence scale: an observed pair gets
# confidence alpha * 1 (implicit's convention, not Hu et al.'s 1 + alpha * r), so alpha=1
# weights positives like the zeros, i.e. plain least squares on the binary matrix; that won
# the grid. The top of both grids is flat to within validation noise (about +-0.005 NDCG).
IMPLICIT_TUNED: dict[str, dict[str, Any]] = {
    "bpr": {"factors": 64, "learning_rate": 0.01, "regularization": 0.001, "iterations": 50},
    "als": {"factors": 32, "regularization": 1.0, "alpha": 1.0, "iterations": 15},
}

_BENCH_HINT = "it is a benchmark-only dependency: pip install -e .[bench]"
_RATING_SCALE = (1.0, 5.0)


def surprise_svd_predict(
    train_users: np.ndarray,
    train_items: np.ndarray,
    train_ratings: np.ndarray,
    test_users: np.ndarray,
    test_items: np.ndarray,
    *,
    seed: int,
    **params: Any,
) -> np.ndarray:
    """Fit Surprise's SVD on the train triples (dense int ids, float ratings 1-5) and return
    predictions for the test pairs (float array, same order).

    Goes through ``algo.predict`` rather than the raw factors so Surprise's own handling of
    unseen users/items (fallback to the global mean plus known biases) and its clipping to
    the 1-5 scale are what gets measured. ``params`` override ``SURPRISE_SVD_DEFAULTS``.
    """
    try:
        from surprise import SVD, Dataset, Reader
    except ImportError as exc:
        raise ImportError(f"scikit-surprise is not installed; {_BENCH_HINT}") from exc

    if "random_state" in params:
        raise ValueError("pass the seed as seed=, not random_state=")
    tu, ti, tr = (np.asarray(a).ravel() for a in (train_users, train_items, train_ratings))
    qu, qi = (np.asarray(a).ravel() for a in (test_users, test_items))
    if not len(tu) == len(ti) == len(tr):
        raise ValueError("train_users, train_items and train_ratings must have equal length")
    if len(qu) != len(qi):
        raise ValueError("test_users and test_items must have equal length")

    # Build the Trainset straight from the triples: no pandas, no temp file. Raw ids are
    # Python ints so predict() below looks them up with the same keys.
    raw = [
        (int(u), int(i), float(r), None)
        for u, i, r in zip(tu.tolist(), ti.tolist(), tr.tolist(), strict=True)
    ]
    trainset = Dataset(Reader(rating_scale=_RATING_SCALE)).construct_trainset(raw)
    algo = SVD(**{**SURPRISE_SVD_DEFAULTS, **params}, random_state=seed)
    algo.fit(trainset)
    preds = [algo.predict(u, i).est for u, i in zip(qu.tolist(), qi.tolist(), strict=True)]
    return np.asarray(preds, dtype=np.float64)


def implicit_scores(
    algorithm: str,
    train_users: np.ndarray,
    train_items: np.ndarray,
    num_users: int,
    num_items: int,
    *,
    seed: int,
    **params: Any,
) -> np.ndarray:
    """Fit implicit's 'bpr' or 'als' on binary user-item positives and return a dense
    float32 score matrix [num_users, num_items] (user factors @ item factors.T).

    Uses the CPU classes directly so a CUDA build of implicit cannot silently switch
    device. ``params`` override ``IMPLICIT_TUNED[algorithm]``; ``num_threads`` (default 1)
    sets implicit's OpenMP threads. One thread is the default because BPR's Hogwild SGD is
    only reproducible for a given seed with a single thread and gains nothing from a second
    core at ML-100K scale; ALS is deterministic at any thread count. OpenBLAS is pinned to
    one thread during the fit, as implicit itself recommends. BPR's stored factors carry
    the item bias (a column of ones in user_factors, the bias in item_factors), so the plain
    dot product is already the model's score.
    """
    try:
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise ImportError(f"implicit is not installed; {_BENCH_HINT}") from exc

    if algorithm not in IMPLICIT_TUNED:
        raise ValueError(f"algorithm must be one of {sorted(IMPLICIT_TUNED)}, got {algorithm!r}")
    if "random_state" in params:
        raise ValueError("pass the seed as seed=, not random_state=")
    users = np.asarray(train_users, dtype=np.int64).ravel()
    items = np.asarray(train_items, dtype=np.int64).ravel()
    if len(users) != len(items):
        raise ValueError("train_users and train_items must have equal length")
    if len(users) and (users.min() < 0 or users.max() >= num_users):
        raise ValueError("train_users must lie in [0, num_users)")
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise ValueError("train_items must lie in [0, num_items)")

    # users x items (implicit >= 0.5); csr_matrix, not csr_array, which implicit would
    # convert with a warning. Repeated pairs collapse to a single positive.
    user_items = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(num_users, num_items)
    )
    user_items.sum_duplicates()
    user_items.data[:] = 1.0
    user_items.sort_indices()

    kwargs = {**IMPLICIT_TUNED[algorithm], **params}
    num_threads = int(kwargs.pop("num_threads", 1)) or (os.cpu_count() or 1)
    model_cls = BayesianPersonalizedRanking if algorithm == "bpr" else AlternatingLeastSquares
    # The limit must be entered after the imports above: threadpoolctl only caps the BLAS
    # libraries already loaded, and implicit's import loads scipy's.
    with threadpool_limits(limits=1, user_api="blas"):
        model = model_cls(**kwargs, num_threads=num_threads, random_state=seed)
        model.fit(user_items, show_progress=False)
        user_factors = _to_numpy(model.user_factors)
        item_factors = _to_numpy(model.item_factors)
        scores = user_factors @ item_factors.T
    return np.ascontiguousarray(scores, dtype=np.float32)


def _to_numpy(factors: Any) -> np.ndarray:
    """Return factors as a host ndarray; implicit's GPU models hold their own Matrix type."""
    if hasattr(factors, "to_numpy"):
        factors = factors.to_numpy()
    return np.asarray(factors)
