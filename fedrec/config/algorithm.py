"""The ``algorithm`` config group: which federated algorithm a run trains.

``mf`` (the default) is DP-SGD matrix factorization: devices train with Opacus and send item-table
updates. ``als`` is federated implicit ALS (:mod:`fedrec.training.als`): devices solve their own
factor exactly and send sufficient statistics the server solves the item table from; with
``privacy=user`` it is DP-ALS (:mod:`fedrec.privacy.als`, noise on the aggregate, accounted at
user level).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.protocol.settings import ALGORITHMS, AlsSpec


@dataclass
class AlgorithmSpec:
    """Mirrors ``configs/algorithm/*.yaml``. The ALS fields are ignored by ``mf``.

    ``reg``/``unobserved_weight``/``max_items``/``clip_norm``: the devices' :class:`AlsSpec`.
    ``frequent_fraction``: the share of items, by (private) count, the server trains; the rest
    are ranked by that count. ``gram_noise_scale``: DP-ALS's noise on the global Gram relative to
    the per-item sums' (it sums every user, so a larger multiplier costs little accuracy).
    """

    name: str = "mf"
    reg: float = 3.0
    unobserved_weight: float = 0.3
    max_items: int = 0
    clip_norm: float = 0.0
    frequent_fraction: float = 1.0
    gram_noise_scale: float = 4.0
    item_grams: bool = True
    popularity_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ALGORITHMS:
            raise ValueError(f"algorithm.name='{self.name}'; accepted: {', '.join(ALGORITHMS)}")
        self.als_spec()  # the device-side fields' own checks, at config time
        if not 0 < self.frequent_fraction <= 1:
            raise ValueError(
                f"algorithm.frequent_fraction={self.frequent_fraction}; expected (0, 1]"
            )
        if not self.gram_noise_scale > 0:
            raise ValueError(f"algorithm.gram_noise_scale={self.gram_noise_scale}; expected > 0")

    def als_spec(self) -> AlsSpec:
        return AlsSpec(
            reg=self.reg,
            unobserved_weight=self.unobserved_weight,
            max_items=self.max_items,
            clip_norm=self.clip_norm,
        )
