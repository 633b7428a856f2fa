"""Synthetic industrial-defect dataset generator (YOLO format).

Renders textured part surfaces (brushed metal, plastic, painted) with three defect
classes - 0 scratch, 1 dent, 2 stain - plus defect-free parts, then degrades them
with lighting gradients, sensor noise, blur and JPEG compression so the detector
cannot key on a clean background.

Every image is drawn from its own RNG seeded by (seed, split, index). That makes
the output byte-identical for a given seed and lets a test regenerate just the
held-out test split (``--train 0 --val 0``) and get exactly the committed data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("scratch", "dent", "stain")
SPLITS = ("train", "val", "test")
DEFAULT_SIZE = (640, 480)
CLEAN_FRACTION = 0.15
MODELS_DIR = Path(__file__).resolve().parent


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``640x480`` (width x height) or ``512`` (square) into (width, height)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    w, h = (int(p) for p in parts)
    if w < 32 or h < 32:
        raise ValueError(f"image size too small: {text}")
    return w, h


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent RNG per image so any split/index can be regenerated on its own."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1, 1, size=(h // cell + 3, w // cell + 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)


def surface(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Return an RGB float32 brushed-metal, plastic or painted surface in [0, 1]."""
    material = str(rng.choice(["metal", "plastic", "painted"]))
    if material == "metal":
        grey = rng.uniform(0.45, 0.75)
        base = np.array([grey, grey, grey]) + rng.uniform(-0.03, 0.03, size=3)
        grain = rng.normal(size=(h, w)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), sigmaX=rng.uniform(8, 20), sigmaY=0.6)
        if rng.random() < 0.5:
            grain = cv2.resize(grain.T, (w, h))
        texture = grain / (grain.std() + 1e-6) * rng.uniform(0.02, 0.06)
    elif material == "plastic":
        base = rng.uniform(0.15, 0.85, size=3)
        texture = rng.normal(size=(h, w)).astype(np.float32) * rng.uniform(0.005, 0.02)
        texture += smooth_noise(rng, h, w, 120) * 0.04
    else:
        base = rng.uniform(0.1, 0.9, size=3)
        peel = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), rng.uniform(1.5, 3.5))
        texture = peel / (peel.std() + 1e-6) * rng.uniform(0.015, 0.04)
    return np.clip(base[None, None, :] + texture[..., None], 0, 1).astype(np.float32)


def _blend(img: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    """Alpha-blend a colour into img in place, weighted by mask in [0, 1]."""
    img[:] = img * (1 - mask[..., None]) + color[None, None, :] * mask[..., None]


def _mask_box(mask: np.ndarray, thr: float, pad: int) -> tuple[int, int, int, int]:
    """Tight pixel box around mask > thr, padded and clipped to the image."""
    ys, xs = np.nonzero(mask > thr)
    h, w = mask.shape
    return (
        max(int(xs.min()) - pad, 0),
        max(int(ys.min()) - pad, 0),
        min(int(xs.max()) + 1 + pad, w),
        min(int(ys.max()) + 1 + pad, h),
    )


def draw_scratch(rng: np.random.Generator, img: np.ndarray, cx: float, cy: float, scale: float):
    """Thin, slightly bowed bright or dark line at any angle; returns its pixel box."""
    h, w = img.shape[:2]
    length = rng.uniform(70, 240) * scale
    angle = rng.uniform(0, np.pi)
    bow = rng.uniform(-0.08, 0.08) * length
    t = np.linspace(-0.5, 0.5, 9)
    d, n = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    pts = np.array([cx, cy]) + t[:, None] * length * d + (1 - 4 * t[:, None] ** 2) * bow * n
    mask = np.zeros((h, w), np.float32)
    thickness = int(rng.integers(2, 5))
    cv2.polylines(mask, [np.round(pts * 4).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA, shift=2)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.7)
    mask = np.clip(mask * 1.5, 0, 1)
    local = img[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]
    sign = 1.0 if (rng.random() < 0.6 and local.mean() < 0.75) or local.mean() < 0.3 else -1.0
    color = np.clip(local + sign * rng.uniform(0.22, 0.5), 0, 1)
    _blend(img, mask * rng.uniform(0.7, 1.0), color)
    return _mask_box(mask, 0.15, 2)


def draw_dent(rng: np.random.Generator, img: np.ndarray, cx: float, cy: float, scale: float):
    """Shallow elliptical depression shaded by a directional light; returns its pixel box."""
    h, w = img.shape[:2]
    a = rng.uniform(16, 46) * scale
    b = a * rng.uniform(0.6, 1.0)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / a
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / b
    r2 = u**2 + v**2
    inside = r2 < 1
    light = rng.uniform(0, 2 * np.pi)
    lx, ly = np.cos(light), np.sin(light)
    # Height z = -(1 - r^2)^2; its slope along the light direction gives the crescent shading.
    slope = np.where(inside, 4 * (1 - r2) * (u * lx + v * ly), 0)
    shade = slope * rng.uniform(0.12, 0.3) - np.where(inside, (1 - r2) ** 2, 0) * rng.uniform(0.03, 0.1)
    shade = cv2.GaussianBlur(shade.astype(np.float32), (0, 0), 1.0)
    img[:] = np.clip(img + shade[..., None], 0, 1)
    hw = np.sqrt((a * np.cos(theta)) ** 2 + (b * np.sin(theta)) ** 2)
    hh = np.sqrt((a * np.sin(theta)) ** 2 + (b * np.cos(theta)) ** 2)
    return (max(int(cx - hw), 0), max(int(cy - hh), 0), min(int(np.ceil(cx + hw)), w), min(int(np.ceil(cy + hh)), h))


def draw_stain(rng: np.random.Generator, img: np.ndarray, cx: float, cy: float, scale: float):
    """Irregular translucent blob (oil, rust, water mark), sometimes ring-shaped; returns its pixel box."""
    h, w = img.shape[:2]
    radius = rng.uniform(18, 55) * scale
    phi = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(phi)
    for k in range(2, 6):
        r += rng.uniform(0, 0.25 / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.6, 1.0)
    pts = np.stack([cx + radius * r * np.cos(phi), cy + radius * aspect * r * np.sin(phi)], 1)
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [np.round(pts * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    mask = cv2.GaussianBlur(mask, (0, 0), max(radius * 0.12, 1.0))
    if rng.random() < 0.35:
        ring = np.clip(1 - np.abs(mask - 0.5) * 4, 0, 1)
        mask = mask * 0.4 + ring * 0.6
    tint = np.array([[0.45, 0.25, 0.08], [0.1, 0.08, 0.05], [0.55, 0.4, 0.15], [0.3, 0.3, 0.35]])[rng.integers(4)]
    local = img[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]
    color = np.clip(0.5 * tint + 0.5 * local * rng.uniform(0.3, 0.6), 0, 1)
    _blend(img, mask * rng.uniform(0.5, 0.85), color)
    return _mask_box(mask, 0.2, 1)


def draw_hole(rng: np.random.Generator, img: np.ndarray, scale: float) -> None:
    """Defect-free distractor: a drilled mounting hole with a bright chamfer."""
    h, w = img.shape[:2]
    r = rng.uniform(8, 22) * scale
    c = (int(rng.uniform(r + 2, w - r - 2)), int(rng.uniform(r + 2, h - r - 2)))
    cv2.circle(img, c, int(r + 2), tuple(float(x) for x in np.clip(img[c[1], c[0]] + 0.15, 0, 1)), -1, cv2.LINE_AA)
    cv2.circle(img, c, int(r), (0.05, 0.05, 0.05), -1, cv2.LINE_AA)


DRAWERS = (draw_scratch, draw_dent, draw_stain)


def _overlaps(box, boxes, gap: int = 6) -> bool:
    return any(
        box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap for b in boxes
    )


def render(rng: np.random.Generator, w: int, h: int, classes: list[int] | None = None):
    """Render one image. Returns (BGR uint8 image, [(class_id, x1, y1, x2, y2), ...] in pixels).

    ``classes`` forces the defect list (used for curated samples); by default the
    count and classes are random, with CLEAN_FRACTION of images defect-free.
    """
    img = surface(rng, w, h)
    scale = min(w, h) / 480
    if classes is None:
        n = 0 if rng.random() < CLEAN_FRACTION else int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        classes = [int(c) for c in rng.integers(0, len(CLASSES), size=n)]
    if rng.random() < 0.25:
        draw_hole(rng, img, scale)
    boxes: list[tuple[int, int, int, int, int]] = []
    margin = 60 * scale
    for cls in classes:
        for _ in range(30):
            cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
            trial = img.copy()
            box = DRAWERS[cls](rng, trial, cx, cy, scale)
            if box[2] - box[0] >= 4 and box[3] - box[1] >= 4 and not _overlaps(box, [b[1:] for b in boxes]):
                img = trial
                boxes.append((cls, *box))
                break
    img = apply_lighting(rng, img)
    return degrade(rng, img), boxes


def apply_lighting(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Linear illumination gradient plus a soft hotspot, as from an off-axis lamp."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang)) * rng.uniform(0.1, 0.5)
    hx, hy, hr = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.3, 0.8) * max(w, h)
    spot = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * hr**2)) * rng.uniform(0, 0.3)
    gain = rng.uniform(0.7, 1.05) * (1 + ramp + spot)
    return np.clip(img * gain[..., None], 0, 1)


def degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Sensor noise and optional defocus blur; returns BGR uint8 (JPEG quality is applied on save)."""
    img = img + rng.normal(0, rng.uniform(0.004, 0.025), img.shape).astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    rgb = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def encode_jpeg(rng: np.random.Generator, bgr: np.ndarray) -> bytes:
    """JPEG-encode at a random quality so compression artefacts vary per image."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def yolo_lines(boxes, w: int, h: int) -> str:
    """Pixel boxes -> YOLO label text (class cx cy bw bh, normalised, one per line)."""
    lines = []
    for cls, x1, y1, x2, y2 in boxes:
        lines.append(f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "".join(line + "\n" for line in lines)


def write_dataset_yaml(out: Path) -> Path:
    """Ultralytics dataset description; absolute path so it works from any cwd."""
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    text = f"path: {out.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}\n"
    path = out / "dataset.yaml"
    path.write_text(text)
    return path


def sample(
    seed: int, split: str, index: int, size: tuple[int, int] = DEFAULT_SIZE, blur: float = 0.0
) -> tuple[bytes, str]:
    """Image ``index`` of ``split`` for ``seed``: (JPEG bytes, YOLO label text), as ``generate`` writes it.

    ``blur`` > 0 defocuses the rendered picture with a Gaussian of that sigma (pixels) before the
    camera's JPEG encoding, as an out-of-focus lens would; the labels stay those of the sharp scene.
    """
    w, h = size
    rng = image_rng(seed, split, index)
    bgr, boxes = render(rng, w, h)
    if blur > 0:
        bgr = cv2.GaussianBlur(bgr, (0, 0), blur)
    return encode_jpeg(rng, bgr), yolo_lines(boxes, w, h)


def _write(job: tuple[Path, int, str, int, int, int, float]) -> None:
    out, seed, split, w, h, i, blur = job
    jpeg, label = sample(seed, split, i, (w, h), blur)
    stem = f"{split}_{i:05d}"
    (out / "images" / split / f"{stem}.jpg").write_bytes(jpeg)
    (out / "labels" / split / f"{stem}.txt").write_text(label)


def generate(
    out: Path,
    seed: int,
    counts: dict[str, int],
    size: tuple[int, int] = DEFAULT_SIZE,
    jobs: int = 1,
    blur: float = 0.0,
) -> Path:
    """Write images/, labels/, dataset.yaml and manifest.json under ``out``; returns the yaml path.

    ``jobs`` processes render in parallel; every image has its own RNG, so the bytes do not depend on it.
    ``blur`` > 0 renders every image defocused by a Gaussian of that sigma (see ``sample``), labels unchanged;
    the manifest records it (only when non-zero, so blur-free manifests keep their bytes).
    """
    w, h = size
    out = Path(out)
    work = []
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        work += [(out, seed, split, w, h, i, float(blur)) for i in range(counts.get(split, 0))]
    if jobs > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(jobs) as pool:
            pool.map(_write, work, chunksize=16)
    else:
        for job in work:
            _write(job)
    manifest = {"seed": seed, "size": [w, h], "counts": {s: counts.get(s, 0) for s in SPLITS}, "classes": CLASSES}
    if blur:
        manifest["blur"] = float(blur)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return write_dataset_yaml(out)


def dataset_name(seed: int, counts: dict[str, int], size: tuple[int, int], blur: float = 0.0) -> str:
    """Directory name that encodes every generation parameter, so changed args never reuse stale data."""
    name = f"defects_s{seed}_{size[0]}x{size[1]}_{counts['train']}-{counts['val']}-{counts['test']}"
    return f"{name}_blur{blur:g}" if blur else name


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output dir (default models/datasets/<name from args>)")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="WIDTHxHEIGHT or SIDE (default 640x480)")
    ap.add_argument("--jobs", type=int, default=1, help="processes rendering in parallel (default 1)")
    ap.add_argument(
        "--blur", type=float, default=0.0, metavar="SIGMA", help="defocus every image: Gaussian blur sigma (default 0)"
    )
    args = ap.parse_args(argv)
    if args.blur < 0:
        ap.error("--blur must be >= 0")
    counts = {"train": args.train, "val": args.val, "test": args.test}
    out = args.out or MODELS_DIR / "datasets" / dataset_name(args.seed, counts, args.size, args.blur)
    print(generate(out, args.seed, counts, args.size, args.jobs, args.blur))


if __name__ == "__main__":
    main()
