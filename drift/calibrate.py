"""Build a version's reference from its reference images' signals, and calibrate its threshold by simulation.

The images are split in two at random: the **fitting half** gives each signal's reference
values (``drift.detector.fit_signals``); both halves are scored against them and resampled
into many long unshifted streams, on which the detectors of ``drift.detector`` run with every
threshold on a grid at once. The mean number of requests to the first alarm per threshold is
that threshold's predicted ERT.

Which images the streams are drawn from decides the prediction. The fitting half's own images
agree with the reference exactly, so streams of them alone overstate the ERT several times.
New traffic differs from the reference by the fitting half's sampling error; the held-out
half differs by that error *and its own*, twice the variance, so streams of it alone
understate the ERT (by half on our model: REPORT.md's drift bench). A stream that draws each
request from the held-out half with probability ``1/sqrt(2)`` and from the fitting half
otherwise differs from the reference by ``1/sqrt(2)`` times the held-out half's difference:
to first order, the variance new traffic has.

The CUSUM's sums are computed for a whole stream at once: with ``W`` the running sum of the
increments, ``max(0, S + x)`` unrolls to ``W_t - min(0, min_{j<=t} W_j)``. A request that says
nothing of a signal adds zero, which leaves its sum where it was, as ``Detector.update`` does.
"""

from __future__ import annotations

import numpy as np

from drift.detector import K, Reference, fit_signals

THRESHOLDS = np.round(np.arange(2.0, 80.0, 0.25), 2)
STREAMS = 240  # simulated streams: the predicted ERT's standard error is about 1/sqrt(STREAMS) of it
LENGTH = 150_000  # requests per stream: thresholds whose runs outlast it too often are left out of the table
MAX_CENSORED = 0.01  # ... more than this share of runs without an alarm
CHUNK = 4  # streams simulated together (memory: CHUNK x LENGTH x signals x 4 bytes, a few times)
HELD_OUT_SHARE = 2**-0.5  # of a simulated stream's requests, drawn from the calibration half (the rest: fitting)


def split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fitting half and the calibration half."""
    order = np.random.default_rng(seed).permutation(count)
    return order[: count // 2], order[count // 2 :]


def run_lengths(
    scores: np.ndarray,
    k: float,
    thresholds: np.ndarray,
    streams: int,
    length: int,
    seed: int,
    weights: np.ndarray | None = None,
):
    """Requests to the first alarm per stream and threshold, for streams resampled from ``scores`` rows.

    ``scores`` is (images, signals) with NaN where an image says nothing of a signal; ``weights``
    each row's chance to be drawn (default: equal). Returns (streams, thresholds) run lengths,
    ``length + 1`` where a stream never alarmed.
    """
    rng = np.random.default_rng(seed)
    cumulative = None if weights is None else np.cumsum(weights / weights.sum())
    table = np.nan_to_num(scores.astype(np.float32), nan=0.0)
    seen = (~np.isnan(scores)).astype(np.float32)
    found = np.empty((streams, len(thresholds)), dtype=np.int64)
    for start in range(0, streams, CHUNK):
        count = min(CHUNK, streams - start)
        if cumulative is None:
            rows = rng.integers(0, len(table), size=(count, length))
        else:
            rows = np.minimum(np.searchsorted(cumulative, rng.random((count, length))), len(table) - 1)
        z, mask = table[rows], seen[rows]  # (count, length, signals)
        worst = np.zeros((count, length), dtype=np.float32)
        for sign in (1.0, -1.0):
            walk = np.cumsum((sign * z - k) * mask, axis=1)
            low = np.minimum.accumulate(np.minimum(walk, 0.0), axis=1)
            np.maximum(worst, (walk - low).max(axis=2), out=worst)
        peak = np.maximum.accumulate(worst, axis=1)
        for row in range(count):
            found[start + row] = np.searchsorted(peak[row], thresholds, side="right") + 1
    return found


def calibration_table(
    scores: np.ndarray,
    k: float = K,
    streams: int = STREAMS,
    length: int = LENGTH,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> list[tuple[float, float]]:
    """(threshold, predicted ERT) for every threshold on the grid whose runs the streams are long enough to see."""
    lengths = run_lengths(scores, k, THRESHOLDS, streams, length, seed, weights)
    censored = (lengths > length).mean(axis=0)
    ert = np.minimum(lengths, length).mean(axis=0)
    return [(float(h), float(e)) for h, e, c in zip(THRESHOLDS, ert, censored, strict=True) if c <= MAX_CENSORED]


def build_reference(
    rows: list[dict],
    seed: int = 0,
    source: str = "archive",
    streams: int = STREAMS,
    length: int = LENGTH,
    held_out_share: float = HELD_OUT_SHARE,
) -> Reference:
    """A reference from raw signals of reference images (one dict per image, as the handler reports them).

    ``held_out_share``: of the simulated streams' requests, the share drawn from the calibration
    half (the drift bench compares 0, 1 and the default).
    """
    fit, calibration = split(len(rows), seed)
    signals = fit_signals([rows[i] for i in fit])
    reference = Reference(signals, len(rows), len(fit), len(calibration), [], K, source)
    scores = np.stack([reference.scores(rows[i]) for i in (*calibration, *fit)])
    held_out, fitted = held_out_share / len(calibration), (1 - held_out_share) / len(fit)
    weights = np.concatenate([np.full(len(calibration), held_out), np.full(len(fit), fitted)])
    reference.table = calibration_table(scores, K, streams, length, seed, weights)
    if not reference.table:
        raise ValueError("no threshold reached a stable run length: too few calibration images")
    return reference
