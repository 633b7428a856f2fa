"""The captures of a stack's model, for the operator's command line: list, export for labelling, import labels.

The gateway keeps the captures (``gateway.capture``): images under the stack's capture folder,
rows in its state store. Exports take the model's task and class names from the weights its
default archive was packaged from, so the labels use the model's own ids.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gateway.capture.store import CaptureStore
from gateway.state import StateError, open_store
from operations.archives import DeployError, archive_for, extract_source_weights
from operations.stack import Stack, current_version
from operations.weights import WeightFacts, WeightsError, read_weight_facts
from retraining.datasets.imports import import_labels
from retraining.datasets.labelstudio import export_labelstudio
from retraining.datasets.layout import ExportSummary, ImportSummary
from retraining.datasets.yolo import export_yolo

FORMATS = ("yolo", "labelstudio")


def model_facts(stack: Stack) -> WeightFacts:
    """Task, class names and keypoint names of the stack model's default version, read from its weights."""
    version = current_version(stack)
    if version is None:
        raise DeployError(f"{stack.model_name} is not deployed on this stack: its task and classes are unknown")
    with tempfile.TemporaryDirectory() as folder:
        weights = extract_source_weights(archive_for(stack, version), Path(folder))
        try:
            return read_weight_facts(weights)
        except WeightsError as exc:
            raise DeployError(f"{stack.model_name} {version}: {exc}") from exc


def captured_rows(stack: Stack, reason: str | None = None, since: float | None = None) -> tuple[list[dict], object]:
    """(rows, a reader of their images) of the stack model's captures, oldest first, filtered."""
    try:
        state = open_store(stack.state_location)
    except StateError as exc:
        raise DeployError(str(exc)) from exc
    store = CaptureStore(stack.capture_dir, state)
    rows = [
        row
        for row in store.rows(stack.model_name)
        if (reason is None or reason in row["reasons"] or reason in {r.partition(":")[0] for r in row["reasons"]})
        and (since is None or row["time"] >= since)
    ]
    return rows, store.read


def export(stack: Stack, fmt: str, out: Path, reason: str | None = None, since: float | None = None) -> ExportSummary:
    """Write the captures as a YOLO dataset (predictions as pre-labels) or as Label Studio tasks."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: say {' or '.join(FORMATS)}")
    rows, read = captured_rows(stack, reason, since)
    if not rows:
        raise DeployError(
            f"{stack.model_name} has no captures{' with reason ' + reason if reason else ''} in {stack.capture_dir}: "
            "set a capture policy (GATEWAY_CAPTURE_POLICY) and send traffic"
        )
    facts = model_facts(stack)
    if fmt == "yolo":
        return export_yolo(rows, read, out, facts.names, facts.task, kpt_names=facts.kpt_names)
    return export_labelstudio(rows, read, out, facts.task, names=facts.names, kpt_names=facts.kpt_names)


def import_into(stack: Stack, dataset: Path, labels: Path, who: str) -> ImportSummary:
    """Bring corrected labels (a folder of YOLO label files, or Label Studio's JSON export) into ``dataset``."""
    facts = model_facts(stack)
    return import_labels(dataset, labels, facts.names, facts.task, who)
