"""Build a versioned TorchServe archive (serving/model-store/<name>_v<version>.mar) from YOLO weights.

The weights are loaded and run on a sample image before anything is packaged, so a
broken file never becomes an archive. Their task (detect, segment, pose, obb, classify),
class names and keypoint names are read from the weights and recorded in the archive's
model config, which is how the handler knows what to answer. An existing version is never
overwritten unless ``--force`` is given: a version number must always mean the same bytes.

``--gate-data DIR`` puts a small labelled set (and the score it must reach) into the
archive, under ``gate/``: ``deploy.sh`` gates the version on it before it takes traffic. The set
may come in Ultralytics' own dataset layouts (``quality.gate_metrics.find_gate_set``); the archive
carries it in one. Its gate.yaml is optional: the task is the weights', the metric the task's, the
threshold ``--gate-threshold``'s. Without ``--gate-data``, the gate set of the archive the model's
cold-start pointer (``<name>_current.mar``) names is reused when it fits the weights (same task and
classes).

Every archive records its lineage (``lineage.json``): the source weights, carried inside it whatever
the served format, their sha256 and path, the training data (``--train-data``) and the version it
succeeds (the one ``<name>_current.mar`` pointed at); ``operations.archives`` reads them back.

``--format`` exports the weights inside the packaging (TorchScript, ONNX or OpenVINO, all
with dynamic batch and image shapes so the handler's rectangular letterbox and per-shape
batching work unchanged); the handler loads whichever file the archive carries. The
exported model is run once before it is archived, like the source weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
# beside yolo_handler.py
HANDLER_MODULES = (
    "yolo_contract.py",
    "yolo_image.py",
    "yolo_request.py",
    "yolo_geometry.py",
    "yolo_tasks.py",
    "yolo_runtime.py",
    "yolo_signals.py",
    "yolo_files.py",
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
        metavar="DIR",
        help="labelled gate set to carry in the archive, in Ultralytics' layout: a folder with data.yaml (its val "
        "split, or images/val + labels/val, or images/ + labels/) or the dataset yaml itself; for classify one "
        "folder per class, or val/<class>/; a gate.yaml in it may give the threshold. Without --gate-data, the gate "
        "set of <name>_current.mar is reused when it fits the weights (see README)",
    )
    parser.add_argument(
        "--reference",
        help="folder of images as the line sees them (>= 1,000 advised): the archive carries a drift reference "
        "computed from them, calibrated for the gateway's drift detectors (see README)",
    )
    parser.add_argument(
        "--gate-threshold",
        type=float,
        metavar="X",
        help="score in (0, 1] the gate set must reach: recall (detect, segment, obb), PCK (pose) or top-1 "
        "(classify); overrides gate.yaml's threshold",
    )
    parser.add_argument(
        "--train-data",
        metavar="PATH",
        help="the dataset yaml or folder the weights were trained on, recorded in the archive's lineage.json "
        "(with the source weights, always carried) for retraining",
    )
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


@dataclass(frozen=True)
class StagedGate:
    """A gate set checked against the weights and laid out for the archive."""

    folder: Path  # its contents go into the archive: gate/...
    task: str
    images: int
    threshold: float

    def summary(self) -> str:
        return f"task {self.task}, {self.images} images, threshold {self.threshold:g}"


def stage_gate_set(
    source: Path, info: WeightsInfo, threshold: float | None, staging: Path, origin: str | None = None
) -> StagedGate:
    """Check the gate set against the model and lay it out under ``gate/`` for the archive, in one layout.

    ``source`` is in any layout ``find_gate_set`` reads. The archive's gate.yaml names the task (the
    set's, else the weights'), the metric (the task's), the threshold (``threshold``, else the set's
    gate.yaml) and where they came from (``origin``, else ``source``), so a deploy reads it as it reads
    any gate set.
    """
    from operations.archives import GATE_DIR
    from quality.gate_sets import GATE_YAML, METRICS, GateSetError, find_gate_set, gate_items, write_gate_set

    try:
        gate = find_gate_set(source, info.task)
        items = gate_items(gate)
    except (GateSetError, OSError) as exc:
        raise SystemExit(f"error: gate set {source} is unusable: {exc}") from None
    if gate.task != info.task:
        raise SystemExit(f"error: gate set {source} is for a {gate.task} model; the weights are {info.task}")
    labelled = {obj["class"] for item in items for obj in item.get("objects", [])} | {
        item["class"] for item in items if "class" in item
    }
    unknown = sorted(labelled - set(info.names.values()))
    if unknown:
        raise SystemExit(f"error: gate set {source} labels classes {unknown} the weights do not know")
    if gate.task != "classify" and not labelled:
        raise SystemExit(
            f"error: gate set {source} labels no object: the label files of its {len(items)} images are empty"
        )
    if gate.task == "pose" and not any(k[2] > 0 for item in items for o in item["objects"] for k in o["keypoints"]):
        raise SystemExit(f"error: gate set {source} labels no visible keypoint (visibility > 0)")
    gate_yaml = gate.root / GATE_YAML
    spec = dict(gate.spec)
    if "task" not in spec:
        spec["task"], spec["task_from"] = gate.task, "weights"
    spec.setdefault("metric", METRICS[gate.task])
    if threshold is not None:
        spec["threshold"], spec["threshold_from"] = threshold, "--gate-threshold"
    elif spec.get("threshold") is None:
        raise no_threshold(source, gate_yaml)
    else:
        spec.setdefault("threshold_from", f"the gate.yaml of {origin}" if origin else str(gate_yaml))
    try:
        spec["threshold"] = float(spec["threshold"])
    except (TypeError, ValueError):
        raise SystemExit(f"error: {gate_yaml}: threshold {spec['threshold']!r} is not a number, e.g. 0.5") from None
    if not 0 < spec["threshold"] <= 1:
        raise SystemExit(f"error: gate threshold must be in (0, 1], got {spec['threshold']}")
    spec.setdefault("source", origin or str(source))
    wrapper = staging / "gate-files"
    write_gate_set(gate, wrapper / GATE_DIR, spec)
    return StagedGate(wrapper, gate.task, len(items), spec["threshold"])


def no_threshold(source: Path, gate_yaml: Path) -> SystemExit:
    return SystemExit(
        f"error: gate set {source} has no threshold: add --gate-threshold 0.5 or write threshold: 0.5 in {gate_yaml}"
    )


def precheck_gate_set(source: Path, threshold: float | None) -> None:
    """What can be refused before the weights are loaded: a gate set that is not there, or has no threshold."""
    from quality.gate_sets import GATE_YAML, GateSetError, read_gate_yaml

    if not source.exists():
        raise SystemExit(f"error: --gate-data {source} does not exist")
    root = source if source.is_dir() else source.parent
    try:
        spec = read_gate_yaml(root)
    except GateSetError as exc:
        raise SystemExit(f"error: gate set {source} is unusable: {exc}") from None
    if threshold is None and spec.get("threshold") is None:
        raise no_threshold(source, root / GATE_YAML)


def reuse_current_gate(
    store: Path, name: str, info: WeightsInfo, threshold: float | None, staging: Path
) -> tuple[StagedGate, str] | None:
    """The gate set of the archive ``<name>_current.mar`` points at, staged again, when it fits the weights
    (same task, and its classes are the weights'); (staged set, archive name), or None, saying why when one
    was there but did not fit."""
    from operations.archives import DeployError, current_archive, extract_gate_set
    from quality.gate_sets import GateSetError, find_gate_set

    current = current_archive(store, name)
    if current is None:
        return None
    try:
        folder = extract_gate_set(current, staging / "current-gate")
        gate = find_gate_set(folder, info.task) if folder else None
    except (DeployError, GateSetError, OSError) as exc:
        print(f"gate set: not reusing the one in {current.name}: {exc}", flush=True)
        return None
    if gate is None:
        print(f"gate set: {current.name} carries none to reuse", flush=True)
        return None
    theirs, ours = set(gate.names.values()), set(info.names.values())
    if gate.task != info.task:
        why = f"it is for a {gate.task} model; the weights are {info.task}"
    elif not (theirs <= ours if gate.task == "classify" else theirs == ours):
        why = f"its classes {sorted(theirs)} are not the weights' {sorted(ours)}"
    else:
        return stage_gate_set(folder, info, threshold, staging, origin=current.name), current.name
    print(f"gate set: not reusing the one in {current.name}: {why}", flush=True)
    return None


def lineage_parent(store: Path, name: str, version: str) -> str | None:
    """The version ``<name>_current.mar`` points at: the one a new version succeeds. Packaging again (--force)
    the version it points at keeps that version's own parent."""
    from operations.archives import DeployError, archive_lineage, archive_manifest, current_archive

    current = current_archive(store, name)
    if current is None:
        return None
    try:
        parent = archive_manifest(current).get("modelVersion")
        return archive_lineage(current).get("parent") if parent == version else parent
    except DeployError as exc:
        print(f"warning: lineage records no parent: {exc}", flush=True)
        return None


def stage_lineage(
    weights: Path, serialized: Path, train_data: Path | None, parent: str | None, staging: Path
) -> tuple[Path, dict]:
    """lineage.json and, unless the served model is the .pt itself, the source weights, for the archive."""
    from operations.archives import LINEAGE_FILE, SOURCE_WEIGHTS

    wrapper = staging / "lineage-files"
    wrapper.mkdir()
    if serialized.suffix == ".pt":
        member = serialized.name  # the archive's model is the source weights, byte for byte
    else:
        member = SOURCE_WEIGHTS
        (wrapper / member).parent.mkdir(parents=True)
        shutil.copyfile(weights, wrapper / member)
    lineage = {
        "train_data": str(train_data) if train_data else None,
        "weights_sha256": sha256sum(weights),
        "packaged_from": str(weights),
        "parent": parent,
        "source_weights": member,
    }
    (wrapper / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")
    return wrapper, lineage


def training_data(raw: str | None) -> Path | None:
    """``--train-data``, absolute; refused when it is not there."""
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise SystemExit(
            f"error: --train-data {raw}: {path} does not exist; give the dataset yaml or folder the weights were "
            "trained on"
        )
    if not (path.is_dir() or path.suffix in (".yaml", ".yml")):
        raise SystemExit(f"error: --train-data {raw}: {path} is neither a dataset .yaml nor a folder")
    return path


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


@dataclass(frozen=True)
class Packaged:
    """What ``build`` made: the archive, where its gate set came from (None: ungated) and its lineage."""

    archive: Path
    gate: str | None
    lineage: dict


def build(args: argparse.Namespace) -> Packaged:
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
    if args.gate_threshold is not None and not 0 < args.gate_threshold <= 1:
        raise SystemExit(f"error: gate threshold must be in (0, 1], got {args.gate_threshold}")
    if args.gate_data:
        precheck_gate_set(Path(args.gate_data).resolve(), args.gate_threshold)
    train_data = training_data(args.train_data)
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
    parent = lineage_parent(store, args.name, args.version)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        staging = Path(tmp)
        gate_from = None  # what the summary says of the gate set: where it came from
        if args.gate_data:
            staged = stage_gate_set(Path(args.gate_data).resolve(), info, args.gate_threshold, staging)
            gate_from = args.gate_data
            print(f"gate set ok: {args.gate_data} ({staged.summary()})", flush=True)
        elif reused := reuse_current_gate(store, args.name, info, args.gate_threshold, staging):
            staged, gate_from = reused[0], f"reused from {reused[1]}"
            print(f"gate set: reusing the one in {reused[1]} ({staged.summary()})", flush=True)
        elif args.gate_threshold is not None:
            raise SystemExit(
                f"error: --gate-threshold {args.gate_threshold:g} has no gate set to apply to: pass --gate-data DIR"
            )
        extras = [staged.folder] if gate_from else []
        config = staging / "model-config.yaml"
        render_config((ROOT / args.config).resolve(), info, args.format, config, args.workers)
        source = staging / "model.pt"
        shutil.copyfile(weights, source)
        serialized, exported = export_model(source, args.format, info.imgsz, staging)
        extras += exported
        if args.format != "pt":
            check_export(serialized, info.imgsz, info.names)
        print(f"format ok: {args.format} ({serialized.name})", flush=True)
        lineage_files, lineage = stage_lineage(weights, serialized, train_data, parent, staging)
        extras.append(lineage_files)
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
    return Packaged(target, gate_from, lineage)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    built = build(args)
    lineage = built.lineage
    print(f"archive: {built.archive}")
    print(f"sha256:  {sha256sum(built.archive)}")
    print(f"version: {args.version}")
    print(f"format:  {args.format}")
    print(f"gate:    {built.gate or 'none (deploy needs --no-gate)'}")
    print(f"drift:   {args.reference or 'no reference (drift state no_reference)'}")
    print(
        f"lineage: parent {lineage['parent'] or 'none'}, train data {lineage['train_data'] or 'not recorded'}, "
        f"source weights {lineage['source_weights']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
