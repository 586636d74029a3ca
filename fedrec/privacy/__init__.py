"""Privacy settings, Opacus wiring, accountants over whole runs, ledgers and budgets.

Names are imported lazily (:mod:`fedrec.lazy`): the settings and modes need no Opacus.
"""

from fedrec.lazy import lazy_exports
from fedrec.privacy.modes import PRIVACY_MODES, PrivacyMode
from fedrec.privacy.spec import ACCOUNTANTS, PrivacySpec

__all__ = [
    "ACCOUNTANTS",
    "PRIVACY_MODES",
    "PrivacyAccountingError",
    "PrivacyMode",
    "PrivacySpec",
    "PrivacyStep",
    "PrivateTraining",
    "epsilon_spent",
    "make_private",
    "new_accountant",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "PrivacyAccountingError": "fedrec.privacy.accounting",
        "PrivacyStep": "fedrec.privacy.accounting",
        "epsilon_spent": "fedrec.privacy.accounting",
        "new_accountant": "fedrec.privacy.accounting",
        "PrivateTraining": "fedrec.privacy.dp_sgd",
        "make_private": "fedrec.privacy.dp_sgd",
    },
)
