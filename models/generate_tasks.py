"""Synthetic data for every Ultralytics task: detect, segment, pose, obb and classify.

Flat machined parts (bolts, nuts, washers, gaskets, brackets, plates, labels, pointed
tabs) are drawn on the same textured surfaces, lighting and sensor degradation as the
defect dataset (models/generate_dataset.py), so a nano model learns them in a few CPU
minutes while the images still look like camera frames. Every shape is a polygon, so
the labels are exact: boxes, outlines, keypoints and rotated corners come from the
geometry that was drawn, not from a detector.

Each image has its own RNG seeded by (seed, task, split, index): any image can be
regenerated alone, and a gate set can be rebuilt from held-out indices.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from models import generate_dataset as gd
from quality.tasks import task_of
from serving.yolo_contract import TASKS

SPLITS = gd.SPLITS
CLASSES = {
    "detect": ("bolt", "nut", "washer"),
    "segment": ("gasket", "bracket"),
    "pose": ("tab",),
    "obb": ("plate", "label"),
    "classify": ("bolt", "bracket", "nut", "washer"),  # sorted: Ultralytics numbers class folders alphabetically
}
KPT_NAMES = ("tip", "base", "left", "right")
FLIP_IDX = (0, 1, 3, 2)  # a horizontal mirror swaps left and right
SIZES = {"classify": (160, 160)}
DEFAULT_SIZE = (320, 240)
MODELS_DIR = Path(__file__).resolve().parent

Part = tuple[np.ndarray, str]  # (polygon Nx2 in pixels, layer: "body" | "hole" | "mark")


def task_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """Independent RNG per (task, split, image) so one image can be rebuilt without the others."""
    return np.random.default_rng([seed, TASKS.index(task), SPLITS.index(split), index])


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _place(local: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate local Nx2 points by angle and move them to (cx, cy)."""
    return local @ _rot(angle).T + np.array([cx, cy])


def _circle(r: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _hexagon(r: float) -> np.ndarray:
    return _circle(r, 6)


def _rect(w: float, h: float) -> np.ndarray:
    """Corners of a w x h rectangle centred on the origin, clockwise on screen from top-left."""
    return np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])


def bolt(rng, scale):
    """Hexagonal head on a threaded shaft; the thread is a row of dark marks."""
    length = rng.uniform(60, 100) * scale
    shaft_w = length * rng.uniform(0.18, 0.24)
    head = _hexagon(length * 0.24) + [-length / 2, 0]
    shaft = _rect(length * 0.8, shaft_w) + [length * 0.1, 0]
    marks = [_rect(length * 0.025, shaft_w * 0.8) + [length * (0.05 + 0.08 * k), 0] for k in range(5)]
    return [(head, "body"), (shaft, "body"), *[(m, "mark") for m in marks]], {}


def nut(rng, scale):
    """Hexagon with a round threaded hole."""
    r = rng.uniform(20, 36) * scale
    return [(_hexagon(r), "body"), (_circle(r * 0.42), "hole")], {}


def washer(rng, scale):
    """Thin flat ring."""
    r = rng.uniform(20, 36) * scale
    return [(_circle(r), "body"), (_circle(r * 0.55), "hole")], {}


def gasket(rng, scale):
    """Smooth irregular blob, like a cut rubber seal (one outline, no hole, so its polygon label is exact)."""
    radius = rng.uniform(24, 44) * scale
    phi = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    r = np.ones_like(phi)
    for k in range(2, 5):
        r += rng.uniform(0.05, 0.25 / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    outline = np.stack([radius * r * np.cos(phi), radius * rng.uniform(0.7, 1.0) * r * np.sin(phi)], 1)
    return [(outline, "body")], {}


def bracket(rng, scale):
    """L-shaped angle bracket with two mounting holes drawn as marks (the outline stays one polygon)."""
    a, b = rng.uniform(55, 95, size=2) * scale
    t = rng.uniform(0.22, 0.32) * min(a, b)
    outline = np.array([[0, 0], [a, 0], [a, t], [t, t], [t, b], [0, b]]) - [a / 3, b / 3]
    holes = [_circle(t * 0.25, 16) + p for p in ([a * 0.75, t / 2], [t / 2, b * 0.75])]
    return [(outline, "body"), *[(h - [a / 3, b / 3], "mark") for h in holes]], {}


def tab(rng, scale):
    """Pointed, deliberately asymmetric tab whose four corners are the keypoints tip, base, left and right.

    Local frame: +x points from base to tip; "left" is on the left of someone looking along +x on
    screen (negative y, as image y grows downwards). The left corner sits nearer the tip than the
    right one, so the shape itself says which side is which.
    """
    length = rng.uniform(70, 110) * scale
    width = length * rng.uniform(0.45, 0.6)
    corners = np.array(
        [
            [0.6 * length, 0],  # tip
            [-0.4 * length, 0],  # base
            [0.1 * length, -width / 2],  # left
            [-0.15 * length, width / 2],  # right
        ]
    )
    outline = corners[[0, 3, 1, 2]]
    marker = _circle(length * 0.06, 16) + [0.32 * length, 0]
    return [(outline, "body"), (marker, "mark")], {"keypoints": corners}


def plate(rng, scale):
    """Rectangular metal plate with a screw hole in each corner."""
    w = rng.uniform(70, 120) * scale
    h = w * rng.uniform(0.45, 0.7)
    rect = _rect(w, h)
    screws = [_circle(h * 0.08, 12) + c * 0.8 for c in rect]
    return [(rect, "body"), *[(s, "mark") for s in screws]], {"rect": rect}


def label(rng, scale):
    """Long paper label with lines of 'text'."""
    w = rng.uniform(60, 110) * scale
    h = w * rng.uniform(0.25, 0.38)
    rect = _rect(w, h)
    lines = int(rng.integers(2, 4))
    marks = [
        _rect(w * rng.uniform(0.5, 0.8), h * 0.12) + [-w * 0.05, h * (-0.3 + 0.6 * k / max(lines - 1, 1))]
        for k in range(lines)
    ]
    return [(rect, "body"), *[(m, "mark") for m in marks]], {"rect": rect}


SHAPES: dict[str, Callable] = {
    "bolt": bolt,
    "nut": nut,
    "washer": washer,
    "gasket": gasket,
    "bracket": bracket,
    "tab": tab,
    "plate": plate,
    "label": label,
}


def _fill(mask: np.ndarray, pts: np.ndarray, value: float) -> None:
    cv2.fillPoly(mask, [np.round(pts * 4).astype(np.int32)], value, cv2.LINE_AA, shift=2)


def _colors(rng: np.random.Generator, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body colour well away from the local background brightness, and a darker or lighter mark colour."""
    bright = background.mean() < 0.5
    level = rng.uniform(0.65, 0.95) if bright else rng.uniform(0.08, 0.35)
    body = np.clip(level + rng.uniform(-0.12, 0.12, size=3), 0, 1)
    mark = np.clip(body * 0.3 if bright else body + 0.45, 0, 1)
    return body, mark


def draw_object(rng: np.random.Generator, img: np.ndarray, parts: list[Part]) -> None:
    """Paint body, holes (background shows through) and marks into img in place."""
    h, w = img.shape[:2]
    body, marks = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    for pts, layer in parts:
        _fill(body if layer != "mark" else marks, pts, 0.0 if layer == "hole" else 1.0)
    centre = np.mean(np.concatenate([p for p, layer in parts if layer == "body"]), 0)
    cx, cy = (int(np.clip(v, 0, s - 1)) for v, s in zip(centre, (w, h), strict=True))
    body_color, mark_color = _colors(rng, img[max(cy - 20, 0) : cy + 20, max(cx - 20, 0) : cx + 20].mean((0, 1)))
    shade = 1 + gd.smooth_noise(rng, h, w, 60)[..., None] * 0.06
    gd._blend(img, body, body_color)
    img[:] = np.where(body[..., None] > 0, np.clip(img * shade, 0, 1), img)
    gd._blend(img, marks * body, mark_color)


def _outline_box(pts: np.ndarray) -> list[float]:
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def _overlaps(box: list[float], boxes: list[list[float]], gap: float) -> bool:
    return any(
        box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap for b in boxes
    )


def _n(v: float, full: int) -> str:
    return f"{min(max(v / full, 0.0), 1.0):.6f}"


def _xy_fields(points: list[list[float]], w: int, h: int) -> list[str]:
    return [_n(v, full) for x, y in points for v, full in ((x, w), (y, h))]


class Drawing:
    """How a task's images are drawn and labelled, detect's way: up to three parts spread over the frame,
    each labelled by its box. Each task below overrides only what differs."""

    framed = False  # True: one part filling a crop, as an inspection camera framed on it delivers
    chiral = False  # True: a part's mirror image is a different part, so training must not flip images

    def geometry(self, bodies: list[np.ndarray], extra: dict, cx: float, cy: float, angle: float) -> dict:
        """What a placed object's label holds besides its class and box (pixels): its ``bodies`` outlines
        and the shape's ``extra`` points, placed at (cx, cy) turned by ``angle``."""
        return {}

    def fields(self, obj: dict, box: list[str], w: int, h: int) -> list[str]:
        """A labelled object's numbers on its YOLO label line (``box``: cx cy w h, normalised)."""
        return box

    def truth(self, objects: list[dict]):
        """An image's labels from its placed objects."""
        return objects

    def yaml_lines(self) -> list[str]:
        """What the data YAML says besides the class names."""
        return []


class SegmentDrawing(Drawing):
    """Segment: each part labelled by its outline."""

    def geometry(self, bodies: list[np.ndarray], extra: dict, cx: float, cy: float, angle: float) -> dict:
        return {"polygon": bodies[0].tolist()}

    def fields(self, obj: dict, box: list[str], w: int, h: int) -> list[str]:
        return _xy_fields(obj["polygon"], w, h)


class PoseDrawing(Drawing):
    """Pose: each tab labelled by its box and its four corners (KPT_NAMES), all visible."""

    chiral = True  # the tab is drawn asymmetric (see ``tab``): mirrored, its left and right corners swap sides

    def geometry(self, bodies: list[np.ndarray], extra: dict, cx: float, cy: float, angle: float) -> dict:
        return {"keypoints": [[x, y, 2.0] for x, y in _place(extra["keypoints"], cx, cy, angle)]}

    def fields(self, obj: dict, box: list[str], w: int, h: int) -> list[str]:
        return box + [f for x, y, v in obj["keypoints"] for f in (_n(x, w), _n(y, h), f"{int(v)}")]

    def yaml_lines(self) -> list[str]:
        return [
            f"kpt_shape: [{len(KPT_NAMES)}, 3]",
            f"flip_idx: [{', '.join(map(str, FLIP_IDX))}]",
            "kpt_names:",
            f"  0: [{', '.join(KPT_NAMES)}]",
        ]


class ObbDrawing(Drawing):
    """Obb: each plate or label labelled by its rectangle's four corners."""

    def geometry(self, bodies: list[np.ndarray], extra: dict, cx: float, cy: float, angle: float) -> dict:
        return {"corners": _place(extra["rect"], cx, cy, angle).tolist()}

    def fields(self, obj: dict, box: list[str], w: int, h: int) -> list[str]:
        return _xy_fields(obj["corners"], w, h)


class ClassifyDrawing(Drawing):
    """Classify: one framed part, labelled by its class alone (its folder, no label file)."""

    framed = True

    def fields(self, obj: dict, box: list[str], w: int, h: int) -> list[str]:
        raise ValueError("no YOLO label files for task 'classify'")

    def truth(self, objects: list[dict]):
        return {"class_id": objects[0]["class_id"], "class": objects[0]["class"]}


DRAWINGS: dict[str, Drawing] = {
    "detect": Drawing(),
    "segment": SegmentDrawing(),
    "pose": PoseDrawing(),
    "obb": ObbDrawing(),
    "classify": ClassifyDrawing(),
}


def _label(task: str, cls: int, parts: list[Part], extra: dict, cx: float, cy: float, angle: float) -> dict:
    """Exact label of one placed object, in pixels of the image."""
    bodies = [_place(p, cx, cy, angle) for p, layer in parts if layer == "body"]
    obj = {"class_id": cls, "class": CLASSES[task][cls], "bbox": _outline_box(np.concatenate(bodies))}
    return obj | DRAWINGS[task].geometry(bodies, extra, cx, cy, angle)


def _place_one(
    rng, img, task: str, cls: int, parts, extra, objects: list[dict], size, spread: float, gap: float
) -> bool:
    """Try 40 random poses near the centre (``spread``: fraction of the frame) for a part inside the
    image and clear of the others; draw and label the first that fits."""
    w, h = size
    for _ in range(40):
        angle = rng.uniform(0, 2 * np.pi)
        cx, cy = w * rng.uniform(0.5 - spread, 0.5 + spread), h * rng.uniform(0.5 - spread, 0.5 + spread)
        obj = _label(task, cls, parts, extra, cx, cy, angle)
        x1, y1, x2, y2 = obj["bbox"]
        inside = x1 >= 2 and y1 >= 2 and x2 <= w - 2 and y2 <= h - 2
        if inside and not _overlaps(obj["bbox"], [o["bbox"] for o in objects], gap):
            draw_object(rng, img, [(_place(p, cx, cy, angle), layer) for p, layer in parts])
            objects.append(obj)
            return True
    return False


def render(task: str, rng: np.random.Generator, w: int, h: int, classes: list[int] | None = None):
    """Render one image of a task. Returns (BGR uint8 image, labels in pixels).

    Labels: a list of {"class_id", "class", "bbox": [x1, y1, x2, y2]} plus "polygon" (segment),
    "keypoints" [[x, y, visibility] x 4] (pose) or "corners" [[x, y] x 4] (obb); for classify a
    single {"class_id", "class"} for the one part in the picture.
    """
    names, drawing = CLASSES[task], DRAWINGS[task]
    img = gd.surface(rng, w, h)
    scale = min(w, h) / 240
    framed = drawing.framed
    if classes is None:
        n = 1 if framed else int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        classes = [int(c) for c in rng.integers(0, len(names), size=n)]
    objects: list[dict] = []
    spread = 0.1 if framed else 0.5
    for cls in classes:
        for factor in (2.0, 1.7, 1.4) if framed else (1.0,):  # framed: as large as still fits
            parts, extra = SHAPES[names[cls]](rng, scale * factor)
            if _place_one(rng, img, task, cls, parts, extra, objects, (w, h), spread, 8 * scale):
                break
    img = gd.apply_lighting(rng, img)
    bgr = gd.degrade(rng, img)
    return bgr, drawing.truth(objects)


def render_image(task: str, size: tuple[int, int], seed: int = 0, split: str = "test", index: int = 0):
    """(BGR image, labels) of one image of ``task`` at (width, height): the entry point tests call."""
    return render(task, task_rng(seed, task, split, index), *size)


def label_lines(task: str, objects: list[dict], w: int, h: int) -> str:
    """Pixel labels -> YOLO label text for the task (normalised to the image size)."""
    lines = []
    for o in objects:
        x1, y1, x2, y2 = o["bbox"]
        box = [_n((x1 + x2) / 2, w), _n((y1 + y2) / 2, h), _n(x2 - x1, w), _n(y2 - y1, h)]
        lines.append(" ".join([str(o["class_id"]), *DRAWINGS[task].fields(o, box, w, h)]))
    return "".join(line + "\n" for line in lines)


def data_yaml_text(task: str, path: Path | None = None, splits: dict[str, str] | None = None) -> str:
    """Ultralytics data YAML: class names, and for pose the keypoint shape, flip order and names."""
    lines = [f"path: {path.resolve()}"] if path else []
    lines += [f"{split}: {folder}" for split, folder in (splits or {}).items()]
    lines += ["names:", *[f"  {i}: {n}" for i, n in enumerate(CLASSES[task])]]
    lines += DRAWINGS[task].yaml_lines()
    return "\n".join(lines) + "\n"


def write_image(task: str, rng: np.random.Generator, size: tuple[int, int], image_path: Path, label_path: Path | None):
    """Render one image and write it as JPEG (plus its YOLO label file); returns its labels."""
    bgr, labels = render(task, rng, *size)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image_path.write_bytes(gd.encode_jpeg(rng, bgr))
    if label_path is not None:
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text(label_lines(task, labels, *size))
    return labels


def generate(task: str, out: Path, seed: int, counts: dict[str, int], size: tuple[int, int] | None = None) -> Path:
    """Write a task's dataset under ``out``; returns what Ultralytics' ``data=`` takes.

    detect/segment/pose/obb: images/<split>/, labels/<split>/ and data.yaml (returned).
    classify: <split>/<class>/*.jpg folders (``out`` itself is returned).
    """
    size = size or SIZES.get(task, DEFAULT_SIZE)
    out = Path(out)
    for split in SPLITS:
        for i in range(counts.get(split, 0)):
            rng = task_rng(seed, task, split, i)
            stem = f"{split}_{i:05d}"
            if task_of(task).classifies:
                bgr, truth = render(task, rng, *size)
                path = out / split / truth["class"] / f"{stem}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(gd.encode_jpeg(rng, bgr))
            else:
                write_image(
                    task, rng, size, out / "images" / split / f"{stem}.jpg", out / "labels" / split / f"{stem}.txt"
                )
    manifest = {"task": task, "seed": seed, "size": list(size), "counts": {s: counts.get(s, 0) for s in SPLITS}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if task_of(task).classifies:
        return out
    yaml_path = out / "data.yaml"
    splits = {s: f"images/{s}" for s in SPLITS}
    yaml_path.write_text(data_yaml_text(task, out, splits))
    return yaml_path


def write_labelled_set(task: str, out: Path, seed: int, split: str, count: int, size: tuple[int, int]) -> Path:
    """A small flat labelled set (a deploy gate set): images/ + labels/ + data.yaml, or <class>/ folders.

    Images are indices 0..count-1 of ``split``; use a split the model never trained on.
    """
    out = Path(out)
    for i in range(count):
        rng = task_rng(seed, task, split, i)
        stem = f"{task}_{split}_{i:03d}"
        if task_of(task).classifies:
            bgr, truth = render(task, rng, *size)
            path = out / truth["class"] / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gd.encode_jpeg(rng, bgr))
        else:
            write_image(task, rng, size, out / "images" / f"{stem}.jpg", out / "labels" / f"{stem}.txt")
    if not task_of(task).classifies:
        (out / "data.yaml").write_text(data_yaml_text(task))
    return out


def dataset_name(task: str, seed: int, counts: dict[str, int], size: tuple[int, int]) -> str:
    """Directory name that encodes every generation parameter, so changed args never reuse stale data."""
    return f"{task}_s{seed}_{size[0]}x{size[1]}_{counts['train']}-{counts['val']}-{counts['test']}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=TASKS, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output dir (default models/datasets/<name from args>)")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--size", type=gd.parse_size, help="WIDTHxHEIGHT (default 320x240, classify 160x160)")
    args = ap.parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    size = args.size or SIZES.get(args.task, DEFAULT_SIZE)
    out = args.out or MODELS_DIR / "datasets" / dataset_name(args.task, args.seed, counts, size)
    print(generate(args.task, out, args.seed, counts, size))


if __name__ == "__main__":
    main()
