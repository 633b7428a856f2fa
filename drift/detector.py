"""Online drift detectors: a two-sided CUSUM per signal, on normal scores against a version's reference.

A version's **reference** holds, for every signal its handler reports (``serving/yolo_signals.py``),
the sorted values of the reference images' *fitting half*. A request's value becomes a normal
score: its mid-rank in those values, through the inverse normal CDF, standardised by the
scores of the fitting half itself, so every signal, discrete or not, is ~N(0, 1) when nothing
changed. Each signal keeps two CUSUM sums, one for a rise and one for a fall::

    up   = max(0, up   + z - k)
    down = max(0, down - z - k)

and the version alarms when any sum passes the threshold ``h``: the alarm names every signal
past it, the largest first, and the sums start again from zero. One ``h`` serves all the
signals of a version; it comes from the reference's calibration table (``drift.calibrate``),
which says, per threshold, the expected number of requests between two false alarms (ERT)
measured by simulation on the *other* half of the reference images.

Class mix is derived here, not in the handler: for each tracked class (the most common ones of
the reference), a request's value is its count of that class minus the class's reference share
of all the request's detections, so the signal reacts to the mix and not to how many
detections there were. Requests without detections say nothing about the mix (no update).

Plain numpy and the standard library: the gateway runs this on every prediction, and the
replays of ``make drift-bench`` run this same class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from serving.yolo_contract import CLASS_MIX, signal_tier

DEFAULT_TARGET_ERT = 10_000  # requests between false alarms the gateway aims for unless told otherwise
MARGIN = 1.25  # the threshold is the one predicted to reach target x MARGIN: REPORT.md's drift bench says why
K = 0.35  # the CUSUM's allowance, in standard deviations: half the smallest shift it is tuned to catch fast
MAX_TRACKED_CLASSES = 8  # class-mix signals for at most this many classes, the reference's most common
MIN_CLASS_SHARE = 0.02  # ... each with at least this share of the reference's detections
MIN_VALUES = 50  # a signal with fewer values in the fitting half is not watched
INVERSE_NORMAL = NormalDist().inv_cdf


def class_total(raw: dict) -> float:
    """All the detections of a request, counted over its class-mix counts (the handler sends present classes)."""
    return sum(value for name, value in raw.items() if name.startswith(CLASS_MIX) and value is not None)


def quantised(value: float) -> float:
    """Six significant digits: what the reference stores, so a stored reference ranks a value as the fresh one did."""
    return float(f"{float(value):.6g}")


@dataclass
class Signal:
    """One watched signal: its reference values (fitting half, sorted) and how its scores are standardised."""

    name: str
    tier: str
    values: np.ndarray
    center: float = 0.0
    scale: float = 1.0
    share: float | None = None  # class mix only: the class's share of the reference's detections

    def value(self, raw: dict) -> float | None:
        """This signal's value in a request's raw signals; None when the request says nothing of it."""
        if self.share is None:
            found = raw.get(self.name)
            return None if found is None else quantised(found)
        total = class_total(raw)
        return None if total == 0 else quantised(float(raw.get(self.name) or 0.0) - self.share * total)

    def score(self, value: float) -> float:
        """The standardised normal score of ``value`` against the reference values."""
        n = len(self.values)
        low = int(np.searchsorted(self.values, value, "left"))
        high = int(np.searchsorted(self.values, value, "right"))
        return (INVERSE_NORMAL(((low + high) / 2 + 0.5) / (n + 1)) - self.center) / self.scale

    def stored(self) -> dict:
        return {
            "name": self.name,
            "tier": self.tier,
            "center": self.center,
            "scale": self.scale,
            "share": self.share,
            "values": self.values.tolist(),  # already quantised: they print short
        }

    @classmethod
    def from_stored(cls, data: dict) -> Signal:
        return cls(
            data["name"],
            data["tier"],
            np.asarray(data["values"], dtype=np.float64),
            float(data["center"]),
            float(data["scale"]),
            data.get("share"),
        )


def fit_signals(rows: list[dict]) -> list[Signal]:
    """The signals worth watching in ``rows`` (the fitting half's raw signals), with their reference values."""
    names = sorted({name for row in rows for name in row if not name.startswith(CLASS_MIX)})
    signals = [Signal(name, signal_tier(name), np.empty(0)) for name in names]
    counts: dict[str, float] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith(CLASS_MIX) and value is not None:
                counts[name] = counts.get(name, 0.0) + value
    total = sum(counts.values())
    common = sorted(counts, key=lambda name: -counts[name])[:MAX_TRACKED_CLASSES]
    signals += [
        Signal(name, "output", np.empty(0), share=counts[name] / total)
        for name in common
        if counts[name] / total >= MIN_CLASS_SHARE
    ]
    kept = []
    for signal in signals:
        values = np.sort([v for v in (signal.value(row) for row in rows) if v is not None and math.isfinite(v)])
        if len(values) < MIN_VALUES:
            continue
        signal.values = values
        scores = np.array([signal.score(v) for v in values])
        spread = float(scores.std())
        if spread > 1e-3:  # a constant signal (one camera's aspect ratio) keeps raw scores: any change is far out
            signal.center, signal.scale = float(scores.mean()), spread
        kept.append(signal)
    return kept


@dataclass
class Reference:
    """What a version's detectors compare against: its signals and the calibration of their threshold."""

    signals: list[Signal]
    images: int  # reference images in all
    fit_images: int
    calibration_images: int
    table: list[tuple[float, float]]  # (threshold, predicted ERT in requests), thresholds rising
    k: float = K
    source: str = "archive"  # or "rebaseline": taken from served requests, kept in the state store

    def scores(self, raw: dict) -> np.ndarray:
        """The request's standardised score per signal (NaN where it says nothing)."""
        out = np.full(len(self.signals), np.nan)
        for index, signal in enumerate(self.signals):
            value = signal.value(raw)
            if value is not None and math.isfinite(value):
                out[index] = signal.score(value)
        return out

    def threshold(self, target_ert: float, margin: float) -> tuple[float, float]:
        """The threshold whose predicted ERT is at least ``target_ert`` x ``margin``, and that ERT.

        Past the table's end, its last (largest) threshold: the predicted ERT says how far it got.
        """
        for h, ert in self.table:
            if ert >= target_ert * margin:
                return h, ert
        return self.table[-1]

    def stored(self) -> dict:
        return {
            "images": self.images,
            "fit_images": self.fit_images,
            "calibration_images": self.calibration_images,
            "k": self.k,
            "source": self.source,
            "table": [[h, round(ert, 1)] for h, ert in self.table],
            "signals": [signal.stored() for signal in self.signals],
        }

    @classmethod
    def from_stored(cls, data: dict) -> Reference:
        return cls(
            [Signal.from_stored(s) for s in data["signals"]],
            int(data["images"]),
            int(data["fit_images"]),
            int(data["calibration_images"]),
            [(float(h), float(ert)) for h, ert in data["table"]],
            float(data.get("k", K)),
            str(data.get("source", "archive")),
        )

    def summary(self) -> dict:
        return {"images": self.images, "signals": [s.name for s in self.signals], "source": self.source}


@dataclass
class Detector:
    """One version's CUSUMs: feed it each request's raw signals; it says which signals alarmed, if any."""

    reference: Reference
    threshold: float
    up: np.ndarray = field(default=None)
    down: np.ndarray = field(default=None)
    requests: int = 0

    def __post_init__(self):
        if self.up is None:
            self.up = np.zeros(len(self.reference.signals))
            self.down = np.zeros(len(self.reference.signals))

    def update(self, raw: dict) -> list[Signal]:
        """Add one request; the signals past the threshold, largest first (then every sum starts again)."""
        return self.update_scores(self.reference.scores(raw))

    def update_scores(self, scores: np.ndarray) -> list[Signal]:
        self.requests += 1
        seen = ~np.isnan(scores)
        k = self.reference.k
        self.up[seen] = np.maximum(0.0, self.up[seen] + scores[seen] - k)
        self.down[seen] = np.maximum(0.0, self.down[seen] - scores[seen] - k)
        statistic = np.maximum(self.up, self.down)
        crossed = np.flatnonzero(statistic > self.threshold)
        if not len(crossed):
            return []
        order = crossed[np.argsort(-statistic[crossed], kind="stable")]
        self.reset_sums()
        return [self.reference.signals[i] for i in order]

    def statistics(self) -> np.ndarray:
        return np.maximum(self.up, self.down)

    def reset_sums(self) -> None:
        self.up[:] = 0.0
        self.down[:] = 0.0
