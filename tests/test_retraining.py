"""Retraining as a release: the canary's verdict, the compare, the trigger policy, the data split, the canary's
rollback, and the whole loop (capture, label, fine-tune, gate, canary, promote) on the real stack in its short
version."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from benchmarks.ct_demo import QUICK, Clock, Plan, run
from gateway.metrics import GatewayMetrics
from operations.history import read_canary, read_history, record
from operations.stack import Stack, current_version, free_port
from retraining.canary import arm_counts, decide
from retraining.pipeline import Outcome, RetrainOptions, Steps, canary_release, judge
from retraining.tracking import runs, tracked_run
from retraining.trigger import TriggerPolicy, due, load_triggers
from retraining.workspace import in_holdout, replay_items, split_labelled
from scripts import captures
from tests.helpers import WEIGHTS, package


def test_the_canary_fails_on_drift_or_errors_passes_on_enough_answers_and_never_on_no_evidence():
    def verdict(counts, state="ok", waited=10.0):
        alarms = [{"signal": "sharpness"}] if state != "ok" else []
        return decide(counts, state, alarms, waited, min_requests=100, timeout_s=60, max_error_excess=0.01)

    assert verdict((40, 0, 90, 0)) is None, "not enough answers yet"
    assert verdict((100, 0, 200, 0)).passed
    failed = verdict((10, 0, 20, 0), state="warning")
    assert not failed.passed and "drift state is warning (sharpness)" in failed.reason
    assert not verdict((50, 4, 100, 0)).passed, "4 errors in 54 against none"
    assert verdict((50, 2, 100, 0)) is None, "two errors are not a verdict yet"
    assert verdict((97, 3, 190, 10)).passed, "3 % against the default's 5 %"
    late = verdict((5, 0, 10, 0), waited=61)
    assert not late.passed and "only 5 canary answers in 60 s" in late.reason


def test_arm_counts_read_the_gateways_own_metrics():
    metrics = GatewayMetrics()
    for version, count in (("2.0", 7), ("2.1", 3)):
        for _ in range(count):
            metrics.record_prediction({"model": {"name": "yolo", "version": version}, "detections": []}, 0.01)
    metrics.prediction_errors.labels("yolo", "default", "worker_died").inc()
    metrics.prediction_errors.labels("yolo", "2.1", "worker_died").inc(2)
    metrics.prediction_errors.labels("parts", "1.0", "timeout").inc()
    from prometheus_client import generate_latest

    answers, errors = arm_counts(generate_latest(metrics.registry).decode(), "yolo")
    assert answers == {"2.0": 7, "2.1": 3} and errors == {"default": 1, "2.1": 2}


def test_the_candidate_must_beat_the_incumbent_on_new_data_and_not_forget_the_old():
    options = RetrainOptions()
    assert judge({"holdout_incumbent": 0.70, "holdout_candidate": 0.78, "frozen_incumbent": 0.9,
                  "frozen_candidate": 0.895}, options) is None  # fmt: skip
    assert "not better" in judge({"holdout_incumbent": 0.70, "holdout_candidate": 0.70}, options)
    forgot = {"holdout_incumbent": 0.7, "holdout_candidate": 0.8, "frozen_incumbent": 0.9, "frozen_candidate": 0.88}
    assert "forgets" in judge(forgot, options, frozen_images=600)
    said = []
    assert judge(forgot, options, frozen_images=6, out=said.append) is None, "6 images cannot tell 0.02 from noise"
    assert "on 6 images that is noise-level" in said[0]


def test_the_quick_loops_compare_refuses_a_candidate_that_lost_on_the_held_out_captures():
    """make ct-demo --quick's settings: one gentle epoch may leave the candidate a little under the incumbent on its
    few held-out captures (as measured), never far under it; its forgetting check warns on the 6-image gate set."""
    options = RetrainOptions(min_gain=QUICK.min_gain, tolerance=QUICK.tolerance)
    scores = {"holdout_incumbent": 0.879, "frozen_incumbent": 0.934, "frozen_candidate": 0.923}
    assert judge({**scores, "holdout_candidate": 0.854}, options, frozen_images=6) is None
    assert "not better" in judge({**scores, "holdout_candidate": 0.75}, options, frozen_images=6)
    assert "not better" in judge({**scores, "holdout_candidate": 0.879}, RetrainOptions(min_gain=Plan().min_gain))
    said = []
    assert judge({**scores, "holdout_candidate": 0.854}, options, frozen_images=6, out=said.append) is None
    assert "noise-level" in said[0], "the frozen check is not switched off: it says it cannot judge on 6 images"


def test_the_held_out_slice_is_stable_and_never_empty(tmp_path):
    ids = [f"{n:016x}" for n in range(200)]
    held = [i for i in ids if in_holdout(i)]
    assert 20 <= len(held) <= 60 and held == [i for i in ids if in_holdout(i)]
    (tmp_path / "labelled.json").write_text(json.dumps({i: {"when": "2026-12-03T00:00:00+00:00"} for i in ids[:2]}))
    train, holdout = split_labelled(tmp_path)
    assert len(train) == 1 and len(holdout) == 1
    (tmp_path / "labelled.json").unlink()
    with pytest.raises(Exception, match="no labelled captures: export them"):
        split_labelled(tmp_path)


def test_a_trigger_is_a_sustained_alarm_with_enough_labels_or_the_schedule(tmp_path):
    now = time.time()
    alarm = {"state": "warning", "alarms": [{"signal": "sharpness", "time": datetime.fromtimestamp(now - 1800, UTC)
                                                                             .isoformat()}]}  # fmt: skip
    policy = TriggerPolicy(drift_sustained_min=20, min_new_labels=100, every_hours=24)
    assert due(policy, alarm, 150, now - 3600, now) == "drift alarm (warning) standing 30 min, 150 new labels"
    assert due(policy, alarm, 50, now - 3600, now) is None, "too few new labels"
    assert due(TriggerPolicy(drift_sustained_min=40, min_new_labels=1), alarm, 150, None, now) is None, "too recent"
    assert due(policy, {"state": "ok", "alarms": []}, 5, now - 25 * 3600, now).startswith("schedule: every 24 h")
    assert due(policy, None, 0, now - 25 * 3600, now) is None, "nothing new to learn from"
    path = tmp_path / "retrain.yaml"
    path.write_text("yolo: {drift_sustained_min: 30, min_new_label: 5}\n")
    with pytest.raises(ValueError, match=r"retrain.yaml: yolo.min_new_label: Extra inputs"):
        load_triggers(path)


def test_the_captures_command_says_what_is_missing(tmp_path, capsys):
    common = ["--run-dir", str(tmp_path), "--model-store", str(tmp_path)]
    assert captures.main(["export", *common, "--out", str(tmp_path / "out")]) == 1
    assert "yolo has no captures in " in capsys.readouterr().err
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert captures.main(["import", *common, "--dataset", str(tmp_path / "none"), "--labels", str(tmp_path)]) == 1
    assert "error: yolo is not deployed on this stack" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.training
def test_the_loop_captures_labels_fine_tunes_gates_canaries_and_promotes(tmp_path):
    """make ct-demo's short version: a few defocused captures, one epoch, a gated canary under traffic."""
    plan = dataclasses.replace(QUICK, mlflow_dir=tmp_path / "mlflow")
    figures = run(plan, tmp_path / "work", Clock())
    outcome = figures["outcome"]
    assert outcome["result"] == "promoted", outcome
    assert figures["labelled"] == figures["defocused_requests"] >= plan.captures, "each defocused part, labelled"
    assert figures["default_after"] == outcome["candidate"] == "2.1"
    assert set(figures["sharp_statuses"] + figures["canary_statuses"]) == {200}
    actions = figures["history_actions"]
    steps = ["retrain-incumbent", "retrain-data", "retrain-fine-tune", "retrain-compare", "retrain-package"]
    assert actions[-10:] == [*steps, "canary", "retrain-canary", "promote", "retrain-promote", "retrain"], actions
    assert set(outcome["steps"]) == {"incumbent", "data", "fine-tune", "compare", "package", "canary", "promote"}
    (tracked,) = runs("yolo", tmp_path / "mlflow")
    assert tracked["status"] == "FINISHED" and tracked["tags"]["result"] == "promoted"
    held_out = int(tracked["params"]["captures"]) + int(tracked["params"]["holdout"])
    assert tracked["params"]["candidate"] == "2.1" and held_out == figures["labelled"]
    assert float(tracked["params"]["min_gain"]) == QUICK.min_gain and float(tracked["params"]["tolerance"]) == 0.01
    assert "archive" in tracked["artifacts"] and tracked["metrics"]["canary_answers"] >= plan.canary_requests
    assert {"holdout_incumbent", "holdout_candidate", "frozen_incumbent", "frozen_candidate"} <= set(tracked["metrics"])


@pytest.mark.parametrize("home", ["images_raw/ds", "images/ds", "ds"])
def test_replayed_images_find_their_labels_by_ultralytics_rule(tmp_path, home):
    """The last /images/ of an image's path becomes /labels/, whatever the folders above are called."""
    root = tmp_path / home
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        (root / "images" / split / "a.jpg").write_bytes(b"")
        (root / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {{0: bolt}}\n")
    (item,) = replay_items(root / "data.yaml", "detect", 5)
    assert item.label == root / "labels" / "train" / "a.txt" and item.label.is_file()


@pytest.mark.integration
def test_a_canary_that_fails_its_verdict_or_cannot_be_watched_is_rolled_back(stack, tmp_path):
    """retrain's last step on the real stack: a candidate whose canary gets no answer in its 3 s fails its verdict
    and is rolled back; one whose watch fails (the gateway unreachable) is rolled back and the failure raised. Each
    leaves v1.0 serving every request, the candidate unloaded, and the history saying so."""
    package(stack.model_store, "1.8", WEIGHTS["1.0"], fmt="pt")
    said: list[str] = []

    def release(on: Stack, options: RetrainOptions) -> tuple[Outcome, Steps]:
        steps = Steps(said.append, done=lambda step, s: record(stack, f"retrain-{step}", "1.8", "1.0", seconds=s))
        outcome = Outcome("yolo", "1.0", "1.8", "refused", "", {}, steps.times)
        with tracked_run("yolo", "yolo 1.0 -> 1.8", tmp_path / "mlflow") as run:
            canary_release(on, options, steps, run, outcome, said.append)
        return outcome, steps

    def rolled_back() -> list[tuple[str, str]]:
        assert read_canary(stack) is None and current_version(stack) == "1.0"
        with stack.torchserve() as ts:
            assert "1.8" not in ts.loaded_versions(stack.model_name)
        return [(entry["action"], entry.get("aborted_canary") or entry["version"]) for entry in read_history(stack)]

    outcome, _ = release(stack, RetrainOptions(canary_requests=1000, canary_timeout_s=3))
    assert outcome.result == "rolled_back" and "only 0 canary answers in 3 s" in outcome.reason, said
    assert set(outcome.steps) == {"canary", "rollback"}
    canaried = [("canary", "1.8"), ("retrain-canary", "1.8"), ("rollback", "1.8"), ("retrain-rollback", "1.8")]
    assert rolled_back()[-4:] == canaried

    unreachable = dataclasses.replace(stack, gateway_port=free_port())
    with pytest.raises(httpx.ConnectError):
        release(unreachable, RetrainOptions(canary_requests=1000, canary_timeout_s=60))
    assert rolled_back()[-6:] == [*canaried, ("canary", "1.8"), ("rollback", "1.8")]
