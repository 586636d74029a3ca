"""The privacy modes a config can name, and what each one protects.

A mode is a pair of switches: ``record_level`` (DP-SGD on the device, ε per user about any one
interaction, from the device's ledger) and ``user_level`` (DP-FedAvg: the device clips its whole
item update, the server adds Gaussian noise to the sum, ε about a user's whole participation,
from the server's accountant). Code asks the switches, never the name, so a new mode is one
registration here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.registry import Registry


@dataclass(frozen=True)
class PrivacyMode:
    name: str
    record_level: bool
    user_level: bool
    guarantee: str  # what the ε of a run in this mode refers to, stated in its summary


PRIVACY_MODES: Registry[PrivacyMode] = Registry("privacy mode")

RECORD_LEVEL = (
    "record-level: (ε, δ) per user, from each device's privacy ledger, bounds what the released "
    "item updates reveal about any single interaction in that user's log"
)
USER_LEVEL = (
    "user-level: (ε, δ) from the server's accountant (client sampling rate q = clients_per_round "
    "/ num_clients, one Gaussian release per round) bounds what the sequence of released item "
    "tables reveals about whether any one user took part, with all of their data"
)


def _register(mode: PrivacyMode) -> None:
    PRIVACY_MODES.register(mode.name)(mode)


_register(PrivacyMode("none", False, False, "none: updates are not differentially private"))
_register(PrivacyMode("record", True, False, RECORD_LEVEL))
_register(PrivacyMode("user", False, True, USER_LEVEL))
_register(PrivacyMode("both", True, True, f"{RECORD_LEVEL}; and {USER_LEVEL}"))
