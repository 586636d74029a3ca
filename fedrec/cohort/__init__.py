"""The simulation's fast path: many users per Flower node, each with their own DP-SGD round.

The engine itself is device-side math (:mod:`fedrec.client.closed_form`; the embedded client
uses it for one user); this package is its simulation adapter (:mod:`fedrec.cohort.app`).
"""

from fedrec.client.closed_form import CohortMember, CohortRound, MemberOutcome, train_cohort

__all__ = ["CohortMember", "CohortRound", "MemberOutcome", "train_cohort"]
