"""The user's consent to federated training, as an append-only history of events.

Consent is granular by interaction category (a user may let their ratings train the shared model
but not their purchases) and it expires: every grant carries an expiry time, after which the
category no longer enters training until the user renews it. The current state is always
*derived* from the whole history, so the history the user exports is exactly what decided what
was used. Nothing here touches storage or time: callers pass ``now`` (unix seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# The kinds of interaction an app may record. A fixed, documented set: the consent screen an
# app shows must name every category that could be used.
CATEGORIES = ("view", "click", "rating", "purchase")
CONSENT_ACTIONS = ("grant", "renew", "withdraw")
DEFAULT_CONSENT_VALID_FOR_S = 180 * 24 * 3600.0  # half a year, then the user is asked again


class ConsentRequired(RuntimeError):
    """The user has not (or no longer) consented: the device must not train or take part."""


def check_categories(categories: Iterable[str]) -> tuple[str, ...]:
    """The categories as a sorted tuple; an unknown or empty list raises ``ValueError``."""
    chosen = tuple(sorted(set(categories)))
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r}; accepted: {', '.join(CATEGORIES)}")
    if not chosen:
        raise ValueError(f"no category given; accepted: {', '.join(CATEGORIES)}")
    return chosen


@dataclass(frozen=True)
class ConsentEvent:
    """One thing the user did on the consent screen.

    ``expires_at`` is set for ``grant`` and ``renew`` (unix seconds) and None for ``withdraw``.
    """

    at: float
    action: str
    categories: tuple[str, ...]
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if self.action not in CONSENT_ACTIONS:
            raise ValueError(
                f"consent action {self.action!r}; accepted: {', '.join(CONSENT_ACTIONS)}"
            )
        check_categories(self.categories)
        if (self.action == "withdraw") != (self.expires_at is None):
            raise ValueError("grant/renew need expires_at; withdraw takes none")


@dataclass(frozen=True)
class ConsentStatus:
    """Which categories may enter training at ``now``; ``expired`` ones need a renewal."""

    now: float
    active: dict[str, float] = field(default_factory=dict)  # category -> expires_at
    expired: dict[str, float] = field(default_factory=dict)  # category -> when it expired

    @property
    def participating(self) -> bool:
        """True when at least one category is consented: only then may the device train."""
        return bool(self.active)

    def allows(self, category: str) -> bool:
        return category in self.active


def consent_status(events: Sequence[ConsentEvent], now: float) -> ConsentStatus:
    """Replay the history: a grant or renewal sets a category's expiry, a withdrawal removes it."""
    granted: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e.at):
        for category in event.categories:
            if event.action == "withdraw":
                granted.pop(category, None)
            else:
                granted[category] = float(event.expires_at)  # type: ignore[arg-type]
    return ConsentStatus(
        now=now,
        active={c: t for c, t in sorted(granted.items()) if t > now},
        expired={c: t for c, t in sorted(granted.items()) if t <= now},
    )
