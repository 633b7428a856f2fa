"""Captured images as datasets (retraining/datasets/): YOLO exports Ultralytics trains on unchanged, Label Studio
tasks, corrected labels coming back (Label Studio round trips for every task, YOLO label folders), bad labels
refused whole, and subsets."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw

from retraining.datasets.imports import import_labels
from retraining.datasets.labelstudio import export_labelstudio
from retraining.datasets.layout import DatasetError, labelled_ids
from retraining.datasets.subsets import subset
from retraining.datasets.yolo import export_yolo
from retraining.workspace import WorkspaceError, build_workspace, split_labelled
from tests.helpers import ROOT

W, H = 160, 120
NAMES = {
    "detect": {0: "bolt", 1: "nut", 2: "washer"},
    "segment": {0: "gasket", 1: "bracket"},
    "pose": {0: "tab"},
    "obb": {0: "plate", 1: "label"},
    "classify": {0: "bolt", 1: "bracket", 2: "nut", 3: "washer"},
}
KPT_NAMES = {0: ["tip", "base", "left", "right"]}
MOVE = 2.0  # percent of the image a person moves the first region by in Label Studio


def jpeg(seed: int, width: int = W, height: int = H) -> bytes:
    """A small real JPEG: a grey plate with a few dark shapes."""
    image = Image.new("RGB", (width, height), (120 + seed * 10, 120, 110))
    draw = ImageDraw.Draw(image)
    draw.rectangle([20 + seed * 5, 30, 60 + seed * 5, 70], fill=(30, 30, 40))
    draw.ellipse([90, 20 + seed * 4, 130, 60 + seed * 4], fill=(200, 190, 60))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def obb_corners(cx: float, cy: float, w: float, h: float, angle: float) -> list[list[float]]:
    """Ultralytics' xywhr -> four corners."""
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = (w / 2 * cos, w / 2 * sin), (-h / 2 * sin, h / 2 * cos)
    return [[cx + a * u[0] + b * v[0], cy + a * u[1] + b * v[1]] for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]


def detection(task: str, class_id: int, confidence: float, bbox: list[float]) -> dict:
    """A detection in the contract's shape for ``task``."""
    x1, y1, x2, y2 = bbox
    found = {"class": NAMES[task][class_id], "class_id": class_id, "confidence": confidence, "bbox": bbox}
    if task == "segment":
        found["polygons"] = [
            [[x1, y1], [x2, y1], [x2, y2]],  # a smaller polygon: the largest one is the label
            [[x1, y1], [x2, y1 + 2], [x2 - 2, y2], [x1 + 1, y2 - 1], [x1, (y1 + y2) / 2]],
        ]
    if task == "pose":  # answered in another order than kpt_names, one keypoint unsure
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        found["keypoints"] = [
            {"name": "base", "x": cx, "y": y2 - 3, "confidence": 0.9},
            {"name": "tip", "x": cx, "y": y1 + 3, "confidence": 0.95},
            {"name": "right", "x": x2 - 3, "y": cy, "confidence": 0.3},
            {"name": "left", "x": x1 + 3, "y": cy, "confidence": 0.8},
        ]
    if task == "obb":
        o = {"cx": (x1 + x2) / 2, "cy": (y1 + y2) / 2, "w": (x2 - x1) * 0.8, "h": (y2 - y1) * 0.5, "angle": 0.4}
        found["obb"], found["corners"] = o, obb_corners(**o)
    return found


def answer(task: str, seed: int) -> dict:
    body = {
        "status": "success",
        "task": task,
        "image": {"width": W, "height": H},
        "model": {"name": "yolo", "version": "2.0"},
    }
    if task == "classify":
        order = [seed % 4, (seed + 1) % 4]
        body["classifications"] = [
            {"class": NAMES[task][c], "class_id": c, "confidence": p} for c, p in zip(order, (0.8, 0.15), strict=True)
        ]
    else:
        nc = len(NAMES[task])
        body["detections"] = [
            detection(task, seed % nc, 0.9, [20.0 + seed * 5, 30.0, 60.0 + seed * 5, 70.0]),
            detection(task, (seed + 1) % nc, 0.6, [90.0, 20.0 + seed * 4, 130.0, 60.0 + seed * 4]),
        ]
    return body


def captures(task: str, count: int = 3, failed: int = 0) -> tuple[list[dict], dict[str, bytes]]:
    """Manifest rows and their blobs (by sha256), ``failed`` of them with an error answer."""
    rows, blobs = [], {}
    for seed in range(count + failed):
        data = jpeg(seed)
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = data
        body = answer(task, seed) if seed < count else {"status": "error", "error": "boom"}
        rows.append(
            {
                "id": f"{seed:02d}c0ffee{seed:08x}",
                "request_id": f"r{seed}",
                "model": "yolo",
                "version": "2.0",
                "sha256": sha,
                "size": len(data),
                "media_type": "image/jpeg",
                "width": W,
                "height": H,
                "params": {"conf": 0.25},
                "answer": body,
                "reasons": ["random"],
                "time": 1764770000.0 + seed,
            }
        )
    return rows, blobs


def flat(points) -> list[float]:
    """Points in a fixed order (a label's corner order is free), flattened for pytest.approx."""
    return [c for point in sorted(map(tuple, points)) for c in point]


def comparable(task: str, line: list[float]) -> list[float]:
    """A label line with an obb's corners in a fixed order (a YOLO obb label's corner order is free)."""
    return [line[0], *flat(zip(line[1::2], line[2::2], strict=True))] if task == "obb" else line


def label_values(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


def export(task: str, root: Path, count: int = 3, failed: int = 0):
    rows, blobs = captures(task, count, failed)
    kpt = {"kpt_names": KPT_NAMES} if task == "pose" else {}
    summary = export_yolo(rows, lambda row: blobs[row["sha256"]], root / "yolo", NAMES[task], task, **kpt)
    return rows, blobs, summary


# -------------------------------------------------------------------------------------------------- YOLO export


def test_detect_export_layout_prelabels_and_skipped_rows(tmp_path):
    rows, blobs, summary = export("detect", tmp_path, count=3, failed=1)
    out = tmp_path / "yolo"
    assert (summary.path, summary.images, summary.skipped) == (out / "data.yaml", 3, 1)
    data = yaml.safe_load(summary.path.read_text())
    assert data == {"path": str(out.resolve()), "train": "images", "val": "images", "names": NAMES["detect"]}
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{r['id']}.jpg" for r in rows[:3]]
    assert (out / "images" / f"{rows[0]['id']}.jpg").read_bytes() == blobs[rows[0]["sha256"]]
    first = label_values(out / "labels" / f"{rows[0]['id']}.txt")
    assert first[0] == pytest.approx([0, 40 / W, 50 / H, 40 / W, 40 / H], abs=1e-6)
    assert first[1][0] == 1 and len(first) == 2
    traced = [json.loads(line) for line in (out / "captures.jsonl").read_text().splitlines()]
    assert [r["id"] for r in traced] == [r["id"] for r in rows[:3]] and traced[0]["answer"] == rows[0]["answer"]


def test_task_label_lines(tmp_path):
    """segment: the largest polygon; obb: the corners; pose: box then keypoints in kpt_names order, v=2 only
    at confidence >= 0.5; data.yaml carries kpt_shape and kpt_names (the names a retrained model answers with)."""
    rows, _, summary = export("segment", tmp_path / "s")
    (line, _) = label_values(tmp_path / "s" / "yolo" / "labels" / f"{rows[0]['id']}.txt")
    polygon = rows[0]["answer"]["detections"][0]["polygons"][1]
    assert line == pytest.approx([0] + [c / s for x, y in polygon for c, s in ((x, W), (y, H))], abs=1e-6)

    rows, _, summary = export("obb", tmp_path / "o")
    (line, _) = label_values(tmp_path / "o" / "yolo" / "labels" / f"{rows[0]['id']}.txt")
    corners = rows[0]["answer"]["detections"][0]["corners"]
    assert line == pytest.approx([0] + [c / s for x, y in corners for c, s in ((x, W), (y, H))], abs=1e-6)

    rows, blobs, summary = export("pose", tmp_path / "p")
    data = yaml.safe_load(summary.path.read_text())
    assert data["kpt_shape"] == [4, 3] and data["kpt_names"] == KPT_NAMES and "flip_idx" not in data
    (line, _) = label_values(tmp_path / "p" / "yolo" / "labels" / f"{rows[0]['id']}.txt")
    tip, base, left, right = [40 / W, 33 / H, 2], [40 / W, 67 / H, 2], [23 / W, 50 / H, 2], [0, 0, 0]  # right: unsure
    assert line == pytest.approx([0, 40 / W, 50 / H, 40 / W, 40 / H, *tip, *base, *left, *right], abs=1e-6)
    read = lambda row: blobs[row["sha256"]]  # noqa: E731
    export_yolo(rows, read, tmp_path / "f", NAMES["pose"], "pose", kpt_names=KPT_NAMES, flip_idx=[0, 1, 3, 2])
    assert yaml.safe_load((tmp_path / "f" / "data.yaml").read_text())["flip_idx"] == [0, 1, 3, 2]
    with pytest.raises(DatasetError, match="flip_idx"):
        export_yolo(rows, read, tmp_path / "g", NAMES["pose"], "pose", kpt_names=KPT_NAMES, flip_idx=[0, 1, 2])


def test_reexport_rewrites_prelabels_but_keeps_a_persons_labels(tmp_path):
    rows, blobs, _ = export("detect", tmp_path)
    out = tmp_path / "yolo"
    person = tmp_path / "person"
    person.mkdir()
    (person / f"{rows[1]['id']}.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    import_labels(out, person, NAMES["detect"], "detect", who="ana")
    for row in rows:
        row["answer"]["detections"] = row["answer"]["detections"][:1]
    summary = export_yolo(rows, lambda row: blobs[row["sha256"]], out, NAMES["detect"], "detect")
    assert (summary.images, summary.kept) == (3, 1)
    assert len(label_values(out / "labels" / f"{rows[0]['id']}.txt")) == 1  # a pre-label: rewritten
    assert label_values(out / "labels" / f"{rows[1]['id']}.txt") == [[2, 0.5, 0.5, 0.2, 0.2]]  # a person's: kept
    assert list(labelled_ids(out)) == [rows[1]["id"]] and labelled_ids(out)[rows[1]["id"]]["who"] == "ana"
    with pytest.raises(DatasetError, match="data.yaml"):
        export_yolo(rows, lambda row: blobs[row["sha256"]], out, {0: "other"}, "detect")


def test_classify_export_has_every_class_folder_in_train_and_val(tmp_path):
    rows, blobs, summary = export("classify", tmp_path)
    out = tmp_path / "yolo"
    assert summary.path == out.resolve() and summary.images == 3
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(NAMES["classify"].values())
        for row in rows:
            top = row["answer"]["classifications"][0]["class"]
            assert (out / split / top / f"{row['id']}.jpg").read_bytes() == blobs[row["sha256"]]
    with pytest.raises(DatasetError, match="sorted"):
        export_yolo(rows, lambda row: blobs[row["sha256"]], tmp_path / "x", {0: "nut", 1: "bolt"}, "classify")


# ------------------------------------------------------------------------------ Ultralytics trains on the export


def train(weights: str, data: Path, tmp_path: Path):
    from ultralytics import YOLO

    model = YOLO(str(ROOT / "models" / "weights" / "tasks" / weights / "best.pt"))
    model.train(
        data=str(data), epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu",
        project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False,
    )  # fmt: skip
    return model


@pytest.mark.training
def test_ultralytics_trains_on_a_detect_export_unchanged(tmp_path):
    _, _, summary = export("detect", tmp_path, count=4)
    model = train("detect", summary.path, tmp_path)
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    assert model.trainer.data["names"] == NAMES["detect"] and len(model.trainer.train_loader.dataset) == 4
    assert model.trainer.train_loader.dataset.labels[0]["cls"].size == 2  # the pre-labels were read


@pytest.mark.training
@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_ultralytics_trains_on_segment_pose_obb_exports_unchanged(task, tmp_path):
    """Pose: data.yaml's kpt_names become the trained model's, the names its answers carry."""
    _, _, summary = export(task, tmp_path, count=4)
    model = train(task, summary.path, tmp_path)
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    labels = model.trainer.train_loader.dataset.labels
    assert len(labels) == 4 and all(label["cls"].size == 2 for label in labels)
    if task == "pose":
        assert model.trainer.model.kpt_names == KPT_NAMES
        assert labels[0]["keypoints"].shape == (2, 4, 3)
    if task == "segment":
        assert len(labels[0]["segments"]) == 2


@pytest.mark.training
def test_ultralytics_trains_on_a_classify_export_unchanged(tmp_path):
    _, _, summary = export("classify", tmp_path, count=4)
    model = train("classify", summary.path, tmp_path)
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    assert model.trainer.data["names"] == NAMES["classify"]  # class ids as the served model's
    dataset = model.trainer.train_loader.dataset
    by_file = {Path(f).stem: c for f, c, *_ in dataset.samples}
    assert len(by_file) == 4 and set(by_file.values()) == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------ Label Studio exports


def test_labelstudio_tasks_and_labeling_config(tmp_path):
    rows, blobs = captures("pose", 2, failed=1)
    summary = export_labelstudio(
        rows, lambda row: blobs[row["sha256"]], tmp_path / "ls", "pose", names=NAMES["pose"], kpt_names=KPT_NAMES
    )
    assert (summary.images, summary.skipped) == (2, 1)
    tasks = json.loads(summary.path.read_text())
    first = tasks[0]
    assert first["data"]["image"] == f"/data/local-files/?d=images/{rows[0]['id']}.jpg"
    assert (tmp_path / "ls" / "images" / f"{rows[0]['id']}.jpg").is_file()
    assert first["data"]["capture_id"] == rows[0]["id"]
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == "2.0" and prediction["score"] == pytest.approx((0.9 + 0.6) / 2)
    box, *points = [r for r in prediction["result"] if r["id"].startswith(f"{rows[0]['id']}_0")]
    assert box["type"] == "rectanglelabels" and box["value"]["rectanglelabels"] == ["tab"]
    assert [box["value"][k] for k in ("x", "y", "width", "height", "rotation")] == pytest.approx(
        [12.5, 25, 25, 100 / 3, 0]
    )
    assert {r["from_name"] for r in points} == {"keypoint"} and len(points) == 3  # "right" is unsure: left out
    assert all(r["to_name"] == "image" and r["original_width"] == W and r["image_rotation"] == 0 for r in points)

    config = ET.fromstring((tmp_path / "ls" / "labeling_config.xml").read_text())
    image = config.find("Image")
    rectangles, keypoints = config.find("RectangleLabels"), config.find("KeyPointLabels")
    assert image.get("name") == "image" and image.get("value") == "$image"
    assert rectangles.get("name") == "label" and rectangles.get("toName") == "image"
    assert [label.get("value") for label in rectangles] == ["tab"]
    assert keypoints.get("name") == "keypoint" and [k.get("value") for k in keypoints] == KPT_NAMES[0]


def test_labelstudio_obb_rotates_about_the_top_left_corner(tmp_path):
    """Label Studio's rectangle turns about (x, y) by rotation degrees: its corners are the obb's corners."""
    rows, blobs = captures("obb", 1)
    summary = export_labelstudio(rows, lambda row: blobs[row["sha256"]], tmp_path, "obb", names=NAMES["obb"])
    for result, det in zip(json.loads(summary.path.read_text())[0]["predictions"][0]["result"],
                           rows[0]["answer"]["detections"], strict=True):  # fmt: skip
        v = result["value"]
        x, y, w, h, r = v["x"] * W / 100, v["y"] * H / 100, v["width"] * W / 100, v["height"] * H / 100, v["rotation"]
        cos, sin = math.cos(math.radians(r)), math.sin(math.radians(r))
        corners = [
            [x, y],
            [x + w * cos, y + w * sin],
            [x + w * cos - h * sin, y + w * sin + h * cos],
            [x - h * sin, y + h * cos],
        ]
        assert flat(corners) == pytest.approx(flat(det["corners"]), abs=1e-6)
    assert (
        ET.fromstring((tmp_path / "labeling_config.xml").read_text()).find("RectangleLabels").get("canRotate") == "true"
    )


# -------------------------------------------------------------------------------------------------- round trips


def labelstudio_export(tasks: list[dict], task: str) -> list[dict]:
    """What Label Studio's JSON export gives back after a person accepted the predictions and moved the first
    task's first region by MOVE percent to the right (classify: chose another class)."""
    exported = []
    for number, item in enumerate(tasks, 1):
        result = copy.deepcopy(item["predictions"][0]["result"])
        for region in result:
            region.pop("score")
        if number == 1:
            value = result[0]["value"]
            if task == "classify":
                value["choices"] = ["washer" if value["choices"] != ["washer"] else "bolt"]
            elif task == "segment":
                value["points"] = [[x + MOVE, y] for x, y in value["points"]]
            else:
                value["x"] += MOVE
        exported.append(
            item
            | {
                "id": number,
                "data": item["data"] | {"image": f"/data/upload/1/abcd1234-{item['data']['capture_id']}.jpg"},
                "annotations": [
                    {"id": 1, "result": [], "was_cancelled": True, "updated_at": "2026-12-03T13:00:00Z"},
                    {"id": 2, "result": result, "was_cancelled": False, "updated_at": "2026-12-03T13:20:00Z"},
                ],
            }
        )
    return exported


def expected_first_line(task: str, value: dict, keypoints: list[dict]) -> list[float]:
    """The YOLO label line the moved region must become, computed from its Label Studio value."""
    if task == "segment":
        return [0] + [c / 100 for point in value["points"] for c in point]
    x, y, w, h = (value[k] / 100 for k in ("x", "y", "width", "height"))
    if task == "obb":
        angle = math.radians(value["rotation"])
        X, Y, Wp, Hp = x * W, y * H, w * W, h * H  # noqa: N806 (pixels)
        cos, sin = math.cos(angle), math.sin(angle)
        corners = [
            (X, Y),
            (X + Wp * cos, Y + Wp * sin),
            (X + Wp * cos - Hp * sin, Y + Wp * sin + Hp * cos),
            (X - Hp * sin, Y + Hp * cos),
        ]
        return [0] + [c / s for px, py in corners for c, s in ((px, W), (py, H))]
    line = [0, x + w / 2, y + h / 2, w, h]
    if task == "pose":
        by_name = {k["value"]["keypointlabels"][0]: k["value"] for k in keypoints}
        for name in KPT_NAMES[0]:
            line += [by_name[name]["x"] / 100, by_name[name]["y"] / 100, 2] if name in by_name else [0, 0, 0]
    return line


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb", "classify"])
def test_labelstudio_round_trip(task, tmp_path):
    rows, blobs, _ = export(task, tmp_path)
    read = lambda row: blobs[row["sha256"]]  # noqa: E731
    kpt = {"kpt_names": KPT_NAMES} if task == "pose" else {}
    summary = export_labelstudio(rows, read, tmp_path / "ls", task, names=NAMES[task], **kpt)
    exported = labelstudio_export(json.loads(summary.path.read_text()), task)
    exported.append({"id": 99, "data": {"image": "/data/upload/1/ffff-stranger.jpg"}, "annotations": []})
    source = tmp_path / "export.json"
    source.write_text(json.dumps(exported))

    imported = import_labels(tmp_path / "yolo", source, NAMES[task], task, who="reviewer")

    ids = sorted(r["id"] for r in rows)
    assert (imported.labelled, imported.ids, imported.unknown) == (3, ids, ["/data/upload/1/ffff-stranger.jpg"])
    record = labelled_ids(tmp_path / "yolo")
    assert sorted(record) == ids and record[ids[0]]["who"] == "reviewer" and record[ids[0]]["source"] == str(source)
    first, result = rows[0]["id"], exported[0]["annotations"][1]["result"]

    def holds_the_persons_label() -> None:
        if task == "classify":
            chosen = result[0]["value"]["choices"][0]
            for split in ("train", "val"):
                assert [p.parent.name for p in (tmp_path / "yolo" / split).glob(f"*/{first}.jpg")] == [chosen]
            return
        lines = label_values(tmp_path / "yolo" / "labels" / f"{first}.txt")
        keypoints = [r for r in result if r["type"] == "keypointlabels" and r["id"].startswith(f"{first}_0_")]
        expected = expected_first_line(task, result[0]["value"], keypoints)
        assert len(lines) == 2
        assert comparable(task, lines[0]) == pytest.approx(comparable(task, expected), abs=1e-4)

    holds_the_persons_label()
    again = export_yolo(rows, read, tmp_path / "yolo", NAMES[task], task, **kpt)  # pre-labels again: kept
    assert again.kept == 3
    holds_the_persons_label()
    if task != "classify":  # a prediction accepted unchanged imports as the pre-label export_yolo writes
        accepted = label_values(tmp_path / "yolo" / "labels" / f"{rows[1]['id']}.txt")
        export_yolo(rows, read, tmp_path / "fresh", NAMES[task], task, **kpt)
        prelabels = label_values(tmp_path / "fresh" / "labels" / f"{rows[1]['id']}.txt")
        for line, prelabel in zip(accepted, prelabels, strict=True):
            assert comparable(task, line) == pytest.approx(comparable(task, prelabel), abs=1e-4)


# ------------------------------------------------------------------------------------------- YOLO folder import


def test_yolo_folder_import(tmp_path):
    rows, _, _ = export("pose", tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{rows[0]['id']}.txt").write_text("0 0.5 0.5 0.25 0.25 0.5 0.4 2 0.5 0.6 2 0 0 0 0.6 0.5 1\n\n")
    (labels / f"{rows[2]['id']}.txt").write_text("")  # a person says: nothing there
    (labels / "stranger.txt").write_text("0 0.5 0.5 0.1 0.1" + " 0 0 0" * 4 + "\n")
    imported = import_labels(tmp_path / "yolo", labels, NAMES["pose"], "pose")
    assert (imported.labelled, imported.ids, imported.unknown) == (
        2,
        sorted([rows[0]["id"], rows[2]["id"]]),
        ["stranger.txt"],
    )
    out = tmp_path / "yolo" / "labels"
    assert label_values(out / f"{rows[0]['id']}.txt") == [
        [0, 0.5, 0.5, 0.25, 0.25, 0.5, 0.4, 2, 0.5, 0.6, 2, 0, 0, 0, 0.6, 0.5, 1]
    ]
    assert (out / f"{rows[2]['id']}.txt").read_text() == ""
    assert len(label_values(out / f"{rows[1]['id']}.txt")) == 2  # untouched pre-label

    rows, _, _ = export("classify", tmp_path / "c")
    labels = tmp_path / "classes"
    labels.mkdir()
    (labels / f"{rows[0]['id']}.txt").write_text("2\n")
    imported = import_labels(tmp_path / "c" / "yolo", labels, NAMES["classify"], "classify")
    assert imported.ids == [rows[0]["id"]]
    assert sorted(p.parent.name for p in (tmp_path / "c" / "yolo").glob(f"*/*/{rows[0]['id']}.jpg")) == ["nut", "nut"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("3 0.5 0.5 0.1 0.1", "class id 3 is not one of this model's classes"),
        ("1 0.5 0.5 0.1", "4 values where a detect label has 5"),
        ("1 0.5 1.5 0.1 0.1", "coordinate 1.5 is outside"),
        ("one 0.5 0.5 0.1 0.1", "not a class id and numbers"),
    ],
)
def test_a_bad_yolo_label_is_refused_and_nothing_is_written(line, problem, tmp_path):
    rows, _, _ = export("detect", tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{rows[0]['id']}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (labels / f"{rows[1]['id']}.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    before = (tmp_path / "yolo" / "labels" / f"{rows[0]['id']}.txt").read_text()
    with pytest.raises(DatasetError, match=problem) as raised:
        import_labels(tmp_path / "yolo", labels, NAMES["detect"], "detect")
    assert f"{labels / rows[1]['id']}.txt:2" in str(raised.value)
    assert (tmp_path / "yolo" / "labels" / f"{rows[0]['id']}.txt").read_text() == before
    assert labelled_ids(tmp_path / "yolo") == {}


def test_a_file_that_is_not_a_labelstudio_export_is_refused(tmp_path):
    rows, blobs, _ = export("detect", tmp_path)
    tasks = export_labelstudio(rows, lambda row: blobs[row["sha256"]], tmp_path / "ls", "detect").path
    not_export = tmp_path / "min.json"
    not_export.write_text(json.dumps({"image": "x.jpg", "label": []}))
    for source, problem in [(not_export, "not a Label Studio JSON export"), (tasks, "predictions only")]:
        with pytest.raises(DatasetError, match=problem) as raised:
            import_labels(tmp_path / "yolo", source, NAMES["detect"], "detect")
        assert str(source) in str(raised.value)
    exported = labelstudio_export(json.loads(tasks.read_text()), "detect")
    exported[1]["annotations"][1]["result"][0]["value"]["rectanglelabels"] = ["screw"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(exported))
    with pytest.raises(DatasetError, match=r"task 1 .* result 0: label 'screw'") as raised:
        import_labels(tmp_path / "yolo", bad, NAMES["detect"], "detect")
    assert str(bad) in str(raised.value) and labelled_ids(tmp_path / "yolo") == {}


# ----------------------------------------------------------------------------------------------------- subsets


def test_subset_holds_only_the_ids(tmp_path):
    rows, _, _ = export("detect", tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{rows[2]['id']}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    import_labels(tmp_path / "yolo", labels, NAMES["detect"], "detect")
    data = subset(tmp_path / "yolo", [rows[0]["id"], rows[2]["id"]], tmp_path / "gate")
    gate = tmp_path / "gate"
    assert data == gate.resolve() / "data.yaml" and yaml.safe_load(data.read_text())["path"] == str(gate.resolve())
    assert sorted(p.stem for p in (gate / "images").iterdir()) == sorted([rows[0]["id"], rows[2]["id"]])
    assert sorted(p.stem for p in (gate / "labels").iterdir()) == sorted([rows[0]["id"], rows[2]["id"]])
    assert list(labelled_ids(gate)) == [rows[2]["id"]]
    assert len((gate / "captures.jsonl").read_text().splitlines()) == 2
    with pytest.raises(DatasetError, match="not empty"):
        subset(tmp_path / "yolo", [rows[0]["id"]], gate)
    with pytest.raises(DatasetError, match="nope"):
        subset(tmp_path / "yolo", ["nope"], tmp_path / "other")

    rows, _, _ = export("classify", tmp_path / "c")
    folder = subset(tmp_path / "c" / "yolo", [rows[1]["id"]], tmp_path / "cgate")
    assert sorted(p.name for p in (folder / "val").iterdir()) == sorted(NAMES["classify"].values())
    assert sorted(p.relative_to(folder).parts[0] for p in folder.glob("*/*/*.jpg")) == ["train", "val"]


# ------------------------------------------------------------------------------------ into a retraining's data


def test_a_labelled_tiff_capture_reaches_the_training_set(tmp_path):
    """The export keeps a TIFF capture as .tiff; the retraining's data must read it back, not drop it."""
    rows, blobs = captures("detect", count=2)
    tiff = io.BytesIO()
    Image.open(io.BytesIO(blobs[rows[1]["sha256"]])).save(tiff, "TIFF")
    sha = hashlib.sha256(tiff.getvalue()).hexdigest()
    blobs[sha] = tiff.getvalue()
    rows[1] |= {"media_type": "image/tiff", "sha256": sha, "size": len(tiff.getvalue())}
    export_yolo(rows, lambda row: blobs[row["sha256"]], tmp_path / "yolo", NAMES["detect"], "detect")
    assert (tmp_path / "yolo" / "images" / f"{rows[1]['id']}.tiff").is_file()
    person = tmp_path / "person"
    person.mkdir()
    for row in rows:
        (person / f"{row['id']}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    import_labels(tmp_path / "yolo", person, NAMES["detect"], "detect")
    ws = build_workspace(tmp_path / "ws", tmp_path / "yolo", "detect", NAMES["detect"], None, None)
    assert ws.counts["captures"] + ws.counts["holdout"] == 2
    placed = sorted(p.suffix for p in (tmp_path / "ws").glob("*/images/*"))
    assert ".tiff" in placed


def test_a_retraining_with_nothing_to_gate_on_is_refused_with_the_fix(tmp_path):
    """One labelled capture that lands in the training share and no gate set: no gate set can be written, so
    the workspace refuses with what to do instead of failing on a missing folder."""
    rows, blobs = captures("detect", count=1)
    export_yolo(rows, lambda row: blobs[row["sha256"]], tmp_path / "yolo", NAMES["detect"], "detect")
    person = tmp_path / "person"
    person.mkdir()
    (person / f"{rows[0]['id']}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    import_labels(tmp_path / "yolo", person, NAMES["detect"], "detect")
    assert split_labelled(tmp_path / "yolo") == ([rows[0]["id"]], [])  # the case: it lands in the training share
    with pytest.raises(WorkspaceError, match="nothing to gate the candidate on.*label more captures"):
        build_workspace(tmp_path / "ws", tmp_path / "yolo", "detect", NAMES["detect"], None, None)
