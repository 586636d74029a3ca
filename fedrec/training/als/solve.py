"""The closed-form halves of implicit-feedback ALS (numpy only: devices, nodes and the server).

Loss (iALS with a "gravity" term, Rendle et al. 2022; the form DP-ALS uses, Chien et al. 2021)::

    Σ_{(i,j) observed} (1 − ⟨u_i, v_j⟩)² + α₀ Σ_{all i,j} ⟨u_i, v_j⟩² + λ (Σ‖u_i‖² + Σ‖v_j‖²)

With the items fixed each user's factor is a ridge regression on their own items only, plus the
d×d Gram matrix VᵀV of the whole table (the gravity term):
``u = (V_Ωᵀ V_Ω + α₀ VᵀV + λI)⁻¹ V_Ωᵀ 1``. A device computes it from its log and the received
table; it never leaves the device. With the users fixed each item's factor needs only sums over
the users who touched it, ``A_j = Σ u uᵀ`` and ``b_j = Σ u``, and the global ``G = Σ u uᵀ``:
``v_j = (A_j + α₀ G + λI)⁻¹ b_j``. Those sums are what devices send.

``reg_exponent`` ν > 0 scales each row's λ by its frequency, ``λ·(n + α₀·M)^ν`` (n: the user's
items or the item's users; M: all items or all users), Rendle et al.'s frequency-scaled
regularization ("Revisiting the Performance of iALS on Item Recommendation Benchmarks", RecSys
2022): a heavy user or a popular item is shrunk as much as its larger loss term warrants, so one
λ fits rows of every size. Chosen on ML-100K's validation split, ν = 1 scored 0.0754 NDCG@10 on
test (3 seeds) against 0.0738 with ν = 0; it does not carry across catalogue sizes with one reg
(docs/als.md, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SOLVE_CHUNK = 2048  # items (or users) solved per stacked np.linalg.solve call


def table_gram(item_embedding: np.ndarray) -> np.ndarray:
    """``VᵀV`` in float64."""
    table = np.asarray(item_embedding, dtype=np.float64)
    return table.T @ table


def ridge_penalties(
    reg: float, reg_exponent: float, counts: np.ndarray, unobserved_weight: float, others: int
) -> np.ndarray:
    """Each row's λ: ``reg·(n + α₀·others)^ν`` (``counts``: each row's n; noisy counts are
    clamped at 0), ``reg`` itself when ν = 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if reg_exponent == 0:
        return np.full(counts.shape, float(reg))
    weight = np.maximum(counts, 0) + unobserved_weight * others
    # a row with no weight at all (no items, α₀ = 0) keeps a positive penalty: its solve is the
    # zero factor either way, and the system stays invertible
    return reg * np.maximum(weight, 1.0) ** reg_exponent


def solve_users(
    item_embedding: np.ndarray,
    item_lists: Sequence[np.ndarray],
    *,
    reg: float,
    unobserved_weight: float,
    gram: np.ndarray | None = None,
    reg_exponent: float = 0.0,
) -> np.ndarray:
    """Each user's exact factor (rows in the order of ``item_lists``) against a fixed table.

    A user with no items gets the zero factor (the ridge solution of an empty log)."""
    table = np.asarray(item_embedding, dtype=np.float64)
    num_items, dim = table.shape
    base = unobserved_weight * (table_gram(table) if gram is None else gram)
    sizes = np.array([len(items) for items in item_lists])
    penalties = ridge_penalties(reg, reg_exponent, sizes, unobserved_weight, num_items)
    factors = np.zeros((len(item_lists), dim))
    for start in range(0, len(item_lists), SOLVE_CHUNK):
        chunk = item_lists[start : start + SOLVE_CHUNK]
        lhs = np.empty((len(chunk), dim, dim))
        rhs = np.empty((len(chunk), dim))
        for row, items in enumerate(chunk):
            observed = table[np.asarray(items, dtype=np.int64)]
            lhs[row] = observed.T @ observed + base + penalties[start + row] * np.eye(dim)
            rhs[row] = observed.sum(axis=0)
        factors[start : start + len(chunk)] = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    return factors


def solve_items(
    lhs: np.ndarray,
    rhs: np.ndarray,
    gram: np.ndarray,
    *,
    reg: float,
    unobserved_weight: float,
    rows: np.ndarray | None = None,
    reg_exponent: float = 0.0,
    counts: np.ndarray | None = None,
    num_users: int = 0,
) -> np.ndarray:
    """Every item's factor from the summed statistics (``lhs`` [n, d, d], ``rhs`` [n, d],
    ``gram`` [d, d]); items outside ``rows`` (a boolean mask; None: all) get a zero row.
    ``reg_exponent`` > 0 needs each item's user count ``counts`` and the users summed
    ``num_users``."""
    num_items, dim = rhs.shape
    if reg_exponent and counts is None:
        raise ValueError("reg_exponent > 0 scales each item's λ by its count: pass counts")
    base = unobserved_weight * np.asarray(gram, dtype=np.float64)
    penalties = ridge_penalties(
        reg,
        reg_exponent,
        np.zeros(num_items) if counts is None else counts,
        unobserved_weight,
        num_users,
    )
    table = np.zeros((num_items, dim))
    wanted = np.arange(num_items) if rows is None else np.flatnonzero(rows)
    for start in range(0, len(wanted), SOLVE_CHUNK):
        index = wanted[start : start + SOLVE_CHUNK]
        system = (
            np.asarray(lhs[index], dtype=np.float64)
            + base
            + penalties[index, None, None] * np.eye(dim)
        )
        table[index] = np.linalg.solve(system, np.asarray(rhs[index], np.float64)[..., None])[
            ..., 0
        ]
    return table


def symmetrize(matrices: np.ndarray) -> np.ndarray:
    """``(M + Mᵀ) / 2`` for one [d, d] matrix or a stack."""
    return (matrices + np.swapaxes(matrices, -1, -2)) / 2


def project_psd(matrices: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix to each of ``matrices`` (one [d, d] or a stack):
    symmetrise, then clip negative eigenvalues to 0. Post-processing of a noisy release."""
    values, vectors = np.linalg.eigh(symmetrize(matrices))
    return (vectors * np.maximum(values, 0)[..., None, :]) @ np.swapaxes(vectors, -1, -2)
