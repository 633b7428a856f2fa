"""Build a versioned TorchServe archive (serving/model-store/<name>_v<version>.mar) from YOLO weights.

The weights are loaded and run on a sample image before anything is packaged, so a
broken file never becomes an archive. An existing version is never overwritten unless
``--force`` is given: a version number must always mean the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "serving"
VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="package_mar.sh",
        description="Package YOLO weights into a versioned TorchServe .mar archive.",
    )
    parser.add_argument(
        "--weights", default="models/weights/best.pt", help="Ultralytics detection weights (default: %(default)s)"
    )
    parser.add_argument("--version", default="1.0", help="model version, e.g. 1.0 or 2.1.3 (default: %(default)s)")
    parser.add_argument("--name", default="yolo", help="model name served by TorchServe (default: %(default)s)")
    parser.add_argument(
        "--imgsz", type=int, help="inference image size (default: the size the weights were trained at)"
    )
    parser.add_argument("--store", default="serving/model-store", help="model store directory (default: %(default)s)")
    parser.add_argument(
        "--config", default="serving/model-config.yaml", help="model-config template (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing archive of the same version")
    return parser.parse_args(argv)


def archive_path(store: Path, name: str, version: str) -> Path:
    return store / f"{name}_v{version}.mar"


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(weights: Path, imgsz: int | None) -> tuple[int, dict[int, str]]:
    """Load the weights and run one prediction; return the image size to serve at and the class names."""
    from ultralytics import YOLO

    try:
        model = YOLO(str(weights))
    except Exception as exc:  # any loader failure means "not usable weights"
        raise SystemExit(f"error: {weights} does not load as Ultralytics weights: {exc}") from exc
    if model.task != "detect":
        raise SystemExit(f"error: {weights} is a {model.task!r} model; only detection weights are served.")
    trained = model.ckpt.get("train_args", {}).get("imgsz") if isinstance(getattr(model, "ckpt", None), dict) else None
    size = int(imgsz or trained or 640)
    if size % 32:
        raise SystemExit(f"error: image size must be a multiple of 32, got {size}")
    sample = next(iter(sorted((ROOT / "samples").glob("*.jpg"))), None)
    source = str(sample) if sample else np.full((size, size, 3), 114, dtype=np.uint8)
    try:
        model.predict(source, imgsz=size, device="cpu", verbose=False)
    except Exception as exc:
        raise SystemExit(f"error: {weights} loads but fails to predict: {exc}") from exc
    return size, {int(k): str(v) for k, v in model.names.items()}


def render_config(template: Path, imgsz: int, dest: Path) -> None:
    config = yaml.safe_load(template.read_text())
    config.setdefault("handler", {})["imgsz"] = imgsz
    dest.write_text(yaml.safe_dump(config, sort_keys=False))


def build(args: argparse.Namespace) -> Path:
    if not VERSION_RE.match(args.version):
        raise SystemExit(f"error: version must look like 1.0 or 2.1.3, got {args.version!r}")
    if not NAME_RE.match(args.name):
        raise SystemExit(f"error: name must be letters, digits, '-' or '_', got {args.name!r}")
    weights = (ROOT / args.weights).resolve() if not os.path.isabs(args.weights) else Path(args.weights)
    if not weights.is_file():
        raise SystemExit(f"error: weights file not found: {args.weights}")
    store = (ROOT / args.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    target = archive_path(store, args.name, args.version)
    if target.exists() and not args.force:
        raise SystemExit(
            f"error: {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} exists; "
            "a version is immutable, pick a new --version or pass --force"
        )

    imgsz, names = check_weights(weights, args.imgsz)
    print(f"weights ok: {weights.name}, classes {names}, imgsz {imgsz}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        staging = Path(tmp)
        config = staging / "model-config.yaml"
        render_config((ROOT / args.config).resolve(), imgsz, config)
        serialized = staging / "model.pt"
        shutil.copyfile(weights, serialized)
        subprocess.run(
            [
                str(Path(sys.executable).with_name("torch-model-archiver")),
                "--model-name",
                args.name,
                "--version",
                args.version,
                "--serialized-file",
                str(serialized),
                "--handler",
                str(SERVING / "yolo_handler.py"),
                "--extra-files",
                ",".join(str(SERVING / m) for m in ("yolo_image.py", "yolo_request.py")),
                "--config-file",
                str(config),
                "--export-path",
                str(staging),
                "--force",
            ],
            check=True,
        )
        built = staging / f"{args.name}.mar"
        partial = target.with_suffix(".mar.partial")
        shutil.move(str(built), partial)
        os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = build(args)
    print(f"archive: {target}")
    print(f"sha256:  {sha256sum(target)}")
    print(f"version: {args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
