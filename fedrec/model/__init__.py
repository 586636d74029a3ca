"""The MF model, its training objective, the shared training step, and the centralized reference.

Names are imported lazily (:mod:`fedrec.lazy`): ``ModelSpec`` and the parameter-group names need
no torch.
"""

from fedrec.lazy import lazy_exports
from fedrec.model.spec import ITEM_SIDE, OPTIMIZER_NAMES, USER_SIDE, ModelSpec

__all__ = [
    "ITEM_SIDE",
    "OPTIMIZER_NAMES",
    "USER_SIDE",
    "MatrixFactorization",
    "ModelSpec",
    "Objective",
    "TrainSpec",
    "fit_centralized",
    "make_optimizer",
    "random_item_arrays",
    "train_epoch",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "MatrixFactorization": "fedrec.model.mf",
        "random_item_arrays": "fedrec.model.mf",
        "Objective": "fedrec.model.objective",
        "TrainSpec": "fedrec.model.training",
        "make_optimizer": "fedrec.model.training",
        "train_epoch": "fedrec.model.training",
        "fit_centralized": "fedrec.model.centralized",
    },
)
