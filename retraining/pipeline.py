"""Retraining as a release: labelled captures in, a promoted (or rolled back) version out.

``retrain`` runs, for one model of a running stack, and prints each step with its time:

1. the incumbent: the default version's archive, the weights it was packaged from, its gate set
   and the training data it records (``package_mar.sh --train-data``);
2. the data (``retraining.workspace``): the labelled captures less a held-out slice, mixed with a
   replay of the incumbent's training data (without one: the captures only, with a warning);
3. a brief fine-tune of the incumbent's own weights (``retraining.finetune``);
4. a comparison on the held-out captures and on the incumbent's frozen gate set: a candidate
   that is not better on the first, or loses more than the tolerance on the second, stops here;
5. the candidate archive, packaged by ``operations.packaging.package`` with the merged gate set, the training
   data it was fine-tuned on (the next retraining replays it) and a drift reference taken from
   the images captured since the drift alarm (the world as it is now);
6. a gated canary, judged live by ``retraining.canary`` (its own drift state, its error rate
   against the default's), then promoted, or rolled back on its own.

Every step lands in the model's deploy history (``retrain-*`` actions beside deploy.sh's own),
and the whole retraining is one MLflow run (``retraining.tracking``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from gateway.capture.store import CaptureStore
from gateway.state import open_store
from operations.archives import DeployError, archive_for, archive_lineage, extract_gate_set, extract_source_weights
from operations.history import record
from operations.packaging import PackagingError, package
from operations.releases import promote, rollback, start_canary
from operations.stack import Stack, current_version
from quality.gate_scoring import threshold_from
from quality.gate_sets import load_gate_set
from quality.tasks import task_of
from quality.ultralytics_answers import reference_answers
from retraining.canary import watch_canary
from retraining.tracking import DEFAULT_DIR, tracked_run
from retraining.workspace import Workspace, build_workspace, split_dirs, write_gate_spec
from serving.yolo_contract import VERSION_RE, version_order
from serving.yolo_files import archive_config, image_files, media_suffix


class RetrainError(Exception):
    """A retraining that cannot go on; the message says why and what to do."""


@dataclass
class RetrainOptions:
    dataset: Path | None = None  # the labelled captures (default: <run dir>/labels/<model>)
    version: str | None = None  # default: the incumbent's next minor version that is not packaged yet
    epochs: int = 5
    batch: int = 16
    threads: int = 2
    replay_ratio: float = 1.0  # replayed training images per captured one
    holdout_share: float = 0.2
    min_gain: float = 0.0  # the candidate must beat the incumbent on the held-out captures by more than this
    tolerance: float = 0.01  # and may lose at most this on the frozen holdout of the original data
    frozen_data: Path | None = None  # that holdout (a data yaml; its val split); default: the incumbent's gate set
    gate_threshold: float | None = None  # default: the incumbent's
    reference_min: int = 200  # captured images needed for the candidate's drift reference
    canary_percent: float = 30.0
    canary_requests: int = 100
    canary_timeout_s: float = 600.0
    max_error_excess: float = 0.01
    trigger: str = "by hand"
    seed: int = 0
    mlflow_dir: Path = DEFAULT_DIR
    fine_tune: dict = field(default_factory=dict)  # Ultralytics train overrides


@dataclass
class Outcome:
    model: str
    incumbent: str
    candidate: str | None
    result: str  # promoted, rolled_back, refused
    reason: str
    scores: dict
    steps: dict  # seconds per step
    run_id: str | None = None


class Steps:
    """Says each step as it starts and ends, with the time it took, and keeps the times."""

    def __init__(self, out, on_step=None, done=None):
        self.out, self.times, self.on_step, self.done = out, {}, on_step, done

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.out(f"{name}: {what}")
        if self.on_step is not None:
            self.on_step(name)
        began = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - began, 1)
        self.out(f"{name}: done in {self.times[name]:.1f} s")
        if self.done is not None:
            self.done(name, self.times[name])


def stamped(out=print):
    """``out`` with the seconds since this call before each line, as the retraining's command line prints."""
    started = time.perf_counter()
    return lambda line: out(f"[{time.perf_counter() - started:7.1f} s] {line}")


def next_version(stack: Stack, incumbent: str) -> str:
    """The incumbent's next minor version (2.0 -> 2.1) whose archive does not exist yet."""
    major, _, rest = incumbent.partition(".")
    minor = int(rest.split(".")[0]) if rest else 0
    while True:
        minor += 1
        candidate = f"{major}.{minor}"
        if not archive_for(stack, candidate).exists():
            return candidate


def val_metric(
    weights: Path, data: Path, task: str, imgsz: int, threads: int = 2, scratch: Path | None = None
) -> float:
    """The task's Ultralytics metric of ``weights`` on ``data``'s val split: mAP50-95 (box, mask, pose or
    rotated box), or top-1 accuracy for classify (val at conf 0.001, NMS IoU 0.7, as REPORT's figures are)."""
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    metrics = YOLO(str(weights)).val(
        data=str(data), split="val", imgsz=imgsz, batch=16, conf=0.001, iou=0.7, device="cpu",
        plots=False, verbose=False, workers=0, save_json=False, name="val", exist_ok=True,
        project=str(scratch or Path(tempfile.gettempdir())),  # what val writes stays out of the data's folder
    )  # fmt: skip
    if task_of(task).classifies:
        return round(float(metrics.top1), 4)
    return round(float(getattr(metrics, {"segment": "seg", "pose": "pose"}.get(task, "box")).map), 4)


def gate_score(weights: Path, ws: Workspace, imgsz: int) -> float:
    """The gate metric of the candidate's own weights (Ultralytics' predict) on its gate set: the archive's
    threshold is set from it, as every threshold here is (``threshold_from``), so the gate proves the served
    archive answers as its weights do; whether those weights are better is ``judge``'s question."""
    task, items = load_gate_set(ws.gate, ws.task)
    answers = reference_answers(weights, [item["image"] for item in items], imgsz)
    return round(task_of(task).gate_metric(items, answers), 4)


def count_images(data: Path) -> int:
    """Images in the val split of an Ultralytics data file (or a classify folder's val/)."""
    folders = [data / "val"] if data.is_dir() else split_dirs(data, "val")
    return sum(len(image_files(folder)) for folder in folders)


def alarm_time(stack: Stack, model: str, version: str) -> float | None:
    """When the version's first drift alarm still standing was raised (epoch s), from the gateway; None if none."""
    from datetime import datetime

    try:
        report = httpx.get(f"{stack.gateway_url}/models/{model}/drift", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None
    for entry in report.get("versions", []):
        if entry["version"] == version and entry["alarms"]:
            return min(datetime.fromisoformat(a["time"]).timestamp() for a in entry["alarms"])
    return None


def reference_images(stack: Stack, model: str, since: float | None, folder: Path, limit: int = 2400) -> int:
    """Write the newest captured images (since ``since``) into ``folder``, for the candidate's drift reference."""
    state = open_store(stack.state_location)
    try:
        store = CaptureStore(stack.capture_dir, state)
        rows = [row for row in store.rows(model) if since is None or row["time"] >= since][-limit:]
        folder.mkdir(parents=True, exist_ok=True)
        written = 0
        for row in rows:
            try:
                data = store.read(row)
            except FileNotFoundError:
                continue
            (folder / f"{row['id']}{media_suffix(row['media_type'])}").write_bytes(data)
            written += 1
        return written
    finally:
        state.close()


def package_candidate(stack: Stack, model: str, version: str, weights: Path, ws: Workspace, reference: Path | None,
                      workers: int | None, out) -> Path:  # fmt: skip
    """The candidate's archive in the stack's store: its gate set, the data it was fine-tuned on and its drift
    reference; packaging's progress goes to ``out``, indented."""
    try:
        built = package(weights, version, stack.model_store, name=model, gate_data=ws.gate, train_data=ws.train,
                        reference=reference, workers=workers, log=lambda line: out(f"  {line}"))  # fmt: skip
    except PackagingError as exc:
        raise RetrainError(f"packaging {model} {version} failed: {exc}") from exc
    out(f"  archive: {built.archive}")
    out(f"  sha256:  {built.sha256}")
    return built.archive


MIN_FROZEN_IMAGES = 100  # fewer cannot tell a loss of 0.01 mAP50-95 from noise: the forgetting check only warns


def judge(scores: dict, options: RetrainOptions, frozen_images: int = MIN_FROZEN_IMAGES, out=print) -> str | None:
    """Why the candidate may not go on (None: it may): not better on the held-out captures, or it forgets the
    original data (judged on a holdout of ``MIN_FROZEN_IMAGES`` or more; on fewer, a warning)."""
    held, frozen = (scores.get(f"{k}_candidate") for k in ("holdout", "frozen"))
    if frozen is not None and frozen_images < MIN_FROZEN_IMAGES:
        if frozen < scores["frozen_incumbent"] - options.tolerance:
            out(f"  warning: {frozen:.4f} vs {scores['frozen_incumbent']:.4f} on the frozen holdout, but on "
                f"{frozen_images} images that is noise-level; give a holdout of {MIN_FROZEN_IMAGES}+ images of the "
                "original data (--frozen-data) to judge forgetting")  # fmt: skip
        frozen = None
    if held is not None and held <= scores["holdout_incumbent"] + options.min_gain:
        return (
            f"the candidate is not better on the held-out captures ({held:.4f} vs {scores['holdout_incumbent']:.4f}):"
            " label more captures or train longer"
        )
    if frozen is not None and frozen < scores["frozen_incumbent"] - options.tolerance:
        return (
            f"the candidate forgets: {frozen:.4f} on the frozen gate set vs {scores['frozen_incumbent']:.4f} "
            f"(tolerance {options.tolerance})"
        )
    return None


def retrain(stack: Stack, options: RetrainOptions, out=print, on_step=None) -> Outcome:
    """Fine-tune, compare, package, canary and promote (or roll back) one model; see the module's docstring.

    ``on_step(name)`` is called as each step starts (the demo starts its canary traffic on "canary")."""
    model = stack.model_name
    incumbent = current_version(stack)
    if incumbent is None:
        raise RetrainError(f"{model} is not deployed on this stack: deploy a version first (scripts/deploy.sh)")
    version = options.version or next_version(stack, incumbent)

    def done(step: str, seconds: float) -> None:  # each step in the deploy history, as it ends
        record(stack, f"retrain-{step}", version, incumbent, seconds=seconds, trigger=options.trigger)

    steps = Steps(out, on_step, done)
    if not VERSION_RE.match(version) or version_order(version) <= version_order(incumbent):
        raise RetrainError(f"candidate version {version!r} must be a version after the incumbent's {incumbent}")
    dataset = Path(options.dataset or stack.run_dir / "labels" / model)
    root = stack.run_dir / "retrain" / model / version
    outcome = Outcome(model, incumbent, version, "refused", "", {}, steps.times)
    with tracked_run(model, f"{model} {incumbent} -> {version}", options.mlflow_dir) as run:
        outcome.run_id = run.id
        try:
            _retrain(stack, options, out, steps, run, outcome, dataset, root)
        except (RetrainError, DeployError, OSError, ValueError) as exc:
            outcome.result, outcome.reason = "refused", str(exc)
            out(f"refused: {exc}")
        run.tag("result", outcome.result)
        run.tag("reason", outcome.reason)
        run.metrics({**{f"step_{k}_s": v for k, v in steps.times.items()}, **outcome.scores})
        record(stack, "retrain", version, incumbent, result=outcome.result, reason=outcome.reason,
               trigger=options.trigger, mlflow_run=run.id, scores=outcome.scores)  # fmt: skip
    out(f"retrain of {model}: {outcome.result} ({outcome.reason}); MLflow run {outcome.run_id}")
    return outcome


def _retrain(stack, options, out, steps: Steps, run, outcome: Outcome, dataset: Path, root: Path) -> None:
    model, incumbent, version = stack.model_name, outcome.incumbent, outcome.candidate
    with steps.step("incumbent", f"{model} {incumbent}'s weights, gate set and training data"):
        mar = archive_for(stack, incumbent)
        lineage = archive_lineage(mar)
        weights = extract_source_weights(mar, root / "incumbent")
        gate_dir = extract_gate_set(mar, root / "incumbent")
        config = archive_config(mar)
        task, imgsz = config["handler"]["task"], int(config["handler"]["imgsz"])
        from ultralytics import YOLO

        names = {int(k): str(v) for k, v in YOLO(str(weights)).names.items()}
        train_data = Path(lineage["train_data"]) if lineage.get("train_data") else None
        if train_data is None:
            out(f"  warning: {mar.name} records no training data (package_mar.sh --train-data): the fine-tune sees "
                "the captures only, with no replay, and may forget what it knew")  # fmt: skip
    with steps.step("data", f"labelled captures in {dataset}, held-out share {options.holdout_share:.0%}"):
        ws = build_workspace(
            root / "work", dataset, task, names, train_data, gate_dir, options.replay_ratio, options.holdout_share,
            options.seed,
        )  # fmt: skip
        out(f"  {ws.counts}")
    run.params({**{k: v for k, v in asdict(options).items() if k not in ("fine_tune", "mlflow_dir")},
                **ws.counts, "incumbent": incumbent, "candidate": version, "task": task, "imgsz": imgsz,
                "train_data": train_data, **{f"ft_{k}": v for k, v in options.fine_tune.items()}})  # fmt: skip
    if ws.counts["captures"] == 0:
        raise RetrainError(f"{dataset}: every labelled capture is held out; label more captures (at least 2)")
    with steps.step("fine-tune", f"{options.epochs} epochs at imgsz {imgsz} from {incumbent}'s weights"):
        from retraining.finetune import fine_tune

        tuned = fine_tune(weights, ws.train, root / "fine-tune", options.epochs, imgsz, options.batch,
                          options.threads, options.seed, **options.fine_tune)  # fmt: skip
        run.metrics({"fine_tune_wall_s": tuned.wall_s, "epochs_run": tuned.epochs})
    with steps.step("compare", "incumbent and candidate on the held-out captures and the frozen gate set"):
        scores = outcome.scores
        frozen_data = Path(options.frozen_data) if options.frozen_data else ws.frozen
        frozen_images = count_images(frozen_data) if frozen_data else 0
        for name, data in (("holdout", ws.holdout), ("frozen", frozen_data)):
            if data is None or (name == "holdout" and ws.counts["holdout"] == 0):
                continue
            scores[f"{name}_incumbent"] = val_metric(weights, data, task, imgsz, options.threads, root / "scratch")
            scores[f"{name}_candidate"] = val_metric(
                tuned.weights, data, task, imgsz, options.threads, root / "scratch"
            )
            out(f"  {name}: incumbent {scores[f'{name}_incumbent']:.4f}, candidate {scores[f'{name}_candidate']:.4f}")
        run.metrics(scores)
        refusal = judge(scores, options, frozen_images, out)
        if refusal:
            raise RetrainError(refusal)
    with steps.step("package", f"{model} {version}, gated on {ws.counts['frozen'] + ws.counts['holdout']} images"):
        since = alarm_time(stack, model, incumbent)
        found = reference_images(stack, model, since, root / "reference")
        reference = root / "reference" if found >= options.reference_min else None
        if reference is None:
            out(f"  warning: {found} images captured since the drift alarm, {options.reference_min} needed for a "
                "drift reference: the candidate is watched for errors only")  # fmt: skip
        measured = gate_score(tuned.weights, ws, imgsz)
        threshold = options.gate_threshold if options.gate_threshold is not None else threshold_from(measured)
        write_gate_spec(ws, threshold, measured)
        out(f"  gate: the candidate's weights score {measured:.4f} on its gate set; threshold {threshold}")
        run.metrics({"gate_measured": measured, "gate_threshold": threshold})
        workers = config.get("minWorkers") if config.get("minWorkers") == config.get("maxWorkers") else None
        archive = package_candidate(stack, model, version, tuned.weights, ws, reference, workers, out)
        run.artifact(archive, "archive")
        run.params({"reference_images": found if reference else 0})
    canary_release(stack, options, steps, run, outcome, out)


def canary_release(stack: Stack, options: RetrainOptions, steps: Steps, run, outcome: Outcome, out) -> None:
    """The packaged candidate's gated canary, judged live (``watch_canary``): promoted when the verdict passes;
    rolled back when it fails, and when the watch itself fails (the gateway gone, an interrupt: raised again)."""
    model, incumbent, version = stack.model_name, outcome.incumbent, outcome.candidate
    with steps.step("canary", f"gated canary of {version} on {options.canary_percent:g}% of {model}'s traffic"):
        start_canary(stack, version, options.canary_percent, out=lambda line: out(f"  {line}"))
        try:
            verdict = watch_canary(stack.gateway_url, model, version, incumbent, options.canary_requests,
                                   options.canary_timeout_s, options.max_error_excess, out=out)  # fmt: skip
        except BaseException:  # the gateway gone, an interrupt: never leave the candidate taking traffic unjudged
            rollback(stack, out=lambda line: out(f"  {line}"))
            raise
        run.metrics(verdict.metrics())
        out(f"  canary {'passed' if verdict.passed else 'failed'}: {verdict.reason}")
    if verdict.passed:
        with steps.step("promote", f"{version} becomes {model}'s default"):
            promote(stack, version, out=lambda line: out(f"  {line}"))
        outcome.result, outcome.reason = "promoted", verdict.reason
    else:
        with steps.step("rollback", f"the canary of {version} is aborted; {incumbent} keeps every request"):
            rollback(stack, out=lambda line: out(f"  {line}"))
        outcome.result, outcome.reason = "rolled_back", verdict.reason
