"""Build a versioned TorchServe archive (serving/model-store/<name>_v<version>.mar) from YOLO weights.

The weights are loaded and run on a sample image before anything is packaged, so a
broken file never becomes an archive. An existing version is never overwritten unless
``--force`` is given: a version number must always mean the same bytes.

``--format`` exports the weights inside the packaging (TorchScript, ONNX or OpenVINO, all
with dynamic batch and image shapes so the handler's rectangular letterbox and per-shape
batching work unchanged); the handler loads whichever file the archive carries. The
exported model is run once before it is archived, like the source weights.
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
FORMATS = ("pt", "torchscript", "onnx", "openvino")
# Chosen by measurement (scripts/bench.py --sweep, see REPORT.md): OpenVINO is the fastest CPU backend here.
DEFAULT_FORMAT = "openvino"


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
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=DEFAULT_FORMAT,
        help="model format inside the archive; exported from the weights while packaging (default: %(default)s)",
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


def render_config(template: Path, imgsz: int, model_format: str, dest: Path) -> None:
    config = yaml.safe_load(template.read_text())
    handler = config.setdefault("handler", {})
    handler["imgsz"] = imgsz
    handler["format"] = model_format
    dest.write_text(yaml.safe_dump(config, sort_keys=False))


def export_model(weights: Path, model_format: str, imgsz: int, staging: Path) -> tuple[Path, list[Path]]:
    """Export ``weights`` (a copy inside ``staging``) to ``model_format``; return the serialized file and extras.

    Shapes are exported dynamic: the handler feeds the minimal stride-multiple rectangle
    (640x480 at 320 becomes 320x256) and whole batches, as Ultralytics' own predict does for
    .pt weights. An OpenVINO export is a directory; its .xml becomes the serialized file and
    keeps the ``_openvino_model`` name AutoBackend recognises, with the .bin and
    metadata.yaml beside it as extra files.
    """
    if model_format == "pt":
        return weights, []
    from ultralytics import YOLO

    try:
        exported = Path(YOLO(str(weights)).export(format=model_format, imgsz=imgsz, dynamic=True, device="cpu"))
    except Exception as exc:
        raise SystemExit(f"error: exporting {weights.name} to {model_format} failed: {exc}") from exc
    if model_format != "openvino":
        return exported, []
    xml = next(exported.glob("*.xml"))
    serialized = staging / f"{exported.name}.xml"
    extras = [staging / f"{exported.name}.bin", staging / "metadata.yaml"]
    for source, dest in (
        (xml, serialized),
        (xml.with_suffix(".bin"), extras[0]),
        (exported / "metadata.yaml", extras[1]),
    ):
        shutil.move(str(source), dest)
    return serialized, extras


def check_export(serialized: Path, imgsz: int, names: dict[int, str]) -> None:
    """Run the exported file once, as the handler will load it; it must know the same classes."""
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    try:
        backend = AutoBackend(str(serialized), device=torch.device("cpu"), verbose=False)
        backend(torch.zeros(1, 3, imgsz, imgsz))
    except Exception as exc:
        raise SystemExit(f"error: the exported model {serialized.name} fails to run: {exc}") from exc
    if {int(k): str(v) for k, v in backend.names.items()} != names:
        raise SystemExit(f"error: the exported model knows classes {backend.names}, the weights {names}")


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
        render_config((ROOT / args.config).resolve(), imgsz, args.format, config)
        source = staging / "model.pt"
        shutil.copyfile(weights, source)
        serialized, extras = export_model(source, args.format, imgsz, staging)
        if args.format != "pt":
            check_export(serialized, imgsz, names)
        print(f"format ok: {args.format} ({serialized.name})", flush=True)
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
                ",".join([*(str(SERVING / m) for m in ("yolo_image.py", "yolo_request.py")), *map(str, extras)]),
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
    print(f"format:  {args.format}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
