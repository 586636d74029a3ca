"""The simulation's fast path: many users per Flower node, each with their own DP-SGD round."""

from fedrec.cohort.trainer import CohortMember, CohortRound, MemberOutcome, train_cohort

__all__ = ["CohortMember", "CohortRound", "MemberOutcome", "train_cohort"]
