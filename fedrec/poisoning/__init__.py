"""Poisoning: malicious clients that promote a target item, and the server's defenses.

``poisoners`` (what fake clients upload: ``boost``, ``pipattack``) and ``run`` (an in-process
federation with them, measuring the target's exposure and NDCG@10). The defenses are the
server's aggregation rules and live with it, in :mod:`fedrec.federation.defenses` (re-exported
here); ``fedrec simulate defense=`` applies the very same rules through the one server rule.
"""

from fedrec.federation.defenses import DEFENSES, DefenseSpec
from fedrec.poisoning.poisoners import POISONERS, AttackSpec

__all__ = ["DEFENSES", "POISONERS", "AttackSpec", "DefenseSpec"]
