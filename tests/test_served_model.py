"""The deployed model equals the trained one: the evaluation CLI's gateway path against the real stack."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import ROOT, WEIGHTS

sys.path.insert(0, str(ROOT / "models"))

import evaluate  # noqa: E402
import train  # noqa: E402

pytestmark = pytest.mark.integration


def test_served_v1_scores_like_its_weights(stack, tmp_path):
    """Same held-out images through the gateway (OpenVINO, reduced JPEG decode) and through Ultralytics on the .pt."""
    record = json.loads((WEIGHTS["1.0"].parent / "training.json").read_text())
    counts = {"train": 0, "val": 0, "test": 60}
    data = train.ensure_dataset(record["seed"], counts, tuple(record["dataset"]["size"]), root=tmp_path)
    items, names = evaluate.load_split(data)
    served, model = evaluate.predict_gateway(stack.gateway_url, items, names)
    assert model == {"name": "yolo", "version": "1.0"}
    local = evaluate.predict_local(WEIGHTS["1.0"], items, record["imgsz"])
    served_metrics = evaluate.map_metrics(items, served, names)["overall"]
    local_metrics = evaluate.map_metrics(items, local, names)["overall"]
    for key in ("mAP50", "mAP50-95"):
        assert served_metrics[key] == pytest.approx(local_metrics[key], abs=0.01), (served_metrics, local_metrics)
