"""Poisoning: malicious clients that promote a target item, and the server's defenses.

``poisoners`` (what fake clients upload: ``boost``, ``pipattack``), ``defenses`` (how the
server aggregates: mean, norm bounding, Flower's median, trimmed mean and Krum rules),
``run`` (an in-process federation with both, measuring the target's exposure and NDCG@10).
"""

from fedrec.attack.defenses import DEFENSES, DefenseSpec
from fedrec.attack.poisoners import POISONERS, AttackSpec

__all__ = ["DEFENSES", "POISONERS", "AttackSpec", "DefenseSpec"]
