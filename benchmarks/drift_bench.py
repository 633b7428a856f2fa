"""``make drift-bench``: how often our drift detectors cry wolf, and how fast they catch real shifts.

On the v2.0 weights, packaged with a drift reference of the generator's seed 9001
(``--reference``, 2,400 images), everything below runs through the archive's own handler
(``drift.offline``) and the gateway's own detector class (``drift.detector.Detector``):

- **False alarms.** 2,400 images of seed 9002, which the reference never saw, are resampled
  into one long unshifted stream; the detector runs at the threshold the gateway would use for
  the default target ERT, restarting after each alarm, until ``--alarms`` false alarms. The
  observed ERT (mean requests between them) is compared with the predicted one.
- **Detection delay.** ``--onsets`` times per shift: a fresh detector sees 100 unshifted
  requests, then requests of the shifted kind until it alarms; the delay is the number of
  shifted requests it took. Shifted images are rendered by the generator from seed 9003 with
  the shift applied before the camera's JPEG encoding, as a lamp, a lens or an encoder setting
  would: brightness x1.2 and x0.8, Gaussian blur sigma 2, JPEG quality 20. The class shift
  relabels detections of the unseen stream so that the reference's most common class makes 40 %
  of them.
- **Naming.** Every alarm names the signals past the threshold; the share of alarms whose
  first-named signal is the shifted one (luma, sharpness, class mix) is reported.

Writes ``reports/drift_bench.md`` and ``reports/drift_bench.json``; exits 1 when a target of
issue 26 is missed (the table says which).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from drift.calibrate import HELD_OUT_SHARE, build_reference
from drift.detector import DEFAULT_TARGET_ERT, MARGIN, Detector, Reference, class_total
from drift.offline import answers, handler_for, signals_of
from models.generate_dataset import DEFAULT_SIZE, encode_jpeg, image_rng, render
from operations.packaging import package
from serving.yolo_contract import CLASS_MIX, DRIFT_REFERENCE_FILE
from serving.yolo_files import image_files

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SEED, UNSEEN_SEED, SHIFTED_SEED = 9001, 9002, 9003
REFERENCE_IMAGES = ROOT / "var" / "reference" / f"defects-s{REFERENCE_SEED}"
UNSEEN_IMAGES = ROOT / "var" / "reference" / f"defects-s{UNSEEN_SEED}"
IMAGE_COUNT = 2400
WARM_UP = 100  # unshifted requests before each onset
MAX_DELAY = 5000  # an onset not caught within this many shifted requests counts as this many
CLASS_SHARE = 0.40


@dataclass(frozen=True)
class Shift:
    name: str
    expected: tuple[str, ...]  # the signals (or signal prefixes) that should be named first
    target_p90: int | None  # None: measured, no target
    kind: str = "image"  # "image": rendered with the shift; "class": detections relabelled
    factor: float = 1.0


SHIFTS = (
    Shift("brightness x1.2", ("luma",), 80, factor=1.2),
    Shift("brightness x0.8", ("luma",), 80, factor=0.8),
    Shift("blur sigma 2", ("sharpness",), 15, factor=2.0),
    Shift("jpeg quality 20", ("blockiness", "sharpness"), 600, factor=20),
    Shift(f"class mix: most common {CLASS_SHARE:.0%}", (CLASS_MIX,), 300, kind="class", factor=CLASS_SHARE),
    Shift("class mix: most common 60% (no target)", (CLASS_MIX,), None, kind="class", factor=0.6),
)


def shifted_jpeg(job: tuple[int, int, str, float]) -> bytes:
    """Image ``index`` of generator ``seed``, with the shift applied before the camera encodes it ("none": as is)."""
    seed, index, name, factor = job
    rng = image_rng(seed, "test", index)
    bgr, _ = render(rng, *DEFAULT_SIZE)
    if name.startswith("brightness"):
        bgr = np.clip(bgr.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)
    elif name.startswith("blur"):
        bgr = cv2.GaussianBlur(bgr, (0, 0), factor)
    if name.startswith("jpeg"):
        rng.integers(60, 96)  # the quality the camera would have picked: drawn, then overridden
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(factor)])
        return buf.tobytes()
    return encode_jpeg(rng, bgr)


def render_shifted(shift: Shift, count: int, seed: int = SHIFTED_SEED, jobs: int = 2) -> list[bytes]:
    work = [(seed, i, shift.name, shift.factor) for i in range(count)]
    with get_context("spawn").Pool(jobs) as pool:
        return pool.map(shifted_jpeg, work, chunksize=16)


def relabel(rows: list[dict], majority: str, share: float, reference_share: float, seed: int) -> list[dict]:
    """Rows whose other classes' detections became ``majority`` with the chance that makes its share ``share``."""
    rng = np.random.default_rng(seed)
    flip = (share - reference_share) / (1 - reference_share)
    out = []
    for row in rows:
        row = dict(row)
        for name in [n for n in row if n.startswith(CLASS_MIX) and n != majority and row[n]]:
            moved = int(rng.binomial(int(row[name]), flip))
            row[name] -= moved
            row[majority] = (row.get(majority) or 0.0) + moved
        out.append(row)
    return out


def class_mix_bound(mix: list, majority, share: float, rows: list[dict], target_ert: float) -> dict:
    """The fewest requests any detector needs, on average, to see the class shift at this false-alarm rate.

    Lorden's bound: a detector whose ERT is at least ``target_ert`` takes at least
    log(ERT) / I requests after the change, I being the Kullback-Leibler information one request
    carries: its detections' count times the divergence of the shifted class mix from the
    reference's (``relabel``'s shift: the majority's share raised, the others' scaled down).
    """
    p = np.array([s.share for s in mix])
    flip = (share - majority.share) / (1 - majority.share)
    q = np.where([s is majority for s in mix], share, p * (1 - flip))
    per_detection = float(np.sum(q * np.log(q / p)))
    detections = float(np.mean([class_total(row) for row in rows]))
    return {
        "kl_per_detection": per_detection,
        "detections_per_request": detections,
        "bound": float(np.log(target_ert) / (per_detection * detections)),
    }


def observed_ert(reference: Reference, threshold: float, scores: np.ndarray, alarms: int, seed: int) -> list[int]:
    """Run lengths between false alarms on a stream resampled from ``scores`` (unseen, unshifted)."""
    rng = np.random.default_rng(seed)
    detector = Detector(reference, threshold)
    lengths, since = [], 0
    while len(lengths) < alarms:
        for row in rng.integers(0, len(scores), size=10_000):
            since += 1
            if detector.update_scores(scores[row]):
                lengths.append(since)
                since = 0
                if len(lengths) == alarms:
                    break
    return lengths


def delays(
    reference: Reference, threshold: float, before: np.ndarray, after: np.ndarray, onsets: int, seed: int
) -> tuple[list[int], list[str]]:
    """Shifted requests until the alarm per onset, and the first-named signal of each alarm."""
    rng = np.random.default_rng(seed)
    found, named, early = [], [], 0
    while len(found) < onsets:
        detector = Detector(reference, threshold)
        if any(detector.update_scores(before[row]) for row in rng.integers(0, len(before), size=WARM_UP)):
            early += 1  # a false alarm before the onset: that onset does not count
            if early > onsets:
                raise SystemExit(f"error: {early} false alarms within {WARM_UP} unshifted requests: not calibrated")
            continue
        for step, row in enumerate(rng.integers(0, len(after), size=MAX_DELAY), start=1):
            crossed = detector.update_scores(after[row])
            if crossed:
                found.append(step)
                named.append(crossed[0].name)
                break
        else:
            found.append(MAX_DELAY)
            named.append("none")
    return found, named


def signal_costs(handler, images: list[bytes], reference: Reference, threshold: float) -> dict[str, float]:
    """CPU microseconds per image of each part of the drift watch, on the archive's own decode and answers.

    The handler's input tier (all of ``input_signals``, and ``blockiness`` within it) and output
    tier, and the gateway's scoring and CUSUM update for one request.
    """
    import yolo_signals

    from yolo_image import decode_upload

    spent = {"input tier (all)": 0.0, "blockiness (within it)": 0.0, "output tier": 0.0, "gateway detector": 0.0}
    detector = Detector(reference, threshold)
    for data in images:
        decoded = decode_upload(data, handler.config.max_pixels, handler.reduce_to, handler.task.kept_side)
        (body,) = answers(handler, [data])
        size = (body["image"]["width"], body["image"]["height"])
        for name, call in (
            ("input tier (all)", partial(yolo_signals.input_signals, decoded.rgb, decoded.width, decoded.height)),
            ("blockiness (within it)", partial(yolo_signals.blockiness, decoded.rgb, decoded.width)),
            ("output tier", partial(handler.task.signals, body, *size)),
            ("gateway detector", partial(detector.update, body["signals"])),
        ):
            started = time.process_time()
            for _ in range(20):
                call()
            spent[name] += (time.process_time() - started) / 20
    return {name: round(total / len(images) * 1e6, 1) for name, total in spent.items()}


def calibration_pools(rows: list[dict], reference: Reference, threshold: float) -> dict[str, float]:
    """The ERT each way of drawing the calibration streams predicts at ``threshold``, from the reference images.

    The archive's own table must be the default's (same images, same split): a check that the
    bench replays what packaging built.
    """
    predicted = {}
    for name, share in (("fitting half only", 0.0), ("held-out half only", 1.0), ("both (default)", HELD_OUT_SHARE)):
        table = dict(build_reference(rows, held_out_share=share).table)
        predicted[name] = table.get(threshold, float("nan"))
    if abs(predicted["both (default)"] - dict(reference.table)[threshold]) > 0.05:  # the archive keeps 1 decimal
        raise SystemExit(
            f"error: the archive's calibration {dict(reference.table)[threshold]} is not the bench's {predicted}"
        )
    return predicted


def package_v2(store: Path) -> Path:
    """yolo_v2.0.mar with a drift reference computed from the bench's reference images."""
    weights = ROOT / "models" / "weights" / "v2.0" / "best.pt"
    return package(weights, "2.0", store, reference=REFERENCE_IMAGES / "images", force=True).archive


def ensure_images(folder: Path, seed: int) -> list[Path]:
    images = image_files(folder / "images") if folder.is_dir() else []
    if len(images) < IMAGE_COUNT:
        from models.generate_dataset import generate

        generate(folder, seed, {"test": IMAGE_COUNT}, jobs=2)
        images = image_files(folder / "images")
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make drift-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--onsets", type=int, default=200, help="shift onsets per shift (default: %(default)s)")
    parser.add_argument("--alarms", type=int, default=60, help="false alarms to average (default: %(default)s)")
    parser.add_argument(
        "--pool", type=int, default=600, help="shifted images rendered per shift (default: %(default)s)"
    )
    parser.add_argument("--archive", type=Path, help="a v2.0 archive with a drift reference (default: package one)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports", help="report folder (default: reports/)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ensure_images(REFERENCE_IMAGES, REFERENCE_SEED)
    unseen_files = ensure_images(UNSEEN_IMAGES, UNSEEN_SEED)
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        archive = args.archive or package_v2(Path(tmp) / "store")
        handler = handler_for(archive, Path(tmp) / "unpacked")
        reference = Reference.from_stored(json.loads((Path(tmp) / "unpacked" / DRIFT_REFERENCE_FILE).read_text()))
        unseen, _ = signals_of(handler, (p.read_bytes() for p in unseen_files))
        print(f"signals of {len(unseen)} unseen images ({time.perf_counter() - started:.0f} s)", flush=True)
        pools = {}
        for shift in SHIFTS:
            if shift.kind == "image":
                pools[shift.name], _ = signals_of(handler, render_shifted(shift, args.pool))
                print(
                    f"signals of {args.pool} images, {shift.name} ({time.perf_counter() - started:.0f} s)", flush=True
                )
        threshold, predicted = reference.threshold(DEFAULT_TARGET_ERT, MARGIN)
        reference_rows, _ = signals_of(handler, (p.read_bytes() for p in image_files(REFERENCE_IMAGES / "images")))
        by_pool = calibration_pools(reference_rows, reference, threshold)
        print(f"calibration pools compared ({time.perf_counter() - started:.0f} s)", flush=True)
        costs = signal_costs(handler, [p.read_bytes() for p in unseen_files[:200]], reference, threshold)
    unseen_scores = np.stack([reference.scores(row) for row in unseen])
    lengths = observed_ert(reference, threshold, unseen_scores, args.alarms, seed=1)
    observed = float(np.mean(lengths))
    print(f"observed ERT {observed:,.0f} over {len(lengths)} false alarms ({time.perf_counter() - started:.0f} s)")
    mix = [s for s in reference.signals if s.share is not None]
    majority = max(mix, key=lambda s: s.share)
    results = []
    for index, shift in enumerate(SHIFTS):
        rows = (
            relabel(unseen, majority.name, shift.factor, majority.share, seed=2)
            if shift.kind == "class"
            else pools[shift.name]
        )
        after = np.stack([reference.scores(row) for row in rows])
        found, named = delays(reference, threshold, unseen_scores, after, args.onsets, seed=10 + index)
        print(f"{shift.name}: p90 delay {np.percentile(found, 90):.0f} ({time.perf_counter() - started:.0f} s)")
        alarmed = [name for name in named if name != "none"]  # an onset never caught raised no alarm to name
        right = sum(name.startswith(shift.expected) for name in alarmed) / max(len(alarmed), 1)
        results.append(
            {
                "shift": shift.name,
                "onsets": len(found),
                "mean": float(np.mean(found)),
                "median": float(np.median(found)),
                "p90": float(np.percentile(found, 90)),
                "target_p90": shift.target_p90,
                "expected": " or ".join(e.rstrip(":") for e in shift.expected),
                "named_first": right,
                "alarms": len(alarmed),
                "names": {name: named.count(name) for name in sorted(set(named))},
            }
        )
    summary = {
        "reference_images": reference.images,
        "fit_images": reference.fit_images,
        "calibration_images": reference.calibration_images,
        "signals": [s.name for s in reference.signals],
        "majority_class": {"signal": majority.name, "reference_share": majority.share},
        "class_mix_bound": class_mix_bound(mix, majority, CLASS_SHARE, unseen, predicted),
        "target_ert": DEFAULT_TARGET_ERT,
        "margin": MARGIN,
        "threshold": threshold,
        "predicted_ert": predicted,
        "observed_ert": observed,
        "observed_ert_ci95": 1.96 * float(np.std(lengths)) / np.sqrt(len(lengths)),
        "false_alarms": len(lengths),
        "unseen_images": len(unseen),
        "shifts": results,
        "cpu_us_per_image": costs,
        "predicted_by_pool": by_pool,
        "seconds": round(time.perf_counter() - started),
    }
    verdicts = verdict(summary)
    text = render_report(summary, verdicts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift_bench.json").write_text(json.dumps({**summary, "verdicts": verdicts}, indent=2) + "\n")
    (args.out / "drift_bench.md").write_text(text)
    print(text)
    return 0 if all(ok for _, ok in verdicts) else 1


def verdict(summary: dict) -> list[tuple[str, bool]]:
    predicted, observed = summary["predicted_ert"], summary["observed_ert"]
    found = [
        (f"observed ERT {observed:,.0f} >= {summary['target_ert']:,}", observed >= summary["target_ert"]),
        (
            f"observed ERT within +-30 % of predicted {predicted:,.0f} ({observed / predicted - 1:+.0%})",
            abs(observed / predicted - 1) <= 0.30,
        ),
        (f"false alarms averaged >= 50 ({summary['false_alarms']})", summary["false_alarms"] >= 50),
    ]
    for row in summary["shifts"]:
        if row["target_p90"] is None:
            continue
        found.append(
            (f"{row['shift']}: p90 delay {row['p90']:.0f} <= {row['target_p90']}", row["p90"] <= row["target_p90"])
        )
    named = sum(r["named_first"] * r["alarms"] for r in summary["shifts"]) / sum(r["alarms"] for r in summary["shifts"])
    found.append((f"first-named signal is the shifted one in {named:.1%} of alarms (>= 90 %)", named >= 0.90))
    return found


def render_report(summary: dict, verdicts: list[tuple[str, bool]]) -> str:
    lines = [
        "# Drift bench (make drift-bench)",
        "",
        f"Reference: {summary['reference_images']} images of generator seed {REFERENCE_SEED} "
        f"({summary['fit_images']} fit, {summary['calibration_images']} calibrate), "
        f"{len(summary['signals'])} signals: {', '.join(summary['signals'])}.",
        f"Threshold h = {summary['threshold']} for target ERT {summary['target_ert']:,} x margin {summary['margin']}.",
        "",
        "| false alarms | predicted ERT | observed ERT (95 % CI) | unseen images |",
        "|---|---|---|---|",
        f"| {summary['false_alarms']} | {summary['predicted_ert']:,.0f} | {summary['observed_ert']:,.0f} "
        f"(+-{summary['observed_ert_ci95']:,.0f}) | {summary['unseen_images']} (seed {UNSEEN_SEED}) |",
        "",
        "| shift | onsets | delay mean | median | p90 | target p90 | first-named = shifted signal | names |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["shifts"]:
        names = ", ".join(f"{n} {c}" for n, c in sorted(r["names"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {r['shift']} | {r['onsets']} | {r['mean']:.1f} | {r['median']:.0f} | {r['p90']:.0f} | "
            f"{'<= ' + str(r['target_p90']) if r['target_p90'] else '-'} | {r['named_first']:.0%} ({r['expected']}) "
            f"| {names} |"
        )
    lines += ["", "| calibration streams drawn from | predicted ERT at h | observed / predicted |", "|---|---|---|"]
    for name, value in summary["predicted_by_pool"].items():
        lines.append(f"| {name} | {value:,.0f} | {summary['observed_ert'] / value:.2f} |")
    bound, majority = summary["class_mix_bound"], summary["majority_class"]
    lines += [
        "",
        f"Class mix: {majority['signal']} makes {majority['reference_share']:.1%} of the reference's detections; "
        f"at {CLASS_SHARE:.0%} one detection carries {bound['kl_per_detection']:.5f} nats of information and a "
        f"request {bound['detections_per_request']:.2f} detections, so no detector holding the predicted ERT can "
        f"see the shift in fewer than {bound['bound']:,.0f} requests on average (Lorden's bound, log ERT / I).",
    ]
    lines += ["", "| CPU per image (us) | " + " | ".join(summary["cpu_us_per_image"]) + " |"]
    lines += ["|---" * (len(summary["cpu_us_per_image"]) + 1) + "|"]
    lines += ["| measured on 200 unseen images | " + " | ".join(map(str, summary["cpu_us_per_image"].values())) + " |"]
    lines += ["", *(f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in verdicts), ""]
    lines.append(f"{summary['seconds']} s in all.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
