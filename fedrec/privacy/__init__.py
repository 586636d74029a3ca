"""Opacus wiring, accountants over whole runs, and privacy settings."""

from fedrec.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccountingError,
    PrivacyStep,
    epsilon_spent,
    new_accountant,
)
from fedrec.privacy.dp_sgd import PRIVACY_MODES, PrivacySpec, PrivateTraining, make_private

__all__ = [
    "ACCOUNTANTS",
    "PRIVACY_MODES",
    "PrivacyAccountingError",
    "PrivacySpec",
    "PrivacyStep",
    "PrivateTraining",
    "epsilon_spent",
    "make_private",
    "new_accountant",
]
