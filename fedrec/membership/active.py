"""An active (malicious) server: it crafts the item table it sends so the update gives away the
user's interactions.

In the style of RAIFLE (Pham, Kulkarni & Houmansadr, "RAIFLE: Reconstruction Attacks on
Interaction-based Federated Learning with Adversarial Data Manipulation", NDSS 2025,
arXiv 2310.19163), where the server manipulates the item features it sends so that the local
update reveals the user's interactions. Ours is the simplest manipulation
of that family for logistic MF: every item bias is set to a large negative value. Then every
score is ≈ −B, σ(score) ≈ 0, so a sampled negative (label 0) has a gradient of ≈ 0 and moves no
row at all, while every positive (label 1) gets the full gradient ``−p_u`` on its row. The
update's non-zero rows are then exactly the user's training items (with Adam, B must make
σ(−B) fall below Adam's ε = 1e-8, or its normalisation would inflate the tiny gradients).

DP-SGD's guarantee does not depend on the model a round starts from, so it holds against any
crafted table; the audit measures that (the in/out game under the crafted table). A device
can also refuse an implausible table: :mod:`fedrec.training.table_check`.
"""

from __future__ import annotations

import numpy as np

from fedrec.model.spec import ITEM_BIAS
from fedrec.registry import Registry

Update = dict[str, np.ndarray]
CRAFTED_TABLES: Registry = Registry("crafted table")


@CRAFTED_TABLES.register("bias_silencing")
def bias_silencing_table(sent: Update, *, bias: float = -30.0) -> Update:
    """The honest table with every item bias replaced by ``bias`` (see the module docstring)."""
    crafted = {name: np.array(value, copy=True) for name, value in sent.items()}
    crafted[ITEM_BIAS][:] = bias
    return crafted
