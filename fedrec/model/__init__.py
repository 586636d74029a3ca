"""The MF model, its training objective, the shared training step, and the centralized reference."""

from fedrec.model.centralized import fit_centralized
from fedrec.model.mf import ITEM_SIDE, USER_SIDE, MatrixFactorization, ModelSpec
from fedrec.model.objective import Objective
from fedrec.model.training import TrainSpec, make_optimizer, train_epoch

__all__ = [
    "ITEM_SIDE",
    "USER_SIDE",
    "MatrixFactorization",
    "ModelSpec",
    "Objective",
    "TrainSpec",
    "fit_centralized",
    "make_optimizer",
    "train_epoch",
]
