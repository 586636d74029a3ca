"""User-level DP at the server: Poisson client sampling, the noisy mean, the user-level accountant.

The mechanism and its calibration are in :mod:`fedrec.privacy.user_level`. This module puts it
into a Flower strategy as a mixin before :class:`~fedrec.server.strategy.ValidatedDeltaMixin`
(``class X(UserLevelDPMixin, ValidatedDeltaMixin, FedAvg)``): the validated mixin checks every
reply, and hands the accepted *deltas* to :meth:`aggregate_updates`, which this mixin replaces by
the DP-FedAvg release.

Why not Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping`` and
``fixedclipping_mod``:

- they clip ``reply - current``, i.e. they assume replies carry full weights; fedrec's devices
  send deltas, and the client mod's ``clipping_norm`` config key is refused by the device's strict
  round-config parser;
- they add ``z·C / num_sampled_clients`` noise *after* the wrapped strategy's aggregate. That is
  right for FedAvg with uniform weights and exactly ``num_sampled_clients`` replies, but FedAvg
  divides by the replies that arrived (a data-dependent denominator), ``server_lr`` scales the
  mean in fedrec, and after FedAdam/FedYogi the noise would land on an already-adapted step whose
  optimizer state saw the noiseless mean (not a post-processing of a Gaussian release);
- they skip the release when a reply failed or none arrived, which is itself visible;
- they sample a fixed number of clients and their accountant needs ``no-amplification``, so
  there is no subsampling amplification; Opacus' accountants analyse Poisson sampling.

Here the noisy mean of the clipped deltas is computed first and handed to the base strategy as
the one update of the round, so FedAvg (``current + server_lr · mean``) and FedAdam/FedYogi
(pseudo-gradient = mean) only post-process it.

On the cohort engine (``plan.sampling == "cohort"``) every node is asked every round, the
nodes Poisson-sample their users themselves, and each reply is a node's *sum* of per-user
clipped updates (``users_summed``). The server adds those sums unclipped (a sum of k users may
legitimately have norm up to k·C; clipping it to C would shrink every user in it) and releases
through the same :func:`noisy_mean_of_sum` as the per-user path. A reply that is not such a sum,
or whose norm exceeds its count · C, is rejected: its users count as zero, as a failed device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fedrec.client.messages import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES, USERS_SUMMED
from fedrec.privacy.user_level import UserLevelPlan, clipped_sum, noisy_mean_of_sum, update_norm

logger = logging.getLogger("fedrec.server")

_NOISE_STREAM = 0x55534552  # separates the server's noise stream from other uses of the seed


def server_noise_rng(seed: int) -> np.random.Generator:
    """The generator for client sampling and noise: seeded for reproducible simulations
    (``seed < 0``: fresh OS entropy). numpy's generator is not a cryptographic one; a deployment
    that needs that must use ``seed < 0`` at the very least."""
    if seed < 0:
        return np.random.default_rng()
    return np.random.default_rng(np.random.SeedSequence([seed, _NOISE_STREAM]))


class UserLevelDPMixin:
    """DP-FedAvg on top of the validated delta strategy; reports user-level ε per round."""

    def __init__(
        self,
        *args,
        user_level: UserLevelPlan,
        num_clients: int,
        rng: np.random.Generator,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.user_level = user_level
        self.num_clients = num_clients
        self.rng = rng
        self.releases = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Poisson sampling at rate q: a Binomial(N, q) count, then Flower's uniform sampler
        (FedAvg samples max(⌊N·fraction_train⌋, min_train_nodes) nodes without replacement).
        The count may be 0; the round still releases noise. On the cohort engine every node is
        asked (``num_clients`` are then the nodes) and the nodes sample the users."""
        if self.user_level.sampling == "cohort":
            return super().configure_train(server_round, arrays, config, grid)
        count = int(self.rng.binomial(self.num_clients, self.user_level.sample_rate))
        self.fraction_train = count / self.num_clients
        self.min_train_nodes = count
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_updates(self, server_round: int, accepted: list[Message]):
        """The noisy mean of the clipped deltas, handed on as the round's single update.

        ε is computed before anything is released: if the accountant fails, this raises and
        the model is not updated (fail closed).
        """
        plan = self.user_level
        epsilon = plan.epsilon_after(self.releases + 1)
        arrays = [
            {name: array.numpy() for name, array in reply.content[ARRAYS_KEY].items()}
            for reply in accepted
        ]
        if plan.sampling == "cohort":
            total, users = self._sum_of_node_sums(server_round, accepted, arrays)
        else:
            total = clipped_sum(arrays, like=self.global_arrays, clip_norm=plan.clip_norm)
            users = len(arrays)
        mean = noisy_mean_of_sum(
            total,
            like=self.global_arrays,
            clip_norm=plan.clip_norm,
            noise_multiplier=plan.noise_multiplier,
            expected_clients=plan.expected_clients,
            rng=self.rng,
        )
        self.releases += 1
        self.record.user_level_epsilon = epsilon
        logger.info(
            "round %d: user-level DP release of %d clipped updates / %d, noise std %.4g on the "
            "sum; user-level ε %.4g (δ=%g)",
            server_round,
            users,
            plan.expected_clients,
            plan.noise_multiplier * plan.clip_norm,
            epsilon,
            plan.delta,
        )
        release = Message(
            content=RecordDict(
                {
                    ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in mean.items()}),
                    METRICS_KEY: MetricRecord({NUM_EXAMPLES: 1}),
                }
            ),
            dst_node_id=0,
            message_type=MessageType.TRAIN,
        )
        return super().aggregate_updates(server_round, [release])

    def _sum_of_node_sums(
        self, server_round: int, accepted: list[Message], arrays: list[dict[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], int]:
        """Σ over cohort nodes of their sums of per-user clipped updates, and the users in it.

        Never clipped: each user in a node's sum was clipped on the node. A reply that claims
        no count, or whose norm exceeds count · C (impossible for an honest node, by the triangle
        inequality), is dropped and its users counted as rejected."""
        clip_norm = self.user_level.clip_norm
        total = {
            name: np.zeros(v.shape, dtype=np.float64) for name, v in self.global_arrays.items()
        }
        users = 0
        for reply, update in zip(accepted, arrays, strict=True):
            count = int(reply.content[METRICS_KEY].get(USERS_SUMMED, 0))
            norm = update_norm(update)
            if count < 1 or norm > count * clip_norm * (1 + 1e-5):
                self.record.rejected += max(count, 1)
                self.record.accepted -= count
                logger.warning(
                    "round %d: rejected node %d's reply: norm %.4g for %d summed users (C=%g)",
                    server_round,
                    reply.metadata.src_node_id,
                    norm,
                    count,
                    clip_norm,
                )
                continue
            for name in total:
                total[name] += update[name]
            users += count
        return total, users
