"""Tests for the defect model: dataset generator, metric math, gateway scoring path, training, weights."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
sys.path.insert(0, str(MODELS))

import evaluate  # noqa: E402
import generate_dataset as gd  # noqa: E402
import train  # noqa: E402
from metrics import detection_metrics  # noqa: E402

NAMES = list(gd.CLASSES)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in {".jpg", ".txt"}
    }


def test_class_names_and_order():
    assert gd.CLASSES == ("scratch", "dent", "stain")


def test_generator_is_deterministic_by_seed(tmp_path):
    counts = {"train": 4, "val": 2, "test": 2}
    a = _files(gd.generate(tmp_path / "a", 7, counts, (320, 240)).parent)
    b = _files(gd.generate(tmp_path / "b", 7, counts, (320, 240)).parent)
    c = _files(gd.generate(tmp_path / "c", 8, counts, (320, 240)).parent)
    assert len(a) == 16 and a == b
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_test_split_regenerates_alone(tmp_path):
    full = gd.generate(tmp_path / "full", 3, {"train": 3, "val": 1, "test": 3}, (320, 240)).parent
    alone = gd.generate(tmp_path / "alone", 3, {"train": 0, "val": 0, "test": 3}, (320, 240)).parent
    assert _files(full / "images" / "test") == _files(alone / "images" / "test")
    assert _files(full / "labels" / "test") == _files(alone / "labels" / "test")


def test_labels_are_valid(tmp_path):
    root = gd.generate(tmp_path / "d", 0, {"train": 40, "val": 0, "test": 0}).parent
    seen, empty = set(), 0
    for label in (root / "labels" / "train").glob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        empty += not rows
        for c, cx, cy, w, h in rows:
            cx, cy, w, h = map(float, (cx, cy, w, h))
            seen.add(int(c))
            assert int(c) in (0, 1, 2)
            assert 0 < w <= 1 and 0 < h <= 1
            assert cx - w / 2 >= -1e-6 and cy - h / 2 >= -1e-6
            assert cx + w / 2 <= 1 + 1e-6 and cy + h / 2 <= 1 + 1e-6
    assert seen == {0, 1, 2} and empty > 0


def test_clean_render_has_no_boxes():
    img, boxes = gd.render(np.random.default_rng(1), 640, 480, classes=[])
    assert boxes == [] and img.shape == (480, 640, 3)


IMG = [(0, 10, 10, 60, 30), (1, 100, 100, 140, 150), (2, 200, 50, 260, 120)]


def test_metrics_perfect_and_empty():
    perfect = [{"gt": IMG, "pred": [(c, 0.9, *b) for c, *b in IMG]}]
    m = detection_metrics(perfect, NAMES)["overall"]
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP50-95"] == pytest.approx(1.0)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    m = detection_metrics([{"gt": IMG, "pred": []}], NAMES)["overall"]
    assert m == {"precision": 0.0, "recall": 0.0, "mAP50": 0.0, "mAP50-95": 0.0}


def test_metrics_hand_computed():
    # One GT; ranked FP then TP: the best precision at any recall level is 0.5, so AP = 0.5.
    one = [{"gt": [(0, 0, 0, 10, 10)], "pred": [(0, 0.9, 50, 50, 60, 60), (0, 0.8, 0, 0, 10, 10)]}]
    assert detection_metrics(one, NAMES)["overall"]["mAP50"] == pytest.approx(0.5)
    # Two GTs; TP, FP, TP: precision 1 for the 51 recall samples 0..0.50, 2/3 for the 50 samples 0.51..1.
    two = [
        {
            "gt": [(0, 0, 0, 10, 10), (0, 20, 20, 30, 30)],
            "pred": [(0, 0.9, 0, 0, 10, 10), (0, 0.8, 50, 50, 60, 60), (0, 0.7, 20, 20, 30, 30)],
        }
    ]
    assert detection_metrics(two, NAMES)["overall"]["mAP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # IoU 0.72 (box shifted by 4 px of 25): correct at thresholds 0.50..0.70 only -> mAP50-95 = 5/10.
    shifted = [{"gt": [(0, 0, 0, 25, 10)], "pred": [(0, 0.9, 4, 0, 29, 10)]}]
    m = detection_metrics(shifted, NAMES)["overall"]
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP50-95"] == pytest.approx(0.5)
    # A wrong class never matches.
    assert detection_metrics([{"gt": IMG[:1], "pred": [(1, 0.9, *IMG[0][1:])]}], NAMES)["overall"]["mAP50"] == 0


def test_metrics_match_ultralytics_ap():
    """Same P/R as Ultralytics; AP within 0.01 (COCO mean vs Ultralytics trapezoid, see metrics.py)."""
    from metrics import ap_per_class
    from ultralytics.utils.metrics import ap_per_class as ul_ap_per_class

    rng = np.random.default_rng(0)
    tp = rng.random((200, 10)) < 0.6
    conf, pred_cls, target_cls = rng.random(200), rng.integers(0, 3, 200), rng.integers(0, 3, 150)
    ours = ap_per_class(tp, conf, pred_cls, target_cls)
    _, _, p, r, _, ap, *_ = ul_ap_per_class(tp, conf, pred_cls, target_cls)
    assert np.abs(ours["ap"] - ap).max() < 0.01
    assert np.allclose(ours["p"], p) and np.allclose(ours["r"], r)


def _payload(preds):
    return {
        "status": "success",
        "model": {"name": "yolo", "version": "2.0"},
        "image": {"width": 640, "height": 480},
        "detections": [
            {"class": NAMES[c], "class_id": c, "confidence": s, "bbox": [x1, y1, x2, y2]}
            for c, s, x1, y1, x2, y2 in preds
        ],
    }


def test_gateway_parsing_scores_like_local():
    preds = [(0, 0.95, 11, 10, 60, 31), (2, 0.4, 200, 50, 258, 118), (1, 0.2, 300, 300, 320, 330)]
    parsed = evaluate.parse_gateway_response(_payload(preds), NAMES)
    assert parsed == preds
    by_name = _payload(preds)
    for d in by_name["detections"]:
        del d["class_id"]
    assert evaluate.parse_gateway_response(by_name, NAMES) == parsed
    items = [{"gt": IMG}]
    assert evaluate.map_metrics(items, [parsed], NAMES) == evaluate.map_metrics(items, [preds], NAMES)
    with pytest.raises(ValueError):
        evaluate.parse_gateway_response({"status": "error"}, NAMES)


@pytest.mark.training
def test_train_smoke(tmp_path):
    data = train.ensure_dataset(1, {"train": 8, "val": 4, "test": 0}, (160, 128), root=tmp_path / "ds")
    save_dir, wall = train.train_run(data, run_dir=tmp_path / "runs" / "smoke", epochs=1, imgsz=64, batch=4, seed=1)
    assert wall > 0 and (save_dir / "weights" / "best.pt").exists()
    record = {"epochs": 1, "val_metrics": train.final_val_metrics(save_dir / "results.csv")}
    best = train.publish(save_dir, tmp_path / "weights" / "v0.1", record)
    assert best.stat().st_size < 10_000_000
    assert json.loads((best.parent / "training.json").read_text())["val_metrics"]["epochs_run"] == 1


@pytest.fixture(scope="module")
def v2_test_split(tmp_path_factory):
    record = json.loads((MODELS / "weights" / "v2.0" / "training.json").read_text())
    counts = {"train": 0, "val": 0, "test": record["dataset"]["counts"]["test"]}
    data = train.ensure_dataset(
        record["seed"], counts, tuple(record["dataset"]["size"]), root=tmp_path_factory.mktemp("ds")
    )
    return data, record


def test_published_weights_layout():
    link = MODELS / "weights" / "best.pt"
    assert link.is_symlink() and os.readlink(link) == "v2.0/best.pt"
    for version in ("v1.0", "v2.0"):
        assert (MODELS / "weights" / version / "best.pt").stat().st_size < 10_000_000


def test_v2_reproduces_recorded_metrics(v2_test_split):
    data, record = v2_test_split
    recorded = json.loads((MODELS / "weights" / "v2.0" / "metrics.json").read_text())
    items, names = evaluate.load_split(data)
    weights = MODELS / "weights" / "v2.0" / "best.pt"
    ours = evaluate.map_metrics(items, evaluate.predict_local(weights, items, record["imgsz"]), names)["overall"]
    assert ours["mAP50"] == pytest.approx(recorded["overall"]["mAP50"], abs=0.02)
    assert ours["mAP50"] >= 0.9
    ul = evaluate.ultralytics_val(weights, data, record["imgsz"])
    for key in ("mAP50", "mAP50-95"):
        assert ours[key] == pytest.approx(ul[key], abs=0.01)
