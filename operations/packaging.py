"""Build a versioned TorchServe archive (serving/model-store/<name>_v<version>.mar) from YOLO weights.

The weights are loaded and run on a sample image before anything is packaged, so a
broken file never becomes an archive. Their task (detect, segment, pose, obb, classify),
class names and keypoint names are read from the weights and recorded in the archive's
model config, which is how the handler knows what to answer. An existing version is never
overwritten unless ``--force`` is given: a version number must always mean the same bytes.

``--gate-data DIR`` puts a small labelled set (and the score it must reach) into the
archive, under ``gate/``: ``deploy.sh`` gates the version on it before it takes traffic.

``--format`` exports the weights inside the packaging (TorchScript, ONNX or OpenVINO, all
with dynamic batch and image shapes so the handler's rectangular letterbox and per-shape
batching work unchanged); the handler loads whichever file the archive carries. The
exported model is run once before it is archived, like the source weights.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from serving.yolo_contract import FORMATS, NAME_RE, TASKS, VERSION_RE

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "serving"
GATE_DIR = "gate"  # where an archive carries its gate set
# beside yolo_handler.py
HANDLER_MODULES = (
    "yolo_contract.py",
    "yolo_image.py",
    "yolo_request.py",
    "yolo_geometry.py",
    "yolo_tasks.py",
    "yolo_runtime.py",
    "yolo_signals.py",
)
# Chosen by measurement (benchmarks/bench.py --sweep, see REPORT.md): OpenVINO is the fastest CPU backend here.
DEFAULT_FORMAT = "openvino"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="package_mar.sh",
        description="Package YOLO weights into a versioned TorchServe .mar archive.",
    )
    parser.add_argument(
        "--weights", default="models/weights/best.pt", help="Ultralytics weights of any task (default: %(default)s)"
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
    parser.add_argument(
        "--gate-data",
        help="labelled gate set to carry in the archive: images/ + labels/ (YOLO labels) or one folder per class, "
        "with gate.yaml naming the threshold (see README)",
    )
    parser.add_argument(
        "--reference",
        help="folder of images as the line sees them (>= 1,000 advised): the archive carries a drift reference "
        "computed from them, calibrated for the gateway's drift detectors (see README)",
    )
    parser.add_argument("--gate-threshold", type=float, help="score the gate set must reach (overrides gate.yaml)")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes TorchServe runs for this model (default: the config's minWorkers/maxWorkers)",
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


@dataclass(frozen=True)
class WeightsInfo:
    """What packaging learns from the weights and records in the archive."""

    task: str
    imgsz: int
    names: dict[int, str]
    kpt_names: list[str] | None
    architecture: str  # "rtdetr" or "yolo": how the handler prepares the input and reads the output


def check_weights(weights: Path, imgsz: int | None) -> WeightsInfo:
    """Load the weights and run one prediction; refuse what the handler cannot serve, saying why."""
    from ultralytics import RTDETR, YOLO

    try:
        model = YOLO(str(weights))
        if type(model.model).__name__.startswith("RTDETR"):
            model = RTDETR(str(weights))  # its own predictor: a stretched input and no NMS
    except Exception as exc:  # any loader failure means "not usable weights"
        raise SystemExit(f"error: {weights} does not load as Ultralytics weights: {exc}") from exc
    if model.task not in TASKS:
        raise SystemExit(f"error: {weights} is a {model.task!r} model; the handler serves {', '.join(TASKS)} weights.")
    if type(model.model).__name__.startswith(("YOLOE", "World")):
        raise SystemExit(
            f"error: {weights} is an open-vocabulary {type(model.model).__name__}; set its classes and save it as a "
            "plain model first (model.set_classes(...); model.save(...)), or export it, to serve it."
        )
    trained = model.ckpt.get("train_args", {}).get("imgsz") if isinstance(getattr(model, "ckpt", None), dict) else None
    size = int(imgsz or (trained if isinstance(trained, int) else None) or 640)
    if size % 32:
        raise SystemExit(f"error: image size must be a multiple of 32, got {size}")
    sample = next(iter(sorted((ROOT / "samples").glob("*.jpg"))), None)
    source = str(sample) if sample else np.full((size, size, 3), 114, dtype=np.uint8)
    try:
        model.predict(source, imgsz=size, device="cpu", verbose=False)
    except Exception as exc:
        raise SystemExit(f"error: {weights} loads but fails to predict: {exc}") from exc
    kpt_names = _keypoint_names(model) if model.task == "pose" else None
    architecture = "rtdetr" if type(model.model).__name__.startswith("RTDETR") else "yolo"
    return WeightsInfo(model.task, size, {int(k): str(v) for k, v in model.names.items()}, kpt_names, architecture)


def _keypoint_names(model) -> list[str] | None:
    """The names of the keypoints when the weights carry them (``kpt_names`` of the training data)."""
    names = getattr(model.model, "kpt_names", None)
    if isinstance(names, dict):  # Ultralytics keeps them per class; one skeleton is served
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if names else None


def render_config(template: Path, info: WeightsInfo, model_format: str, dest: Path, workers: int | None) -> None:
    config = yaml.safe_load(template.read_text())
    if workers:
        config["minWorkers"] = config["maxWorkers"] = workers
    handler = config.setdefault("handler", {})
    handler["task"] = info.task
    handler["architecture"] = info.architecture
    handler["imgsz"] = info.imgsz
    handler["format"] = model_format
    if info.kpt_names:
        handler["kpt_names"] = info.kpt_names
    try:
        handler_config(handler)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: {template}: handler section: {exc}") from None
    dest.write_text(yaml.safe_dump(config, sort_keys=False))


def handler_config(section: dict) -> object:
    """The handler's own reading of a ``handler:`` section (``yolo_request.HandlerConfig``), so packaging
    refuses what the worker would refuse when it loads."""
    if str(SERVING) not in sys.path:
        sys.path.insert(0, str(SERVING))  # the handler's modules import each other flat, as inside the .mar
    from yolo_request import HandlerConfig

    return HandlerConfig.from_yaml(section)


def stage_gate_set(source: Path, info: WeightsInfo, threshold: float | None, staging: Path) -> Path:
    """Check the gate set against the model and copy it under ``gate/`` for the archive; return the folder to add."""
    from quality.gate_metrics import load_gate_set

    try:
        task, items = load_gate_set(source)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: gate set {source} is unusable: {exc!r}") from exc
    if task != info.task:
        raise SystemExit(f"error: gate set {source} is for a {task} model; the weights are {info.task}")
    if not items:
        raise SystemExit(f"error: gate set {source} has no images")
    labelled = {obj["class"] for item in items for obj in item.get("objects", [])} | {
        item["class"] for item in items if "class" in item
    }
    unknown = sorted(labelled - set(info.names.values()))
    if unknown:
        raise SystemExit(f"error: gate set {source} labels classes {unknown} the weights do not know")
    wrapper = staging / "gate-files"
    shutil.copytree(source, wrapper / GATE_DIR)
    spec = yaml.safe_load((wrapper / GATE_DIR / "gate.yaml").read_text())
    if threshold is not None:
        spec["threshold"] = threshold
    if not 0 < float(spec["threshold"]) <= 1:
        raise SystemExit(f"error: gate threshold must be in (0, 1], got {spec['threshold']}")
    (wrapper / GATE_DIR / "gate.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return wrapper


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
        raise SystemExit(f"error: name must start with a letter, then letters, digits, '-' or '_', got {args.name!r}")
    reference = None
    if args.reference:
        from drift.reference import reference_images

        reference = reference_images(Path(args.reference).resolve())  # a wrong folder fails before the slow part
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"error: --workers must be at least 1, got {args.workers}")
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

    info = check_weights(weights, args.imgsz)
    shown = ", ".join(f"{i}={n}" for i, n in list(info.names.items())[:8]) + (", ..." if len(info.names) > 8 else "")
    print(f"weights ok: {weights.name}, task {info.task}, {len(info.names)} classes ({shown}), imgsz {info.imgsz}")
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        staging = Path(tmp)
        config = staging / "model-config.yaml"
        render_config((ROOT / args.config).resolve(), info, args.format, config, args.workers)
        source = staging / "model.pt"
        shutil.copyfile(weights, source)
        serialized, extras = export_model(source, args.format, info.imgsz, staging)
        if args.format != "pt":
            check_export(serialized, info.imgsz, info.names)
        if args.gate_data:
            extras.append(stage_gate_set(Path(args.gate_data).resolve(), info, args.gate_threshold, staging))
            print(f"gate set ok: {args.gate_data}", flush=True)
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
                ",".join([*(str(SERVING / m) for m in HANDLER_MODULES), *map(str, extras)]),
                "--config-file",
                str(config),
                "--export-path",
                str(staging),
                "--force",
            ],
            check=True,
        )
        built = staging / f"{args.name}.mar"
        if reference is not None:
            from drift.reference import attach_reference

            attach_reference(built, Path(args.reference).resolve(), reference)
        else:
            print(
                "warning: no --reference: the gateway cannot watch this version for drift (state no_reference); "
                "pass --reference DIR with >= 1,000 images as the line sees them",
                flush=True,
            )
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
    print(f"gate:    {args.gate_data or 'none (deploy needs --no-gate)'}")
    print(f"drift:   {args.reference or 'no reference (drift state no_reference)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
