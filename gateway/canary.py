"""Canary routing: send a share of unpinned predictions to a candidate version.

Each model has its own canary in the state store (``gateway.state``, key ``canary/<model>``,
``{"version": "2.0", "percent": 20}``): ``scripts/deploy.sh VERSION --canary PERCENT`` writes it
once the version passed its gate, promoting or aborting removes it, and an operator can change
its share or stop it at ``/admin/models/<model>/canary``. The gateway reads it on every unpinned
request (one primary-key read), so a canary starts, changes or stops without restarting
anything. A canary that cannot be read is no canary: predictions go on to the default version.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from gateway.state import StateError, StateStore, canary_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float

    @classmethod
    def parse(cls, data: object) -> Canary:
        """A canary from its stored form; ValueError says what is wrong with it."""
        try:
            canary = cls(str(data["version"]), float(data["percent"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a canary ({{'version', 'percent'}} expected): {data!r}") from exc
        if not 0 < canary.percent < 100:
            raise ValueError(f"a canary's percent must be between 0 and 100 (exclusive), got {canary.percent:g}")
        return canary

    def stored(self) -> dict:
        return {"version": self.version, "percent": self.percent}


def choose(canary: Canary | None, draw: float) -> str | None:
    """The canary version when the uniform ``draw`` in [0, 1) falls in its share, else None (the default)."""
    return canary.version if canary is not None and draw * 100 < canary.percent else None


class Canaries:
    """Every model's canary, in ``store`` (None: no canaries at all)."""

    def __init__(self, store: StateStore | None, rng: random.Random | None = None):
        self.store = store
        self.rng = rng or random.Random()
        self._complaint: str | None = None  # the last problem logged, so a broken store is logged once, not per request

    def current(self, model: str) -> Canary | None:
        if self.store is None:
            return None
        try:
            data = self.store.get(canary_key(model))
            canary = Canary.parse(data) if data is not None else None
        except (StateError, ValueError) as exc:
            self._complain(f"ignoring the canary of {model!r}: {exc}")
            return None
        self._complaint = None
        return canary

    def _complain(self, message: str) -> None:
        if message != self._complaint:
            logger.warning("%s", message)
            self._complaint = message

    def pick(self, model: str) -> str | None:
        """The version one unpinned request for ``model`` goes to: its canary's, or None for the default."""
        return choose(self.current(model), self.rng.random())

    def set(self, model: str, canary: Canary | None) -> None:
        """Start, change or (None) stop ``model``'s canary."""
        if canary is None:
            self.store.delete(canary_key(model))
        else:
            self.store.put(canary_key(model), canary.stored())
