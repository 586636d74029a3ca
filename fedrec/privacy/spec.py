"""The privacy settings, without Opacus: a device parses them from the server's round config,
and the config schema and an app's settings build them; none of that needs the accountant."""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.privacy.modes import PRIVACY_MODES

ACCOUNTANTS = ("rdp", "prv")  # Opacus' accountants by name (fedrec.privacy.accounting)
GRAD_SAMPLE_MODES = ("ghost", "hooks")


@dataclass
class PrivacySpec:
    """Mirrors ``configs/privacy/*.yaml``.

    ``mode`` names a :class:`~fedrec.privacy.modes.PrivacyMode`. ``record``: DP-SGD on each
    device; ε bounds what the released item updates reveal about any single interaction of the
    user. ``user``: DP-FedAvg (:mod:`fedrec.privacy.user_level`); ε bounds what the released item
    tables reveal about a user's whole participation. ``both``: the two together, each with its
    own ε. ``grad_sample_mode``: ``ghost`` (fast gradient clipping, ~20x faster for embedding
    tables) or ``hooks`` (Opacus' default per-sample gradients).
    """

    mode: str = "none"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None  # a user's budget; None: no limit
    # Solve each device's noise multiplier from target_epsilon instead of using the one above:
    # the device knows its log size, hence its sampling rate, and picks the smallest σ that
    # keeps it within budget after planned_rounds rounds (0: the server fills in its estimate).
    solve_noise_multiplier: bool = False
    planned_rounds: int = 0
    accountant: str = "rdp"
    grad_sample_mode: str = "ghost"
    # User-level DP (modes user, both). user_clip_norm: the L2 bound C on a user's whole
    # item-side update in a round (applied on the device before it is sent, and again at the
    # server). user_noise_multiplier: z; the server adds N(0, (z·C)²) to the sum of the clipped
    # updates. user_target_epsilon: the run's user-level budget at delta; a run planned past it
    # is refused before it starts. solve_user_noise_multiplier: pick the smallest z that fits.
    user_clip_norm: float = 1.0
    user_noise_multiplier: float = 1.0
    user_target_epsilon: float | None = None
    solve_user_noise_multiplier: bool = False

    @property
    def record_level(self) -> bool:
        """DP-SGD on the device, charged to the device's ledger."""
        return PRIVACY_MODES.get(self.mode).record_level

    @property
    def user_level(self) -> bool:
        """Clipped item updates on the device, Gaussian noise on their sum at the server."""
        return PRIVACY_MODES.get(self.mode).user_level

    def __post_init__(self) -> None:
        for name, accepted in (
            ("mode", PRIVACY_MODES),
            ("accountant", ACCOUNTANTS),
            ("grad_sample_mode", GRAD_SAMPLE_MODES),
        ):
            if getattr(self, name) not in accepted:
                raise ValueError(
                    f"privacy.{name}='{getattr(self, name)}'; accepted: {', '.join(accepted)}"
                )
        if self.noise_multiplier < 0:
            raise ValueError(f"privacy.noise_multiplier={self.noise_multiplier}; expected >= 0")
        if not self.max_grad_norm > 0:
            raise ValueError(f"privacy.max_grad_norm={self.max_grad_norm}; expected > 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta={self.delta}; expected 0 < delta < 1")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ValueError(f"privacy.target_epsilon={self.target_epsilon}; expected > 0")
        if self.solve_noise_multiplier and self.target_epsilon is None:
            raise ValueError("privacy.solve_noise_multiplier needs privacy.target_epsilon")
        if self.planned_rounds < 0:
            raise ValueError(f"privacy.planned_rounds={self.planned_rounds}; expected >= 0")
        if not self.user_clip_norm > 0:
            raise ValueError(f"privacy.user_clip_norm={self.user_clip_norm}; expected > 0")
        if self.user_noise_multiplier < 0:
            raise ValueError(
                f"privacy.user_noise_multiplier={self.user_noise_multiplier}; expected >= 0"
            )
        if self.user_target_epsilon is not None and not self.user_target_epsilon > 0:
            raise ValueError(
                f"privacy.user_target_epsilon={self.user_target_epsilon}; expected > 0"
            )
        if self.solve_user_noise_multiplier and self.user_target_epsilon is None:
            raise ValueError(
                "privacy.solve_user_noise_multiplier needs privacy.user_target_epsilon"
            )


class PrivacyAccountingError(RuntimeError):
    """ε could not be computed: privacy fails closed, so the client must not train or send."""
