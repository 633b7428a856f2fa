"""Drift watch: every (model, version) runs its own detectors on the signals of the answers it gives.

Each successful prediction carries the handler's drift signals; ``DriftMonitor.observe``
feeds them to the detectors of the version that answered (``drift.detector``), so a canary
arm is watched against its own version's reference, never against the default's. A version's
reference comes from its archive (``describe_handle``'s ``drift_reference``, fetched once), or
from a rebaseline kept in the state store, which wins. Its threshold is the one the
reference's calibration predicts reaches the model's target ERT (``GATEWAY_DRIFT_TARGET_ERT``,
per model ``GATEWAY_DRIFT_TARGET_ERT_BY_MODEL``) times ``drift.detector.MARGIN``.

An alarm is kept (signal, tier, request count, time), turns the version's state to
``warning`` (input tier) or ``critical`` (output tier) until an operator resets it, and the
sums start again, so a lasting shift keeps alarming. The sums, counts and alarms are saved in
the state store every ``SAVE_EVERY`` requests, on every alarm and at shutdown: a gateway
restart, even a killed one, loses at most ``SAVE_EVERY`` requests of evidence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from drift.calibrate import build_reference
from drift.detector import MARGIN, Detector, Reference
from gateway.state import StateError, StateStore
from serving.yolo_contract import DRIFT_TIERS

logger = logging.getLogger(__name__)
SAVE_EVERY = 50
KEPT_ALARMS = 100  # the newest alarms kept per version
MIN_REBASELINE = 200


def state_key(model: str, version: str) -> str:
    return f"drift/{model}/{version}"


def rebaseline_key(model: str, version: str) -> str:
    return f"drift-reference/{model}/{version}"


@dataclass
class Watch:
    """One version's detectors and what they found."""

    model: str
    version: str
    reference: Reference | None
    target_ert: float
    detector: Detector | None = None
    predicted_ert: float | None = None
    alarms: list[dict] = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=5000))
    unsaved: int = 0
    seen: int = 0  # requests observed by this gateway process (the count when there is no reference)

    def __post_init__(self):
        if self.reference is not None:
            threshold, self.predicted_ert = self.reference.threshold(self.target_ert, MARGIN)
            self.detector = Detector(self.reference, threshold)

    @property
    def requests(self) -> int:
        return self.detector.requests if self.detector else self.seen

    @property
    def state(self) -> str:
        if self.reference is None:
            return "no_reference"
        tiers = {alarm["tier"] for alarm in self.alarms}
        return DRIFT_TIERS["output"] if "output" in tiers else DRIFT_TIERS["input"] if tiers else "ok"

    def observe(self, raw: dict) -> list[dict]:
        self.recent.append(raw)
        self.seen += 1
        if self.detector is None:
            return []
        crossed = self.detector.update(raw)
        self.unsaved += 1
        if not crossed:
            return []
        when = datetime.now(UTC).isoformat(timespec="seconds")
        found = [
            {"signal": s.name, "tier": s.tier, "at_request": self.detector.requests, "time": when} for s in crossed
        ]
        self.alarms = (self.alarms + found)[-KEPT_ALARMS:]
        return found

    def saved(self) -> dict:
        detector = self.detector
        return {
            "requests": detector.requests if detector else 0,
            "signals": [s.name for s in self.reference.signals] if self.reference else [],
            "up": detector.up.tolist() if detector else [],
            "down": detector.down.tolist() if detector else [],
            "alarms": self.alarms,
        }

    def restore(self, data: dict) -> None:
        """Take back saved sums and alarms (sums only when they were kept for the same signals)."""
        self.alarms = list(data.get("alarms", []))[-KEPT_ALARMS:]
        if self.detector is None:
            return
        self.detector.requests = int(data.get("requests", 0))
        if data.get("signals") == [s.name for s in self.reference.signals]:
            self.detector.up = np.asarray(data["up"], dtype=np.float64)
            self.detector.down = np.asarray(data["down"], dtype=np.float64)

    def report(self) -> dict:
        signals = []
        if self.detector is not None:
            statistics = self.detector.statistics()
            signals = [
                {
                    "name": s.name,
                    "tier": s.tier,
                    "statistic": round(float(value), 3),
                    "threshold": self.detector.threshold,
                }
                for s, value in zip(self.reference.signals, statistics, strict=True)
            ]
        return {
            "version": self.version,
            "state": self.state,
            "requests": self.requests,
            "reference": self.reference_summary(),
            "signals": signals,
            "alarms": self.alarms,
        }

    def reference_summary(self) -> dict | None:
        if self.reference is None:
            return None
        return {
            "images": self.reference.images,
            "source": self.reference.source,
            "target_ert": self.target_ert,
            "predicted_ert": round(self.predicted_ert or 0),
        }


class DriftMonitor:
    """Every version's ``Watch``, loaded on its first answer and kept in the state store."""

    def __init__(self, store: StateStore, fetch_reference, target_ert, recent: int = 5000):
        self.store = store
        self.fetch_reference = fetch_reference  # async (model, version) -> stored reference dict or None
        self.target_ert = target_ert  # (model) -> target ERT
        self.recent = recent
        self.watches: dict[tuple[str, str], Watch] = {}
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}

    async def watch(self, model: str, version: str) -> Watch:
        key = (model, version)
        if key in self.watches:
            return self.watches[key]
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self.watches:
                self.watches[key] = await self._load(model, version)
        return self.watches[key]

    async def _load(self, model: str, version: str) -> Watch:
        stored = self._get(rebaseline_key(model, version)) or await self.fetch_reference(model, version)
        reference = None
        if stored:
            try:
                reference = Reference.from_stored(stored)
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("drift reference of %s v%s unusable, not watching it: %r", model, version, exc)
        watch = Watch(model, version, reference, self.target_ert(model), recent=deque(maxlen=self.recent))
        saved = self._get(state_key(model, version))
        if saved:
            watch.restore(saved)
        return watch

    async def observe(self, model: str, version: str, raw: dict) -> None:
        watch = await self.watch(model, version)
        alarms = watch.observe(raw)
        for alarm in alarms:
            logger.warning("drift alarm: %s v%s %s (%s) at request %d", model, version, alarm["signal"],
                           alarm["tier"], alarm["at_request"])  # fmt: skip
        if alarms or watch.unsaved >= SAVE_EVERY:
            self.save(watch)

    def save(self, watch: Watch) -> None:
        try:
            self.store.put(state_key(watch.model, watch.version), watch.saved())
            watch.unsaved = 0
        except StateError as exc:
            logger.warning("drift state of %s v%s not saved: %s", watch.model, watch.version, exc)

    def save_all(self) -> None:
        for watch in self.watches.values():
            if watch.unsaved:
                self.save(watch)

    def reset(self, watch: Watch) -> None:
        """Clear the sums, counts and alarms; keep the reference."""
        if watch.detector is not None:
            watch.detector.reset_sums()
            watch.detector.requests = 0
        watch.alarms = []
        self.save(watch)

    async def rebaseline(self, watch: Watch, last: int) -> Watch:
        """Make the last ``last`` requests' signals the version's reference (in the state store) and start afresh."""
        rows = list(watch.recent)[-last:]
        reference = await asyncio.to_thread(build_reference, rows, 0, "rebaseline")
        self.store.put(rebaseline_key(watch.model, watch.version), reference.stored())
        fresh = Watch(watch.model, watch.version, reference, watch.target_ert, recent=watch.recent)
        self.watches[(watch.model, watch.version)] = fresh
        self.save(fresh)
        return fresh

    def _get(self, key: str) -> dict | None:
        try:
            return self.store.get(key)
        except StateError as exc:
            logger.warning("drift state %s unreadable: %s", key, exc)
            return None


class DriftCollector:
    """``model_drift_*`` gauges, read from the monitor when Prometheus scrapes (nothing per request)."""

    def __init__(self, monitor: DriftMonitor):
        self.monitor = monitor

    def describe(self):
        return []

    def collect(self):
        labels = ["model", "model_version", "signal", "tier"]
        families = {
            "statistic": GaugeMetricFamily(
                "model_drift_statistic", "CUSUM statistic of a drift signal (alarm above the threshold)", labels=labels
            ),
            "threshold": GaugeMetricFamily(
                "model_drift_threshold", "The version's threshold, set for its target ERT", labels=labels
            ),
            "alarm": GaugeMetricFamily(
                "model_drift_alarm", "1 once the signal alarmed, until the version's drift is reset", labels=labels
            ),
        }
        for watch in list(self.monitor.watches.values()):
            if watch.detector is None:
                continue
            alarmed = {alarm["signal"] for alarm in watch.alarms}
            for signal, value in zip(watch.reference.signals, watch.detector.statistics(), strict=True):
                names = [watch.model, watch.version, signal.name, signal.tier]
                families["statistic"].add_metric(names, float(value))
                families["threshold"].add_metric(names, watch.detector.threshold)
                families["alarm"].add_metric(names, 1.0 if signal.name in alarmed else 0.0)
        yield from families.values()
