"""Privacy audits: what a curious or active server learns from the updates it receives.

``attacks`` (membership scores per item), ``bounds`` (what (ε, δ) allows any attack),
``game`` (the in/out game the bound is about), ``active`` (a crafted item table), ``clients``
(users simulated in-process), ``run`` (one audited federation), ``report`` (table and plot).
"""

from fedrec.membership.attacks import ATTACKS, make_attack, roc_auc
from fedrec.membership.bounds import auc_bound

__all__ = ["ATTACKS", "auc_bound", "make_attack", "roc_auc"]
