"""Canary routing: send a share of unpinned predictions to a candidate version.

Each model has its own canary: ``scripts/deploy.py`` writes ``{"version": "2.0", "percent": 20}``
to ``<canary dir>/<model>/canary.json`` (one atomic rename) and removes it to stop. The
gateway checks the file's mtime on every request, which costs one ``stat``, and parses it only
when it changed, so a canary starts, changes or stops without restarting anything.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float


def choose(canary: Canary | None, draw: float) -> str | None:
    """The canary version when the uniform ``draw`` in [0, 1) falls in its share, else None (the default)."""
    return canary.version if canary is not None and draw * 100 < canary.percent else None


class CanaryFile:
    """The canary state in ``path``, cached by modification time; no file (or no path) means no canary."""

    def __init__(self, path: Path | None, rng: random.Random | None = None):
        self.path = path
        self.rng = rng or random.Random()
        self._stamp: tuple[int, int] | None = None
        self._canary: Canary | None = None

    def current(self) -> Canary | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._canary = None, None
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp, self._canary = stamp, self._parse()
        return self._canary

    def _parse(self) -> Canary | None:
        try:
            data = json.loads(self.path.read_text())
            canary = Canary(str(data["version"]), float(data["percent"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring canary file %s: %s", self.path, exc)
            return None
        logger.info("canary: %g%% of unpinned predictions go to version %s", canary.percent, canary.version)
        return canary

    def pick(self) -> str | None:
        """The version one unpinned request goes to: the canary's, or None for TorchServe's default."""
        return choose(self.current(), self.rng.random())


CANARY_FILE = "canary.json"


class Canaries:
    """One ``CanaryFile`` per model, under ``directory`` (None: no canaries at all)."""

    def __init__(self, directory: Path | None, rng: random.Random | None = None):
        self.directory = directory
        self.rng = rng or random.Random()
        self._files: dict[str, CanaryFile] = {}

    def pick(self, model: str) -> str | None:
        """The version one unpinned request for ``model`` goes to: its canary's, or None for the default."""
        if self.directory is None:
            return None
        canary = self._files.get(model)
        if canary is None:
            canary = self._files[model] = CanaryFile(self.directory / model / CANARY_FILE, self.rng)
        return canary.pick()
