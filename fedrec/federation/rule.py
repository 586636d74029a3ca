"""The server rule: what the server does with a round's replies. One rule serves every runner.

validate → classify → combine → step:

1. **validate** each released update (:func:`~fedrec.federation.validation.rejection_reason`):
   the names, shapes and dtypes that were sent, finite values, a sane weight; a norm bound on a
   single user's update (``strategy.max_update_norm``); under user-level DP a node's sum of
   clipped updates may not exceed count · C. A rejected reply's trained users count as rejected.
2. **classify** every user the round asked for (:class:`~fedrec.federation.record.RoundRecord`):
   trained and accepted, declined, refused (with the devices' reason codes in the log), out of
   budget, failed, rejected, timed out; and keep each user's reported ε
   (:class:`~fedrec.federation.privacy_tally.PrivacyTally`).
3. **combine** the accepted updates into one: their weighted mean; a robust rule
   (``defense``, over single users' updates, :mod:`fedrec.federation.defenses`); or, with
   user-level DP, DP-FedAvg's noisy mean of the clipped updates over the fixed expected number of
   users (:mod:`fedrec.privacy.user_level`), released every round, however few took part.
4. **step**: the server optimizer moves the table (:mod:`fedrec.federation.server_step`).

A round with fewer than ``min_replies`` accepted users is skipped (model unchanged), except under
user-level DP: whether a round is released must not depend on who was sampled.

Why not Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping``: they clip
``reply − current`` (fedrec's replies are deltas), add noise after the wrapped strategy's
aggregate (which divides by the replies that arrived, a data-dependent denominator, and has
already fed FedAdam's moments the noiseless mean), skip the release when a reply failed, and
their accountant allows no sampling amplification.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fedrec.federation.defenses import DefenseSpec, aggregate
from fedrec.federation.privacy_tally import PrivacyTally
from fedrec.federation.record import RoundRecord
from fedrec.federation.server_step import SERVER_STEPS, StrategySpec
from fedrec.federation.validation import expected_arrays, rejection_reason
from fedrec.privacy.user_level import UserLevelPlan, clip_update, noisy_mean_of_sum, update_norm
from fedrec.protocol.replies import NodeReply
from fedrec.protocol.wire import RefusalReason

logger = logging.getLogger("fedrec.server")

Arrays = dict[str, np.ndarray]
_NOISE_STREAM = 0x55534552  # separates the server's noise stream from other uses of the seed


def server_noise_rng(seed: int) -> np.random.Generator:
    """The generator of the server's DP noise: seeded for reproducible simulations (``seed < 0``:
    fresh OS entropy). numpy's generator is not a cryptographic one; a deployment that needs
    that must use ``seed < 0`` at the very least."""
    if seed < 0:
        return np.random.default_rng()
    return np.random.default_rng(np.random.SeedSequence([seed, _NOISE_STREAM]))


class ServerRule:
    """validate → classify → combine → step, for one run (it keeps the optimizer's moments,
    the DP noise generator and its release count, and the ε tally)."""

    def __init__(
        self,
        strategy: StrategySpec,
        *,
        rounds: int,
        user_level: UserLevelPlan | None = None,
        defense: DefenseSpec | None = None,
        min_replies: int = 1,
        seed: int = 0,
    ) -> None:
        self.defense = defense if defense is not None and defense.name != "none" else None
        if user_level is not None and self.defense is not None:
            raise ValueError(
                f"defense={self.defense.name} cannot be combined with user-level DP: the "
                "server's noise is calibrated to the mean of clipped updates; use defense=none"
            )
        self.step = SERVER_STEPS.get(strategy.name)(strategy, rounds)
        self.max_update_norm = strategy.max_update_norm
        self.user_level = user_level
        self.min_replies = 0 if user_level is not None else min_replies
        self.rng = server_noise_rng(seed)
        self.releases = 0
        self.tally = PrivacyTally()
        self.last_update: Arrays | None = None  # the combined update of the last round applied

    def round_config(self, server_round: int, config: dict) -> dict:
        """The round config the devices receive, with what this rule decides per round (none
        here; DP-ALS says whether the round releases item counts)."""
        return config

    def apply(
        self,
        server_round: int,
        current: Arrays,
        replies: Sequence[NodeReply],
        record: RoundRecord,
    ) -> Arrays | None:
        """The table after this round, or None when the round is skipped; fills ``record``."""
        accepted = self._validate_and_classify(server_round, current, replies, record)
        self.last_update = None
        if self.user_level is not None:
            self.last_update = self._release(current, accepted, record)
            return self.step.apply(server_round, current, self.last_update)
        if not accepted or record.accepted < self.min_replies:
            record.skipped = 1
            logger.warning(
                "round %d skipped: %d accepted updates, fewer than min_replies=%d (%s); the "
                "model is unchanged",
                server_round,
                record.accepted,
                max(self.min_replies, 1),
                record.outcome_counts(),
            )
            return None
        update = self._combine(accepted)
        if update is None:
            record.skipped = 1
            logger.warning("round %d skipped: the accepted updates weigh 0", server_round)
            return None
        self.last_update = update
        return self.step.apply(server_round, current, update)

    # -- 1 and 2 -------------------------------------------------------------------------------
    def _validate_and_classify(
        self, server_round: int, current: Arrays, replies: Sequence[NodeReply], record: RoundRecord
    ) -> list[NodeReply]:
        expected = expected_arrays(current)
        accepted, losses = [], []
        refusals: Counter = Counter()
        for reply in replies:
            if reply.timed_out:
                record.timed_out += max(len(reply.outcomes), 1)
                continue
            if reply.error:
                rejected = sum(o.status == "rejected" for o in reply.outcomes)
                record.rejected += rejected
                record.failed += max(len(reply.outcomes), 1) - rejected
                logger.warning(
                    "round %d: node %s %s: %s",
                    server_round,
                    reply.node,
                    "rejected" if rejected else "failed",
                    reply.error,
                )
                continue
            for outcome in reply.outcomes:
                if outcome.epsilon is not None:
                    self.tally.report(
                        int(outcome.key),  # type: ignore[call-overload]
                        outcome.epsilon,
                        budget_exhausted=outcome.status == "budget_exhausted",
                    )
                if outcome.status == "declined":
                    record.declined += 1
                elif outcome.status == "refused":
                    record.refused += 1
                    refusals[outcome.reason] += 1
                elif outcome.status == "budget_exhausted":
                    record.budget_exhausted += 1
                elif outcome.status == "failed":
                    record.failed += 1
                elif outcome.status == "rejected":
                    record.rejected += 1
            trained = reply.trained
            if not trained:
                continue
            reason = self._rejection(reply, expected)
            if reason is not None:
                record.rejected += len(trained)
                logger.warning(
                    "round %d: rejected the update of node %s (%d users): %s",
                    server_round,
                    reply.node,
                    len(trained),
                    reason,
                )
                continue
            accepted.append(reply)
            losses += [o.loss for o in trained]
        for code, count in sorted(refusals.items(), key=lambda item: str(item[0])):
            logger.warning(
                "round %d: %d devices refused the round: %s (details in their own logs)",
                server_round,
                count,
                RefusalReason.describe(code),
            )
        record.accepted = sum(len(r.trained) for r in accepted)
        record.train_loss = float(np.mean(losses)) if losses else float("nan")
        self.tally.fill(record)
        return accepted

    def _rejection(self, reply: NodeReply, expected) -> str | None:
        if reply.arrays is None:
            return "trained users but no arrays"
        if reply.summed:
            reason = rejection_reason(reply.arrays, expected, weight=reply.weight)
            count, clip = len(reply.trained), self.user_level.clip_norm if self.user_level else 0
            if reason is None and (
                self.user_level is None
                or count != int(reply.weight)
                or update_norm(reply.arrays) > count * clip * (1 + 1e-5)
            ):
                reason = f"a sum of {count} clipped updates beyond count · C (C={clip:g})"
            return reason
        bound = self.max_update_norm if reply.per_user and self.user_level is None else None
        return rejection_reason(reply.arrays, expected, weight=reply.weight, max_norm=bound)

    # -- 3 -------------------------------------------------------------------------------------
    def _combine(self, accepted: list[NodeReply]) -> Arrays | None:
        if self.defense is not None:
            if not all(reply.per_user for reply in accepted):
                raise ValueError(
                    f"defense={self.defense.name} needs one update per user; a node sent the "
                    "mean of many"
                )
            return aggregate([reply.arrays for reply in accepted], self.defense)  # type: ignore[misc]
        total_weight = sum(reply.weight for reply in accepted)
        if not total_weight > 0:
            return None
        names = accepted[0].arrays.keys()  # type: ignore[union-attr]
        return {
            name: sum(
                (reply.weight / total_weight) * np.asarray(reply.arrays[name], dtype=np.float64)  # type: ignore[index]
                for reply in accepted
            )
            for name in names
        }

    def _release(self, current: Arrays, accepted: list[NodeReply], record: RoundRecord) -> Arrays:
        """DP-FedAvg: the noisy mean of the clipped updates. ε is computed before anything is
        released: if the accountant fails, this raises and the model is not updated."""
        plan = self.user_level
        assert plan is not None
        epsilon = plan.epsilon_after(self.releases + 1)
        total = {name: np.zeros(v.shape, dtype=np.float64) for name, v in current.items()}
        users = 0
        for reply in accepted:
            if reply.summed:  # each user in it was clipped on the node
                part, users = reply.arrays, users + len(reply.trained)
            else:
                part, users = clip_update(reply.arrays, plan.clip_norm), users + 1  # type: ignore[arg-type]
            for name in total:
                total[name] += np.asarray(part[name], dtype=np.float64)  # type: ignore[index]
        mean = noisy_mean_of_sum(
            total,
            like=current,
            clip_norm=plan.clip_norm,
            noise_multiplier=plan.noise_multiplier,
            expected_clients=plan.expected_clients,
            rng=self.rng,
        )
        self.releases += 1
        record.user_level_epsilon = epsilon
        logger.info(
            "round %d: user-level DP release of %d clipped updates / %d, noise std %.4g on the "
            "sum; user-level ε %.4g (δ=%g)",
            record.server_round,
            users,
            plan.expected_clients,
            plan.noise_multiplier * plan.clip_norm,
            epsilon,
            plan.delta,
        )
        return mean
