"""Build a versioned TorchServe archive (serving/model-store/<name>_v<version>.mar) from YOLO weights.

``package()`` is the one way to build one: retraining, the benches and the tests call it in-process,
and ``scripts/package_mar.sh`` (``python -m scripts.package_mar``) is its command line. A refusal
raises ``PackagingError`` with the reason and the fix; the flags named below are the command line's
names of ``package()``'s arguments.

The weights are loaded and run on a sample image before anything is packaged, so a
broken file never becomes an archive. Their task (detect, segment, pose, obb, classify),
class names and keypoint names are read from the weights and recorded in the archive's
model config, which is how the handler knows what to answer. An existing version is never
overwritten unless ``--force`` is given: a version number must always mean the same bytes.

``--gate-data DIR`` puts a small labelled set (and the score it must reach) into the
archive, under ``gate/``: ``deploy.sh`` gates the version on it before it takes traffic. The set
may come in Ultralytics' own dataset layouts (``quality.gate_sets.find_gate_set``); the archive
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

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from operations.weights import WeightFacts, WeightsError, load_weights, weight_facts
from serving.yolo_contract import FORMATS, NAME_RE, VERSION_RE

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


def archive_path(store: Path, name: str, version: str) -> Path:
    return store / f"{name}_v{version}.mar"


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PackagingError(Exception):
    """A refusal to package, saying what is wrong and how to fix it; nothing is left in the store."""


def check_weights(weights: Path, imgsz: int | None) -> WeightFacts:
    """Load the weights, read their facts and run one prediction; refuse what the handler cannot serve."""
    try:
        model = load_weights(weights)
        facts = weight_facts(model, imgsz)
    except WeightsError as exc:
        raise PackagingError(str(exc)) from exc.__cause__
    sample = next(iter(sorted((ROOT / "samples").glob("*.jpg"))), None)
    source = str(sample) if sample else np.full((facts.imgsz, facts.imgsz, 3), 114, dtype=np.uint8)
    try:
        model.predict(source, imgsz=facts.imgsz, device="cpu", verbose=False)
    except Exception as exc:
        raise PackagingError(f"{weights} loads but fails to predict: {exc}") from exc
    return facts


def render_config(template: Path, info: WeightFacts, model_format: str, dest: Path, workers: int | None) -> None:
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
        raise PackagingError(f"{template}: handler section: {exc}") from None
    dest.write_text(yaml.safe_dump(config, sort_keys=False))


def handler_config(section: dict) -> object:
    """The handler's own reading of a ``handler:`` section (``yolo_request.HandlerConfig``), so packaging
    refuses what the worker would refuse when it loads."""
    if str(SERVING) not in sys.path:
        sys.path.insert(0, str(SERVING))  # the handler's modules import each other flat, as inside the .mar
    from yolo_request import HandlerConfig

    return HandlerConfig.from_yaml(section)


@dataclass(frozen=True)
class CarriedGate:
    """The gate set an archive carries: where it came from, its task, how many images, and the score a deploy
    must reach on it. The score itself is measured at deploy, by the gate on the serving stack, not here."""

    source: str  # the --gate-data folder, or "reused from <archive>"
    task: str
    images: int
    threshold: float

    def summary(self) -> str:
        return f"task {self.task}, {self.images} images, threshold {self.threshold:g}"


@dataclass(frozen=True)
class StagedGate:
    """A gate set checked against the weights and laid out for the archive."""

    folder: Path  # its contents go into the archive: gate/...
    carried: CarriedGate


def stage_gate_set(
    source: Path, info: WeightFacts, threshold: float | None, staging: Path, origin: str | None = None
) -> StagedGate:
    """Check the gate set against the model and lay it out under ``gate/`` for the archive, in one layout.

    ``source`` is in any layout ``find_gate_set`` reads. The archive's gate.yaml names the task (the
    set's, else the weights'), the metric (the task's), the threshold (``threshold``, else the set's
    gate.yaml) and where they came from (``origin``, else ``source``), so a deploy reads it as it reads
    any gate set.
    """
    from operations.archives import GATE_DIR
    from quality.gate_sets import GATE_YAML, METRICS, GateSetError, find_gate_set, gate_items, write_gate_set
    from quality.tasks import task_of

    try:
        gate = find_gate_set(source, info.task)
        items = gate_items(gate)
    except (GateSetError, OSError) as exc:
        raise PackagingError(f"gate set {source} is unusable: {exc}") from None
    if gate.task != info.task:
        raise PackagingError(f"gate set {source} is for a {gate.task} model; the weights are {info.task}")
    labelled = {obj["class"] for item in items for obj in item.get("objects", [])} | {
        item["class"] for item in items if "class" in item
    }
    unknown = sorted(labelled - set(info.names.values()))
    if unknown:
        raise PackagingError(f"gate set {source} labels classes {unknown} the weights do not know")
    if not task_of(gate.task).classifies and not labelled:
        raise PackagingError(
            f"gate set {source} labels no object: the label files of its {len(items)} images are empty"
        )
    visible = (k[2] > 0 for item in items for o in item.get("objects", []) for k in o.get("keypoints", []))
    if task_of(gate.task).keypoints and not any(visible):
        raise PackagingError(f"gate set {source} labels no visible keypoint (visibility > 0)")
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
        raise PackagingError(f"{gate_yaml}: threshold {spec['threshold']!r} is not a number, e.g. 0.5") from None
    if not 0 < spec["threshold"] <= 1:
        raise PackagingError(f"gate threshold must be in (0, 1], got {spec['threshold']}")
    spec.setdefault("source", origin or str(source))
    wrapper = staging / "gate-files"
    write_gate_set(gate, wrapper / GATE_DIR, spec)
    return StagedGate(wrapper, CarriedGate(str(source), gate.task, len(items), spec["threshold"]))


def no_threshold(source: Path, gate_yaml: Path) -> PackagingError:
    return PackagingError(
        f"gate set {source} has no threshold: add --gate-threshold 0.5 or write threshold: 0.5 in {gate_yaml}"
    )


def precheck_gate_set(source: Path, threshold: float | None) -> None:
    """What can be refused before the weights are loaded: a gate set that is not there, or has no threshold."""
    from quality.gate_sets import GATE_YAML, GateSetError, read_gate_yaml

    if not source.exists():
        raise PackagingError(f"--gate-data {source} does not exist")
    root = source if source.is_dir() else source.parent
    try:
        spec = read_gate_yaml(root)
    except GateSetError as exc:
        raise PackagingError(f"gate set {source} is unusable: {exc}") from None
    if threshold is None and spec.get("threshold") is None:
        raise no_threshold(source, root / GATE_YAML)


def reuse_current_gate(
    store: Path, name: str, info: WeightFacts, threshold: float | None, staging: Path, log
) -> StagedGate | None:
    """The gate set of the archive ``<name>_current.mar`` points at, staged again, when it fits the weights
    (same task, and its classes are the weights'), or None, saying why through ``log`` when one was there but
    did not fit."""
    from operations.archives import DeployError, current_archive, extract_gate_set
    from quality.gate_sets import GateSetError, find_gate_set
    from quality.tasks import task_of

    current = current_archive(store, name)
    if current is None:
        return None
    try:
        folder = extract_gate_set(current, staging / "current-gate")
        gate = find_gate_set(folder, info.task) if folder else None
    except (DeployError, GateSetError, OSError) as exc:
        log(f"gate set: not reusing the one in {current.name}: {exc}")
        return None
    if gate is None:
        log(f"gate set: {current.name} carries none to reuse")
        return None
    theirs, ours = set(gate.names.values()), set(info.names.values())
    if gate.task != info.task:
        why = f"it is for a {gate.task} model; the weights are {info.task}"
    elif not (theirs <= ours if task_of(gate.task).classifies else theirs == ours):  # a classifier may add classes
        why = f"its classes {sorted(theirs)} are not the weights' {sorted(ours)}"
    else:
        staged = stage_gate_set(folder, info, threshold, staging, origin=current.name)
        log(f"gate set: reusing the one in {current.name} ({staged.carried.summary()})")
        return replace(staged, carried=replace(staged.carried, source=f"reused from {current.name}"))
    log(f"gate set: not reusing the one in {current.name}: {why}")
    return None


def lineage_parent(store: Path, name: str, version: str, log) -> str | None:
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
        log(f"warning: lineage records no parent: {exc}")
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


def training_data(raw: Path | str | None) -> Path | None:
    """``--train-data``, absolute; refused when it is not there."""
    if raw is None or raw == "":
        return None
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise PackagingError(
            f"--train-data {raw}: {path} does not exist; give the dataset yaml or folder the weights were trained on"
        )
    if not (path.is_dir() or path.suffix in (".yaml", ".yml")):
        raise PackagingError(f"--train-data {raw}: {path} is neither a dataset .yaml nor a folder")
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
        raise PackagingError(f"exporting {weights.name} to {model_format} failed: {exc}") from exc
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
        raise PackagingError(f"the exported model {serialized.name} fails to run: {exc}") from exc
    if {int(k): str(v) for k, v in backend.names.items()} != names:
        raise PackagingError(f"the exported model knows classes {backend.names}, the weights {names}")


@dataclass(frozen=True)
class Packaged:
    """What ``package`` made: the archive and its sha256, the version and format it serves, the gate set it
    carries (None: ungated, a deploy needs --no-gate), the folder its drift reference was computed from (None:
    none, drift state no_reference) and its lineage (``lineage.json``)."""

    archive: Path
    sha256: str
    version: str
    format: str
    gate: CarriedGate | None
    reference: Path | None
    lineage: dict


def package(
    weights: Path | str,
    version: str,
    store: Path | str,
    *,
    name: str = "yolo",
    fmt: str = DEFAULT_FORMAT,
    gate_data: Path | str | None = None,
    gate_threshold: float | None = None,
    reference: Path | str | None = None,
    train_data: Path | str | None = None,
    workers: int | None = None,
    imgsz: int | None = None,
    config: Path | str = SERVING / "model-config.yaml",
    force: bool = False,
    log=print,
) -> Packaged:
    """Build ``<store>/<name>_v<version>.mar`` from ``weights`` (see the module's docstring), or raise
    PackagingError saying why not; progress lines and warnings go to ``log``. Relative paths are the
    caller's working directory's."""
    if not VERSION_RE.match(version):
        raise PackagingError(f"version must look like 1.0 or 2.1.3, got {version!r}")
    if not NAME_RE.match(name):
        raise PackagingError(f"name must start with a letter, then letters, digits, '-' or '_', got {name!r}")
    if fmt not in FORMATS:
        raise PackagingError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    reference = Path(reference).resolve() if reference is not None else None
    if reference is not None:
        from drift.reference import reference_images

        try:
            images = reference_images(reference, log)  # a wrong folder fails before the slow part
        except ValueError as exc:
            raise PackagingError(str(exc)) from None
    if workers is not None and workers < 1:
        raise PackagingError(f"--workers must be at least 1, got {workers}")
    if gate_threshold is not None and not 0 < gate_threshold <= 1:
        raise PackagingError(f"gate threshold must be in (0, 1], got {gate_threshold}")
    gate_data = Path(gate_data).resolve() if gate_data is not None else None
    if gate_data is not None:
        precheck_gate_set(gate_data, gate_threshold)
    train_data = training_data(train_data)
    weights = Path(weights).resolve()
    if not weights.is_file():
        raise PackagingError(f"weights file not found: {weights}")
    store = Path(store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    target = archive_path(store, name, version)
    if target.exists() and not force:
        raise PackagingError(
            f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} exists; "
            "a version is immutable, pick a new --version or pass --force"
        )

    info = check_weights(weights, imgsz)
    shown = ", ".join(f"{i}={n}" for i, n in list(info.names.items())[:8]) + (", ..." if len(info.names) > 8 else "")
    log(f"weights ok: {weights.name}, task {info.task}, {len(info.names)} classes ({shown}), imgsz {info.imgsz}")
    parent = lineage_parent(store, name, version, log)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        staging = Path(tmp)
        if gate_data is not None:
            staged = stage_gate_set(gate_data, info, gate_threshold, staging)
            log(f"gate set ok: {gate_data} ({staged.carried.summary()})")
        else:
            staged = reuse_current_gate(store, name, info, gate_threshold, staging, log)
        if staged is None and gate_threshold is not None:
            raise PackagingError(
                f"--gate-threshold {gate_threshold:g} has no gate set to apply to: pass --gate-data DIR"
            )
        extras = [staged.folder] if staged else []
        model_config = staging / "model-config.yaml"
        render_config(Path(config).resolve(), info, fmt, model_config, workers)
        source = staging / "model.pt"
        shutil.copyfile(weights, source)
        serialized, exported = export_model(source, fmt, info.imgsz, staging)
        extras += exported
        if fmt != "pt":
            check_export(serialized, info.imgsz, info.names)
        log(f"format ok: {fmt} ({serialized.name})")
        lineage_files, lineage = stage_lineage(weights, serialized, train_data, parent, staging)
        extras.append(lineage_files)
        archive_files(name, version, serialized, extras, model_config, staging)
        built = staging / f"{name}.mar"
        if reference is not None:
            from drift.reference import attach_reference

            try:
                attach_reference(built, reference, images, log=log)
            except ValueError as exc:
                raise PackagingError(str(exc)) from None
        else:
            log(
                "warning: no --reference: the gateway cannot watch this version for drift (state no_reference); "
                "pass --reference DIR with >= 1,000 images as the line sees them"
            )
        partial = target.with_suffix(".mar.partial")
        shutil.move(str(built), partial)
        os.replace(partial, target)
    gate = staged.carried if staged else None
    return Packaged(target, sha256sum(target), version, fmt, gate, reference, lineage)


def archive_files(name: str, version: str, serialized: Path, extras: list[Path], config: Path, out: Path) -> None:
    """``<out>/<name>.mar``: torch-model-archiver's archive of the model, the handler's modules and ``extras``."""
    command = [
        str(Path(sys.executable).with_name("torch-model-archiver")),
        "--model-name", name, "--version", version, "--serialized-file", str(serialized),
        "--handler", str(SERVING / "yolo_handler.py"),
        "--extra-files", ",".join([*(str(SERVING / m) for m in HANDLER_MODULES), *map(str, extras)]),
        "--config-file", str(config), "--export-path", str(out), "--force",
    ]  # fmt: skip
    # the archiver stages files in $TMPDIR/<name>: a folder of this build's own, so two builds of one name at
    # the same time (a retraining beside an operator, parallel test lanes) cannot mix their files
    scratch = out / "archiver-tmp"
    scratch.mkdir(exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    if done.returncode != 0:
        raise PackagingError(f"torch-model-archiver failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
