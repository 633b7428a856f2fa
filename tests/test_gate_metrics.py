"""The deploy gate's math on hand-made cases with known answers, and on generated gate sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import generate_tasks as gt
from quality import gate_scoring, gate_sets, geometry
from quality.tasks import METRICS, task_of

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]


def diamond(cx: float, cy: float, half_diagonal: float) -> list[list[float]]:
    """A square turned 45 degrees, as corners."""
    d = half_diagonal
    return [[cx, cy - d], [cx + d, cy], [cx, cy + d], [cx - d, cy]]


def answer(task: str, detections: list[dict] | None = None, **extra) -> dict:
    return {"status": "success", "task": task, "detections": detections or [], **extra}


def det(cls: str, bbox: list[float], confidence: float = 0.9, **geometry) -> dict:
    return {"class": cls, "class_id": 0, "confidence": confidence, "bbox": bbox, **geometry}


def test_box_iou_known_values():
    assert geometry.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert geometry.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert geometry.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_rotated_iou_of_a_45_degree_square_with_its_upright_copy_is_one_over_root_two():
    upright = [[-1, -1], [1, -1], [1, 1], [-1, 1]]
    turned = diamond(0, 0, math.sqrt(2))
    assert geometry.rotated_iou(turned, turned) == pytest.approx(1.0)
    assert geometry.rotated_iou(upright, turned) == pytest.approx(1 / math.sqrt(2), abs=1e-5)


def test_rotated_iou_ignores_corner_order_and_direction():
    turned = diamond(50, 50, 30)
    shifted = diamond(60, 50, 30)
    expected = geometry.rotated_iou(turned, shifted)
    assert geometry.rotated_iou(turned[::-1], shifted[1:] + shifted[:1]) == pytest.approx(expected)
    # Two congruent diamonds shifted by a third of their diagonal along it overlap in a diamond 2/3 the size.
    along = diamond(70, 50, 30)
    inter = (2 / 3) ** 2
    assert geometry.rotated_iou(turned, along) == pytest.approx(inter / (2 - inter), abs=1e-5)
    assert geometry.rotated_iou(turned, diamond(200, 200, 30)) == 0.0


def test_polygon_area_and_rasterise():
    assert geometry.polygon_area(SQUARE) == 10000
    mask = geometry.rasterise([SQUARE], 200, 200)
    assert mask.shape == (200, 200)
    assert abs(int(mask.sum()) - 10000) <= 201  # the filled square, give or take its boundary row and column
    assert not geometry.rasterise([], 50, 40).any()


def test_mask_iou_of_half_overlapping_squares():
    a = geometry.rasterise([SQUARE], 200, 200)
    b = geometry.rasterise([[[x + 50, y] for x, y in SQUARE]], 200, 200)
    assert geometry.mask_iou(a, a) == 1.0
    assert geometry.mask_iou(a, b) == pytest.approx(1 / 3, abs=0.01)


def test_rasterise_unions_several_outlines():
    two = geometry.rasterise([SQUARE, [[x + 100, y] for x, y in SQUARE]], 300, 200)
    assert geometry.mask_iou(two, geometry.rasterise([[[0, 0], [200, 0], [200, 100], [0, 100]]], 300, 200)) > 0.98


def test_threshold_is_margin_below_floored_to_step_and_capped():
    assert gate_scoring.threshold_from(0.93) == 0.8
    assert gate_scoring.threshold_from(0.75) == 0.65
    assert gate_scoring.threshold_from(1.0) == 0.9
    assert gate_scoring.threshold_from(0.05) == 0.0


def _item(objects, width=200, height=200):
    return {"image": None, "width": width, "height": height, "objects": objects}


def test_detect_recall_needs_same_class_and_iou_half_and_counts_each_object_once():
    truth = [_item([{"class": "nut", "bbox": [0, 0, 10, 10]}, {"class": "bolt", "bbox": [50, 50, 70, 70]}])]
    hit = det("nut", [0, 0, 10, 12])
    duplicate = det("nut", [0, 0, 10, 10], 0.5)
    wrong_class = det("nut", [50, 50, 70, 70])
    assert task_of("detect").gate_metric(truth, [answer("detect", [hit, duplicate, wrong_class])]) == 0.5
    shifted = det("bolt", [60, 50, 80, 70])  # IoU 1/3
    assert task_of("detect").gate_metric(truth, [answer("detect", [shifted])]) == 0.0
    assert task_of("detect").gate_metric(truth, [answer("detect", [hit, det("bolt", [51, 50, 71, 70])])]) == 1.0


def test_error_answers_miss_everything_and_counts_must_line_up():
    truth = [_item([{"class": "nut", "bbox": [0, 0, 10, 10]}])]
    error = {"status": "error", "error": {"code": "bad_image", "message": "x"}}
    assert task_of("detect").gate_metric(truth, [error]) == 0.0
    with pytest.raises(ValueError):
        task_of("detect").gate_metric(truth, [])
    with pytest.raises(ValueError):
        task_of("detect").gate_metric([_item([])], [answer("detect")])


def test_segment_recall_uses_mask_iou_not_the_box():
    truth = [_item([{"class": "gasket", "polygon": SQUARE, "bbox": [0, 0, 100, 100]}])]
    right_outline_odd_box = det("gasket", [0, 0, 10, 10], polygons=[SQUARE])
    assert task_of("segment").gate_metric(truth, [answer("segment", [right_outline_odd_box])]) == 1.0
    # Right box, but the outline covers only the left third: mask IoU ~1/3.
    thin = [[0, 0], [33, 0], [33, 100], [0, 100]]
    assert (
        task_of("segment").gate_metric(truth, [answer("segment", [det("gasket", [0, 0, 100, 100], polygons=[thin])])])
        == 0.0
    )
    assert task_of("segment").gate_metric(truth, [answer("segment", [det("gasket", [0, 0, 100, 100])])]) == 0.0


def test_obb_recall_uses_rotated_iou():
    corners = diamond(100, 100, 50)
    truth = [_item([{"class": "plate", "corners": corners, "bbox": [50, 50, 150, 150]}])]
    same = det("plate", [50, 50, 150, 150], corners=corners[2:] + corners[:2])
    assert task_of("obb").gate_metric(truth, [answer("obb", [same])]) == 1.0
    # The upright box enclosing the diamond has twice its area: IoU 0.5, so a right axis-aligned box is not enough.
    assert geometry.rotated_iou(corners, [[50, 50], [150, 50], [150, 150], [50, 150]]) == pytest.approx(0.5)
    far = det("plate", [50, 50, 150, 150], corners=diamond(150, 100, 50))
    assert task_of("obb").gate_metric(truth, [answer("obb", [far])]) == 0.0


def kp(name: str, x: float, y: float) -> dict:
    return {"name": name, "x": x, "y": y, "confidence": 0.9}


def test_pose_pck_counts_visible_keypoints_within_a_tenth_of_the_box():
    box = [0, 0, 100, 50]  # radius 0.1 * 100 = 10 px
    truth = [
        _item(
            [
                {
                    "class": "tab",
                    "bbox": box,
                    "keypoints": [[10, 10, 2, "tip"], [90, 40, 2, "base"], [50, 0, 2, "left"], [50, 50, 0, "right"]],
                }
            ]
        )
    ]
    guess = det("tab", box, keypoints=[kp("tip", 16, 18), kp("base", 90, 51), kp("left", 0, 0), kp("right", 0, 0)])
    # tip 10 px away: hit; base 11 px away: miss; left 50 px away: miss; right not visible: not counted.
    assert task_of("pose").gate_metric(truth, [answer("pose", [guess])]) == pytest.approx(1 / 3)
    unmatched = det("tab", [60, 0, 160, 50], keypoints=guess["keypoints"])
    assert task_of("pose").gate_metric(truth, [answer("pose", [unmatched])]) == 0.0


def _tab(names: list[str]) -> list[dict]:
    """One labelled tab, radius 10 px, keypoints at x = 10, 30, 50, 70 (visible), under ``names``."""
    points = [[10, 10, 2], [30, 10, 2], [50, 10, 2], [70, 10, 2]]
    keypoints = [[*p, n] for p, n in zip(points, names, strict=True)]
    return [_item([{"class": "tab", "bbox": [0, 0, 100, 50], "keypoints": keypoints}])]


def _served(names: list[str], xs: list[float]) -> dict:
    return answer(
        "pose", [det("tab", [0, 0, 100, 50], keypoints=[kp(n, x, 10) for n, x in zip(names, xs, strict=True)])]
    )


@pytest.mark.parametrize(
    ("truth", "served"),
    [
        (["0", "1", "2", "3"], ["tip", "base", "left", "right"]),  # data.yaml without kpt_names, weights with them
        (["tip", "base", "left", "right"], ["0", "1", "2", "3"]),  # weights without them
        (["tip", "base", "left", "right"], ["a", "b", "c", "d"]),  # names on both sides that share none
        (["0", "1", "2", "3"], ["0", "1", "2", "3"]),
    ],
)
def test_pose_keypoints_are_matched_by_index_when_either_side_has_no_names(truth, served):
    assert task_of("pose").gate_metric(_tab(truth), [_served(served, [10, 30, 50, 70])]) == 1.0
    assert task_of("pose").gate_metric(_tab(truth), [_served(served, [10, 30, 50, 99])]) == 0.75


def test_pose_keypoints_are_matched_by_name_when_both_sides_name_them():
    named = ["tip", "base", "left", "right"]
    in_another_order = _served(["right", "left", "base", "tip"], [70, 50, 30, 10])
    assert task_of("pose").gate_metric(_tab(named), [in_another_order]) == 1.0
    assert gate_scoring.paired_keypoints(named, in_another_order["detections"][0]["keypoints"])[0]["name"] == "tip"
    missing_one = _served(["tip", "base", "left"], [10, 30, 50])
    assert task_of("pose").gate_metric(_tab(named), [missing_one]) == 0.75


def test_label_lines_of_the_wrong_length_are_refused_and_detect_takes_polygons():
    names = {0: "nut"}
    polygon = gate_sets.parse_label_line("detect", "0 0.1 0.2 0.3 0.2 0.2 0.4", 100, 100, names)
    assert polygon["bbox"] == pytest.approx([10, 20, 30, 40]) and "polygon" not in polygon
    for task, line in (("detect", "0 0.5 0.5 0.1"), ("obb", "0 0.1 0.1 0.2 0.2"), ("pose", "0 0.5 0.5 0.2 0.2 0.1")):
        with pytest.raises(ValueError, match=f"a {task} label has"):
            gate_sets.parse_label_line(task, line, 100, 100, names)
    with pytest.raises(KeyError):
        gate_sets.parse_label_line("detect", "3 0.5 0.5 0.1 0.1", 100, 100, names)
    two_d = gate_sets.parse_label_line("pose", "0 0.5 0.5 0.2 0.2 0.1 0.2 0.3 0.4", 100, 100, names, kpt_dim=2)
    np.testing.assert_allclose(two_d["keypoints"], [[10, 20, 2], [30, 40, 2]])


def test_classify_top1_takes_the_most_confident_class():
    truth = [{"class": "nut"}, {"class": "bolt"}]
    ranked = {"status": "success", "classifications": [{"class": "nut", "class_id": 2, "confidence": 0.7}]}
    wrong = {
        "status": "success",
        "classifications": [
            {"class": "washer", "class_id": 3, "confidence": 0.6},
            {"class": "bolt", "confidence": 0.4},
        ],
    }
    assert task_of("classify").gate_metric(truth, [ranked, wrong]) == 0.5


def perfect_answer(task: str, item: dict) -> dict:
    """The answer a flawless model would give, built from the labels: every gate metric must be 1."""
    if task == "classify":
        return {"status": "success", "classifications": [{"class": item["class"], "class_id": 0, "confidence": 1.0}]}
    detections = []
    for obj in item["objects"]:
        d = det(obj["class"], obj["bbox"])
        if task == "segment":
            d["polygons"] = [obj["polygon"]]
        elif task == "obb":
            d["corners"] = obj["corners"]
        elif task == "pose":
            d["keypoints"] = [kp(name, x, y) for x, y, _, name in obj["keypoints"]]
        detections.append(d)
    return answer(task, detections)


@pytest.mark.parametrize("task", gt.TASKS)
def test_generated_gate_set_loads_in_pixels_and_perfect_answers_score_one(tmp_path, task):
    size = (240, 180) if task != "classify" else (96, 96)
    gt.write_labelled_set(task, tmp_path, seed=3, split="test", count=4, size=size)
    (tmp_path / "gate.yaml").write_text(f"task: {task}\nmetric: {METRICS[task]}\nthreshold: 0.5\n")
    loaded_task, items = gate_sets.load_gate_set(tmp_path)
    assert loaded_task == task
    assert len(items) == 4 and all((i["width"], i["height"]) == size for i in items)
    for index in range(4):
        _, labels = gt.render_image(task, size, seed=3, split="test", index=index)
        item = next(i for i in items if i["image"].stem.endswith(f"_{index:03d}"))
        if task == "classify":
            assert item["class"] == labels["class"]
            continue
        assert [o["class"] for o in item["objects"]] == [o["class"] for o in labels]
        for got, want in zip(item["objects"], labels, strict=True):
            assert got["bbox"] == pytest.approx(want["bbox"], abs=0.01)
            for key in ("polygon", "corners"):
                if key in want:
                    np.testing.assert_allclose(got[key], want[key], atol=0.01)
            if task == "pose":
                assert [k[3] for k in got["keypoints"]] == list(gt.KPT_NAMES)
                np.testing.assert_allclose([k[:3] for k in got["keypoints"]], want["keypoints"], atol=0.01)
    assert task_of(task).gate_metric(items, [perfect_answer(task, i) for i in items]) == 1.0
