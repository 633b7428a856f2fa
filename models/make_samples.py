"""Build samples/: a few generated images with known defects that every published model gets right.

Serving tests assert that the deployed model finds these defects (IoU > 0.5), so each
sample is rendered with a forced defect list and kept only if all the given weights
detect every defect with the right class and report nothing else, with a margin from the
confidence threshold on both sides: every defect scores at least conf + margin and nothing
else reaches conf - margin, on the file as written and on its re-encoding at JPEG quality 90
(a perturbation larger than a change of CPU, which moves scores by about 0.001). A sample that
only clears the threshold by a hair would pass on one CPU and fail on another.
Candidates come from a fixed seed, so rerunning reproduces the same files.

The samples are also our model's gate set: gate.yaml's threshold is the lowest recall any of
the given weights reaches on them (as written and re-encoded), less GATE_MARGIN.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import cv2  # noqa: E402
import generate_dataset as gd  # noqa: E402
import numpy as np  # noqa: E402
from metrics import box_iou  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent
ROOT = MODELS_DIR.parent
REENCODE_QUALITY = 90
GATE_MARGIN = 0.15  # one of the samples' nine defects (1/9 = 0.11) may be missed before the gate refuses
SPECS = {
    "scratch_01": [0],
    "dent_01": [1],
    "stain_01": [2],
    "mixed_01": [0, 1, 2],
    "mixed_02": [1, 2, 1],
    "clean_01": [],
}


def reencode(data: bytes, quality: int = REENCODE_QUALITY) -> bytes:
    """The image decoded and encoded again as JPEG at ``quality``: a small, realistic perturbation."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def reencoded_copy(samples: Path, dest: Path) -> Path:
    """A copy of the samples folder (labels, data.yaml, gate.yaml; not gates/) with every image re-encoded."""
    shutil.copytree(samples, dest, ignore=shutil.ignore_patterns("gates"))
    for image in dest.glob("*.jpg"):
        image.write_bytes(reencode(image.read_bytes()))
    return dest


def margins(gt: list[tuple], dets: list[tuple], conf: float, min_iou: float) -> tuple[float, float] | None:
    """How far a prediction stays from the threshold: (lowest defect score - conf, conf - highest other score).

    ``dets`` are (class, score, x1, y1, x2, y2) predicted at a confidence well below ``conf``. Each
    defect takes the best-scoring detection of its class with IoU > min_iou (one each); None when a
    defect has no such detection at all.
    """
    used: set[int] = set()
    lowest = 1.0
    for cls, *box in gt:
        candidates = [
            j
            for j, d in enumerate(dets)
            if j not in used
            and d[0] == cls
            and box_iou(np.array([box], float), np.array([d[2:]], float))[0, 0] > min_iou
        ]
        if not candidates:
            return None
        best = max(candidates, key=lambda j: dets[j][1])
        used.add(best)
        lowest = min(lowest, dets[best][1])
    highest_other = max((d[1] for j, d in enumerate(dets) if j not in used), default=0.0)
    return (lowest - conf if gt else 1.0 - conf), conf - highest_other


def predict(model, data: bytes, imgsz: int, floor: float) -> list[tuple]:
    """(class, score, x1, y1, x2, y2) of every detection scoring at least ``floor``."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    b = model.predict(bgr, imgsz=imgsz, conf=floor, device="cpu", verbose=False)[0].boxes
    return [(int(c), s, *xyxy) for c, s, xyxy in zip(b.cls.tolist(), b.conf.tolist(), b.xyxy.tolist(), strict=True)]


def build(
    out: Path,
    weights: list[Path],
    seed: int,
    imgsz: int,
    conf: float,
    margin: float,
    min_iou: float,
    size: tuple[int, int],
    max_tries: int = 1000,
) -> dict:
    """Render, verify and write every sample and the gate threshold; returns the ground-truth document."""
    from train import pin_threads
    from ultralytics import YOLO

    models = [YOLO(str(w)) for w in weights]
    for m in models:
        pin_threads(m, 2)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    doc = {
        "classes": list(gd.CLASSES),
        "imgsz": imgsz,
        "conf": conf,
        "margin": margin,
        "reencoded_quality": REENCODE_QUALITY,
        "min_iou": min_iou,
        "verified_with": [str(w.relative_to(ROOT)) for w in weights],
        "images": {},
    }
    for k, (name, classes) in enumerate(SPECS.items()):
        for attempt in range(max_tries):
            rng = np.random.default_rng([seed, k, attempt])
            bgr, boxes = gd.render(rng, *size, classes=list(classes))
            if len(boxes) != len(classes):
                continue
            data = gd.encode_jpeg(rng, bgr)
            found = [
                margins(boxes, predict(m, d, imgsz, conf / 4), conf, min_iou)
                for m in models
                for d in (data, reencode(data))
            ]
            if all(f is not None and min(f) >= margin for f in found):
                break
        else:
            raise RuntimeError(f"no candidate for {name} keeps a {margin} margin with every model in {max_tries} tries")
        (out / f"{name}.jpg").write_bytes(data)
        (out / "labels" / f"{name}.txt").write_text(gd.yolo_lines(boxes, *size))
        lowest = (
            [round(conf + min(f[0] for f in found[2 * i : 2 * i + 2]), 3) for i in range(len(models))]
            if boxes
            else None
        )
        other = [round(conf - min(f[1] for f in found[2 * i : 2 * i + 2]), 3) for i in range(len(models))]
        doc["images"][f"{name}.jpg"] = {
            "width": size[0],
            "height": size[1],
            "candidate": [seed, k, attempt],
            "lowest_defect_confidence_per_model": lowest,
            "highest_other_confidence_per_model": other,
            "defects": [
                {"class": gd.CLASSES[c], "class_id": c, "bbox": [x1, y1, x2, y2]} for c, x1, y1, x2, y2 in boxes
            ],
        }
        print(f"{name}: attempt {attempt}, lowest defect score {lowest}, highest other {other}", flush=True)
    (out / "ground_truth.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_gate(out, weights, imgsz, conf)
    write_readme(out, doc)
    return doc


def write_gate(out: Path, weights: list[Path], imgsz: int, conf: float) -> float:
    """gate.yaml: the lowest recall any weights reach on the samples and their re-encodings, less GATE_MARGIN."""
    sys.path.insert(0, str(ROOT))
    from quality import gate_scoring, gate_sets
    from quality.tasks import task_of
    from quality.ultralytics_answers import reference_answers

    (out / "gate.yaml").write_text("task: detect\nmetric: recall\nthreshold: 0.0\n")  # provisional, to load
    with tempfile.TemporaryDirectory() as tmp:
        copy = reencoded_copy(out, Path(tmp) / "reencoded")
        measured = {}
        for w in weights:
            for label, gate_dir in (("as written", out), (f"JPEG q{REENCODE_QUALITY}", copy)):
                task, items = gate_sets.load_gate_set(gate_dir)
                answers = reference_answers(w, [i["image"] for i in items], imgsz=imgsz, conf=conf)
                measured[f"{w.relative_to(ROOT)}, {label}"] = task_of(task).gate_metric(items, answers)
    lowest = min(measured.values())
    threshold = gate_scoring.threshold_from(lowest, margin=GATE_MARGIN)
    lines = "".join(f"#   {k}: {v:.4f}\n" for k, v in measured.items())
    (out / "gate.yaml").write_text(
        "# Gate set of our own defect detector: the labelled samples beside this file (images here, YOLO\n"
        "# labels in labels/, classes in data.yaml). package_mar.sh --gate-data samples carries it into the\n"
        "# archive and deploy.sh scores the served version on it.\n"
        "# Measured by models/make_samples.py: recall (IoU >= 0.5, right class) of\n"
        f"# YOLO(best.pt).predict(conf={conf}, imgsz={imgsz}) on these images as written and re-encoded\n"
        f"# as JPEG quality {REENCODE_QUALITY}:\n"
        f"{lines}"
        f"# threshold = the lowest, {lowest:.4f}, less {GATE_MARGIN} (one of the nine defects may be missed),\n"
        "# floored to 0.05, at most 0.9. Every sample keeps a confidence margin from conf (samples/README.md), so the\n"
        "# released versions reach the measured recall on every CPU, not only the one that measured it.\n"
        f"task: detect\nmetric: recall\nthreshold: {threshold}\nmeasured: {round(lowest, 4)}\nimgsz: {imgsz}\n"
    )
    print(f"gate.yaml: lowest recall {lowest:.4f} -> threshold {threshold}", flush=True)
    return threshold


def write_readme(out: Path, doc: dict) -> None:
    """Table of what each sample contains, generated so it can never drift from ground_truth.json."""
    first = next(iter(doc["images"].values()))
    rows = []
    for name, im in doc["images"].items():
        defects = ", ".join(f"{d['class']} [{', '.join(str(v) for v in d['bbox'])}]" for d in im["defects"]) or "none"
        rows.append(f"| `{name}` | `labels/{Path(name).stem}.txt` | {len(im['defects'])} | {defects} |")
    checked = ", ".join(f"`{w}`" for w in doc["verified_with"])
    quality, high, low = doc["reencoded_quality"], doc["conf"] + doc["margin"], doc["conf"] - doc["margin"]
    text = f"""# Sample images

Generated by `models/make_samples.py` (render seed {first["candidate"][0]}), {first["width"]}x{first["height"]} JPEG.
Every sample was checked with {checked} (Ultralytics predict,
imgsz {doc["imgsz"]}), on the file and on its re-encoding as JPEG quality {quality}: each defect is found with
the right class and IoU > {doc["min_iou"]} at a confidence of at least conf + margin = {high:.2f}, and
nothing else reaches conf - margin = {low:.2f} (the clean part yields no detections). That margin
keeps every assertion on these samples true on any CPU; a score 0.001 from the threshold is not.
Per sample and model, `ground_truth.json` records the lowest defect score and the highest other
score (0.0: nothing reached conf / 4). `gate.yaml`'s threshold is measured on these images too.

Ground truth: `labels/<name>.txt` (YOLO: class cx cy w h, normalised) and `ground_truth.json`
(pixel boxes `[x1, y1, x2, y2]` in the original image, class names). Classes: 0 scratch, 1 dent, 2 stain.

| image | YOLO label | defects | class [x1, y1, x2, y2] (pixels) |
|---|---|---|---|
"""
    (out / "README.md").write_text(text + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--weights",
        type=Path,
        nargs="+",
        default=[MODELS_DIR / "weights" / "v1.0" / "best.pt", MODELS_DIR / "weights" / "v2.0" / "best.pt"],
    )
    ap.add_argument("--out", type=Path, default=MODELS_DIR.parent / "samples")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--margin", type=float, default=0.08, help="confidence margin from --conf on both sides")
    ap.add_argument("--min-iou", type=float, default=0.6, help="margin above the 0.5 the serving tests use")
    ap.add_argument("--size", type=gd.parse_size, default=gd.DEFAULT_SIZE)
    args = ap.parse_args(argv)
    build(
        args.out,
        [w.resolve() for w in args.weights],
        args.seed,
        args.imgsz,
        args.conf,
        args.margin,
        args.min_iou,
        args.size,
    )


if __name__ == "__main__":
    main()
