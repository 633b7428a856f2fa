"""Drift signals, detectors, calibration and the gateway's per-version watch, without a server."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from yolo_signals import input_signals

from drift.calibrate import build_reference, calibration_table
from drift.detector import MARGIN, Detector, Reference
from drift.reference import CACHE, cache_folder, keep, kept_reference
from gateway.drift import SAVE_EVERY, DriftMonitor, state_key
from gateway.settings import Settings
from gateway.state import SQLiteStore
from serving.yolo_contract import CLASS_MIX, signal_tier
from tests.helpers import SAMPLES
from yolo_request import HandlerConfig
from yolo_tasks import TASK_UNITS

SAMPLE = SAMPLES / "scratch_01.jpg"


def rgb_of(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_input_signals_move_with_the_picture():
    bgr = cv2.imread(str(SAMPLE))
    height, width = bgr.shape[:2]
    plain = input_signals(rgb_of(bgr), width, height)
    dark = input_signals(rgb_of((bgr * 0.8).astype(np.uint8)), width, height)
    blurred = input_signals(rgb_of(cv2.GaussianBlur(bgr, (0, 0), 2)), width, height)
    _, q20 = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 20])
    compressed = input_signals(rgb_of(cv2.imdecode(q20, cv2.IMREAD_COLOR)), width, height)
    assert dark["luma"] < plain["luma"] * 0.85
    assert dark["contrast"] == pytest.approx(plain["contrast"], rel=0.05), "a dimmer lamp is named luma, not contrast"
    assert dark["sharpness"] == pytest.approx(plain["sharpness"], abs=0.1)
    assert blurred["sharpness"] < plain["sharpness"] - 1.0
    assert abs(blurred["luma"] - plain["luma"]) < 0.01
    assert compressed["blockiness"] > plain["blockiness"] + 0.2
    assert plain["aspect"] == pytest.approx(np.log(width / height))
    grey = input_signals(np.full((48, 64, 3), 128, np.uint8), 64, 48)
    assert grey["saturation"] == 0.0 and grey["contrast"] == 0.0 and grey["blockiness"] == 0.0
    assert input_signals(np.full((60, 80, 3), 128, np.uint8), 640, 480)["blockiness"] is None, "1/8 decode: no grid"


def output_signals(task: str, answer: dict, width: int, height: int) -> dict:
    """The output tier the handler's unit for ``task`` sends with ``answer``."""
    return TASK_UNITS[task](HandlerConfig(task=task), {}, end2end=False).signals(answer, width, height)


def test_output_signals_per_task():
    detections = [
        {"class": "dent", "confidence": 0.9, "bbox": [0, 0, 10, 10]},
        {"class": "dent", "confidence": 0.5, "bbox": [0, 0, 20, 10]},
        {"class": "stain", "confidence": 0.7, "bbox": [0, 0, 10, 20]},
    ]
    found = output_signals("detect", {"detections": detections}, 100, 100)
    assert found["detections"] == 3.0
    assert found["confidence_mean"] == pytest.approx(0.7) and found["confidence_min"] == 0.5
    assert found["box_area"] == pytest.approx(np.log((100 + 200 + 200) / 3 / 10_000))
    assert found[CLASS_MIX + "dent"] == 2.0 and found[CLASS_MIX + "stain"] == 1.0
    empty = output_signals("detect", {"detections": []}, 100, 100)
    assert empty["detections"] == 0.0 and empty["confidence_mean"] is None and empty["box_area"] is None
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    segment = output_signals("segment", {"detections": [{**detections[0], "polygons": [square]}]}, 100, 100)
    assert segment["mask_area"] == pytest.approx(np.log(0.01))
    keypoints = [{"confidence": 0.2}, {"confidence": 0.6}, {"confidence": None}]
    pose = output_signals("pose", {"detections": [{**detections[0], "keypoints": keypoints}]}, 100, 100)
    assert pose["keypoint_confidence"] == pytest.approx(0.4)
    top = output_signals("classify", {"classifications": [{"class": "ok", "confidence": 0.8}]}, 100, 100)
    assert top == {"top1_confidence": 0.8, CLASS_MIX + "ok": 1.0}
    assert {signal_tier(name) for name in top} == {"output"} and signal_tier("sharpness") == "input"


def synthetic_rows(count: int, seed: int, luma_shift: float = 0.0, stain_share: float = 1 / 3) -> list[dict]:
    """Requests as a detector sees them: two continuous signals, a count, a constant, and a class mix."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        found = int(rng.integers(0, 4))
        classes = rng.choice(["dent", "scratch", "stain"], size=found, p=[(1 - stain_share) / 2] * 2 + [stain_share])
        rows.append(
            {
                "luma": float(rng.normal(0.5 + luma_shift, 0.1)),
                "sharpness": float(rng.normal(4.0, 0.5)),
                "aspect": 0.2877,
                "detections": float(found),
                **{CLASS_MIX + c: float(list(classes).count(c)) for c in set(classes)},
            }
        )
    return rows


@pytest.fixture(scope="module")
def reference() -> Reference:
    return build_reference(synthetic_rows(2000, seed=1), seed=0, streams=120, length=40_000)


def test_the_reference_watches_every_signal_with_class_mix_derived(reference):
    names = [s.name for s in reference.signals]
    assert names[:4] == ["aspect", "detections", "luma", "sharpness"]
    assert sorted(n for n in names if n.startswith(CLASS_MIX)) == [CLASS_MIX + c for c in ("dent", "scratch", "stain")]
    stain = next(s for s in reference.signals if s.name == CLASS_MIX + "stain")
    assert stain.share == pytest.approx(1 / 3, abs=0.03)
    assert stain.value({CLASS_MIX + "stain": 2.0, CLASS_MIX + "dent": 1.0}) == pytest.approx(2 - 3 * stain.share)
    assert stain.value({"luma": 0.5}) is None, "no detections: nothing to say about the mix"
    erts = [ert for _, ert in reference.table]
    assert erts == sorted(erts) and erts[-1] > 20 * erts[0]
    assert Reference.from_stored(reference.stored()).scores(synthetic_rows(1, 5)[0]) == pytest.approx(
        reference.scores(synthetic_rows(1, 5)[0]), abs=1e-4
    )


def run_lengths(reference: Reference, threshold: float, rows: list[dict], alarms: int) -> list[int]:
    scores = np.stack([reference.scores(row) for row in rows])
    rng = np.random.default_rng(7)
    detector, found, since = Detector(reference, threshold), [], 0
    while len(found) < alarms:
        since += 1
        if detector.update_scores(scores[rng.integers(len(scores))]):
            found.append(since)
            since = 0
    return found


def test_the_predicted_false_alarm_rate_holds_on_traffic_the_reference_never_saw(reference):
    threshold, predicted = reference.threshold(300, 1.0)
    observed = np.mean(run_lengths(reference, threshold, synthetic_rows(2000, seed=2), alarms=150))
    assert 0.7 < observed / predicted < 1.3, (observed, predicted)


def test_a_shift_alarms_fast_and_names_the_shifted_signal_first(reference):
    threshold, _ = reference.threshold(10_000, MARGIN)
    detector = Detector(reference, threshold)
    shifted = synthetic_rows(200, seed=3, luma_shift=0.1)  # one standard deviation
    delay = next(i for i, row in enumerate(shifted, 1) if (crossed := detector.update(row)))
    assert delay < 60 and crossed[0].name == "luma" and crossed[0].tier == "input"
    assert detector.statistics().max() == 0.0, "an alarm starts every sum again"
    camera = Detector(reference, threshold)
    turned = next(i for i in range(1, 50) if camera.update({**synthetic_rows(1, seed=i)[0], "aspect": -0.2877}))
    assert turned <= 10, "a constant signal that changes is far out at once"
    mix = Detector(reference, threshold)
    stained = synthetic_rows(5000, seed=4, stain_share=0.8)
    crossed = next(found for row in stained if (found := mix.update(row)))
    assert crossed[0].name == CLASS_MIX + "stain" and crossed[0].tier == "output"


def test_calibration_sees_a_skipped_signal_as_unchanged():
    scores = np.full((100, 2), np.nan)
    scores[:, 0] = np.random.default_rng(0).normal(size=100)
    only = calibration_table(scores[:, :1], streams=40, length=5000)
    with_skipped = calibration_table(scores, streams=40, length=5000)
    assert only == with_skipped


class FakeTorchServe:
    """Where the monitor asks for a version's archived reference: the answer TorchServe's describe gives."""

    def __init__(self, reference: Reference | None):
        self.reference, self.calls = reference, 0

    async def __call__(self, model: str, version: str) -> dict | None:
        self.calls += 1
        return self.reference.stored() if self.reference else None


def test_the_watch_keeps_its_state_in_the_store_and_each_version_its_own(reference, tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    fetch = FakeTorchServe(reference)
    monitor = DriftMonitor(store, fetch, lambda model: 10_000)
    shifted = synthetic_rows(120, seed=8, luma_shift=0.1)

    async def feed():
        for row in synthetic_rows(SAVE_EVERY, seed=6):
            await monitor.observe("yolo", "1.0", row)
        for row in shifted:
            await monitor.observe("yolo", "2.0", row)

    asyncio.run(feed())
    assert fetch.calls == 2, "each version's reference is fetched once"
    one, two = monitor.watches[("yolo", "1.0")], monitor.watches[("yolo", "2.0")]
    assert one.state == "ok" and two.state == "warning" and two.alarms[0]["signal"] == "luma"
    assert store.get(state_key("yolo", "1.0"))["requests"] == SAVE_EVERY, "saved every SAVE_EVERY requests"
    monitor.save_all()
    again = DriftMonitor(store, FakeTorchServe(reference), lambda model: 10_000)
    restored = asyncio.run(again.watch("yolo", "2.0"))
    assert restored.requests == two.requests and restored.alarms == two.alarms
    assert restored.detector.statistics() == pytest.approx(two.detector.statistics())
    again.reset(restored)
    assert restored.state == "ok" and restored.requests == 0 and not store.get(state_key("yolo", "2.0"))["alarms"]
    bare = DriftMonitor(store, FakeTorchServe(None), lambda model: 10_000)
    asyncio.run(bare.observe("parts", "1.0", {"top1_confidence": 0.9}))
    assert bare.watches[("parts", "1.0")].report()["state"] == "no_reference"
    store.close()


def test_rebaseline_takes_recent_traffic_as_the_reference(reference, tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    monitor = DriftMonitor(store, FakeTorchServe(reference), lambda model: 10_000)

    async def feed_and_rebaseline():
        for row in synthetic_rows(600, seed=9, luma_shift=0.2):
            await monitor.observe("yolo", "1.0", row)
        return await monitor.rebaseline(monitor.watches[("yolo", "1.0")], 600)

    fresh = asyncio.run(feed_and_rebaseline())
    assert fresh.reference.source == "rebaseline" and fresh.state == "ok" and fresh.reference.images == 600
    luma = next(s for s in fresh.reference.signals if s.name == "luma")
    assert np.median(luma.values) == pytest.approx(0.7, abs=0.02)
    later = DriftMonitor(store, FakeTorchServe(reference), lambda model: 10_000)
    assert asyncio.run(later.watch("yolo", "1.0")).reference.source == "rebaseline", "kept in the store"
    store.close()


def test_targets_per_model_are_read_and_checked():
    settings = Settings(drift_target_ert=5000, drift_target_ert_by_model="parts=50000, yolo=20000")
    assert settings.target_ert("parts") == 50_000 and settings.target_ert("other") == 5000
    with pytest.raises(ValueError, match="'parts' is not MODEL=REQUESTS"):
        Settings(drift_target_ert_by_model="parts")


def test_references_are_kept_where_drift_reference_cache_says_or_nowhere(monkeypatch, tmp_path):
    monkeypatch.delenv("DRIFT_REFERENCE_CACHE", raising=False)
    assert cache_folder() == CACHE
    monkeypatch.setenv("DRIFT_REFERENCE_CACHE", str(tmp_path / "kept"))
    assert cache_folder() == tmp_path / "kept"
    monkeypatch.setenv("DRIFT_REFERENCE_CACHE", "")
    assert cache_folder() is None


def test_a_kept_reference_reads_back_as_it_was_stored(reference, tmp_path):
    kept = tmp_path / "cache" / "key.json"
    keep(kept, reference)
    assert [p.name for p in kept.parent.iterdir()] == ["key.json"]  # no partial file left behind
    assert kept_reference(kept).stored() == reference.stored()
    assert kept_reference(tmp_path / "cache" / "other.json") is None


def test_an_unreadable_or_unwritable_cache_is_a_warning_and_the_reference_is_computed(reference, tmp_path):
    said: list[str] = []
    for garbled in ("{not json", '{"images": 10}', "[]"):
        kept = tmp_path / "garbled.json"
        kept.write_text(garbled)
        assert kept_reference(kept, said.append) is None
        assert said.pop().startswith(f"warning: the kept drift reference {kept} cannot be read")
    (tmp_path / "a-file").write_text("")
    keep(tmp_path / "a-file" / "key.json", reference, said.append)  # its folder cannot be made
    assert said == [said[0]] and said[0].startswith("warning: the drift reference could not be kept in")
