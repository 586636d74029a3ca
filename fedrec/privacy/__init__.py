"""Opacus wiring, accountants over whole runs, and privacy settings."""

from fedrec.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccountingError,
    PrivacyStep,
    epsilon_spent,
    new_accountant,
)
from fedrec.privacy.dp_sgd import PrivacySpec, PrivateTraining, make_private
from fedrec.privacy.modes import PRIVACY_MODES, PrivacyMode

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
