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

    ``reg``/``unobserved_weight``/``reg_exponent``/``max_items``/``clip_norm``: the devices'
    :class:`AlsSpec`.
    ``frequent_fraction``: the share of items, by (private) count, the server trains; the rest
    are ranked by that count. ``gram_noise_scale`` / ``count_noise_scale``: DP-ALS's noise
    multiplier on the global Gram / on the one count release, relative to the per-item sums' (G
    sums every user, so a larger multiplier costs little accuracy). ``item_grams``: false
    replaces each item's Gram by ``n_j · G / N`` (no d×d noise per item). ``popularity_weight``:
    a trained item's bias is this × its (private) count share, so the ranking leans on
    popularity where the noisy factors say little. ``noise_shares``: 0, DP-ALS's noise is added
    by the server (central); in (0, 1], distributed DP on SecAgg+: each device adds a share
    sized so that this fraction of the round's devices (t = ⌈fraction · clients_per_round⌉)
    together add it all, and the server tops up what dropped shares miss
    (:mod:`fedrec.privacy.als`). ``covariance_start``: the first table comes from the users'
    item-item covariance (round 1 releases each user's items weighted 1/√k, which chooses the
    frequent items; round 2 each user's normalized co-occurrence over those; the server takes
    the top eigenvectors), a release of sensitivity 1 for a user's whole log instead of B items
    and a clipped factor (:mod:`fedrec.training.als.covariance`); later rounds are ALS rounds.
    """

    name: str = "mf"
    reg: float = 3.0
    unobserved_weight: float = 0.3
    reg_exponent: float = 0.0
    max_items: int = 0
    clip_norm: float = 0.0
    frequent_fraction: float = 1.0
    gram_noise_scale: float = 4.0
    count_noise_scale: float = 1.0
    item_grams: bool = True
    popularity_weight: float = 0.0
    noise_shares: float = 0.0
    covariance_start: bool = False

    def __post_init__(self) -> None:
        if self.name not in ALGORITHMS:
            raise ValueError(f"algorithm.name='{self.name}'; accepted: {', '.join(ALGORITHMS)}")
        self.als_spec()  # the device-side fields' own checks, at config time
        if not 0 < self.frequent_fraction <= 1:
            raise ValueError(
                f"algorithm.frequent_fraction={self.frequent_fraction}; expected (0, 1]"
            )
        if not 0 <= self.noise_shares <= 1:
            raise ValueError(
                f"algorithm.noise_shares={self.noise_shares}; expected 0 (the server adds the "
                "noise) or a share of the round's devices in (0, 1]"
            )
        if not isinstance(self.covariance_start, bool):
            raise ValueError(
                f"algorithm.covariance_start={self.covariance_start!r}; expected true or false"
            )
        if self.covariance_start and self.noise_shares:
            raise ValueError(
                "algorithm.covariance_start has no distributed mode: its two releases are "
                "not built for SecAgg+, which distributed DP needs (set noise_shares=0)"
            )
        for name in ("gram_noise_scale", "count_noise_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"algorithm.{name}={getattr(self, name)}; expected > 0")

    def als_spec(self) -> AlsSpec:
        return AlsSpec(
            reg=self.reg,
            unobserved_weight=self.unobserved_weight,
            reg_exponent=self.reg_exponent,
            max_items=self.max_items,
            clip_norm=self.clip_norm,
            item_grams=self.item_grams,
        )
