"""Several models side by side: our defect detector (``yolo``) and a part classifier (``parts``).

One TorchServe and one gateway serve both, as ``make up`` starts them: every model with a
cold-start pointer in the store is loaded on its own current version. Each model is then
deployed, canaried, promoted and rolled back on its own while both take traffic, and no
request to either may fail.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.loadgen import Load
from operations.history import read_history
from operations.releases import load_version
from operations.stack import all_ready, running, set_current, start_torchserve, stop_service, wait_until
from tests.helpers import ROOT, WEIGHTS, TestStack, package

pytestmark = pytest.mark.integration

PARTS_WEIGHTS = ROOT / "models" / "weights" / "tasks" / "classify" / "best.pt"
PARTS_GATE = ROOT / "samples" / "gates" / "classify"
PARTS_IMAGES = sorted(PARTS_GATE.glob("*/*.jpg"))


def package_parts(store: Path, version: str) -> None:
    """The classifier as an operator packages it: its own name, gate set and one worker."""
    package(store, version, PARTS_WEIGHTS, name="parts", workers=1, gate_data=PARTS_GATE)


@pytest.fixture(scope="module")
def two(model_store, tmp_path_factory):
    """A stack serving yolo 1.0 and parts 1.0; the store also holds yolo 2.0 and parts 1.1."""
    store = tmp_path_factory.mktemp("two-models-store")
    shutil.copy(model_store / "yolo_v1.0.mar", store)
    package(store, "2.0", WEIGHTS["2.0"])
    package_parts(store, "1.0")
    package_parts(store, "1.1")
    stack = TestStack.private(tmp_path_factory.mktemp("two-models-run"), store)
    set_current(dataclasses.replace(stack, model_name="parts"), "1.0")
    with running(stack, "1.0") as instance:
        yield instance


def operate(stack: TestStack, script: str, model: str, *args: str) -> subprocess.CompletedProcess:
    """scripts/deploy.sh or rollback.sh on one model, pointed at the private stack by options."""
    where = ["--model", model, "--run-dir", str(stack.run_dir), "--model-store", str(stack.model_store)]
    ports = ["--inference-port", str(stack.inference_port), "--management-port", str(stack.management_port)]
    cmd = ["bash", f"scripts/{script}.sh", *where, *ports, "--drain", "1", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} {model} {args}: {result.stdout}{result.stderr}"
    return result


def worker_pids(stack: TestStack, model: str) -> set[int]:
    with stack.torchserve() as ts:
        return {w["pid"] for w in ts.workers(model)} | {
            w["pid"] for version in ts.loaded_versions(model) for w in ts.workers(model, version)
        }


def post(url: str, image: Path, **params: str) -> httpx.Response:
    return httpx.post(url, files={"file": (image.name, image.read_bytes())}, params=params, timeout=60)


def test_up_serves_every_model_on_its_own_version_and_workers(two):
    listed = httpx.get(f"{two.gateway_url}/models", timeout=30).json()
    assert listed["default_model"] == "yolo"
    by_name = {m["name"]: m for m in listed["models"]}
    assert sorted(by_name) == ["parts", "yolo"]
    assert by_name["yolo"]["task"] == "detect" and by_name["yolo"]["serves_predict"]
    assert by_name["parts"]["task"] == "classify" and not by_name["parts"]["serves_predict"]
    assert sorted(by_name["parts"]["classes"].values()) == sorted(p.name for p in PARTS_GATE.iterdir() if p.is_dir())
    workers = {name: [(v["version"], v["workers_total"]) for v in m["versions"]] for name, m in by_name.items()}
    assert workers == {"yolo": [("1.0", 2)], "parts": [("1.0", 1)]}, "workers come from each archive's config"
    assert httpx.get(f"{two.gateway_url}/models/parts", timeout=30).json() == by_name["parts"]
    health = httpx.get(f"{two.gateway_url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["models"] == {"yolo": 2, "parts": 1}


def test_each_model_answers_at_its_own_route_as_ultralytics_does(two, ground_truth):
    from ultralytics import YOLO

    reference = YOLO(str(PARTS_WEIGHTS))
    for image in PARTS_IMAGES[:4]:
        body = post(f"{two.gateway_url}/models/parts/predict", image).json()
        assert body["task"] == "classify" and body["model"] == {"name": "parts", "version": "1.0"}
        expected = reference.predict(str(image), verbose=False)[0].probs
        assert body["classifications"][0]["class_id"] == expected.top1
        assert abs(body["classifications"][0]["confidence"] - float(expected.top1conf)) < 0.02
    photo = ground_truth[0].path
    named, default = post(f"{two.gateway_url}/models/yolo/predict", photo), post(f"{two.gateway_url}/predict", photo)
    assert named.json()["detections"] == default.json()["detections"] and named.json()["model"]["name"] == "yolo"
    files = [("files", (p.name, p.read_bytes())) for p in PARTS_IMAGES[:3]]
    batch = httpx.post(f"{two.gateway_url}/models/parts/predict/batch", files=files, timeout=60).json()
    assert [(r["http_status"], r["task"]) for r in batch["results"]] == [(200, "classify")] * 3


def test_an_unknown_model_is_a_404_that_names_the_served_ones(two, ground_truth):
    photo = ground_truth[0].path
    for answer in (
        post(f"{two.gateway_url}/models/nope/predict", photo),
        httpx.post(f"{two.gateway_url}/models/nope/predict/batch", files=[("files", ("a.jpg", b"x"))], timeout=30),
        httpx.get(f"{two.gateway_url}/models/nope", timeout=30),
    ):
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert error["code"] == "unknown_model" and "'nope'" in error["message"]
        assert "parts" in error["message"] and "yolo" in error["message"]
    malformed = post(f"{two.gateway_url}/models/..%2Fetc/predict", photo)
    assert malformed.status_code in (404, 422) and malformed.json()["status"] == "error"
    assert post(f"{two.gateway_url}/models/9lives/predict", photo).status_code == 422
    wrong = post(f"{two.gateway_url}/models/parts/predict", PARTS_IMAGES[0], conf="0.5")
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "parameter_not_applicable"


def test_each_model_is_deployed_canaried_and_rolled_back_alone_under_load(two, ground_truth):
    yolo_images = [t.path for t in ground_truth]
    parts_workers = worker_pids(two, "parts")
    with (
        Load(two.gateway_url, yolo_images, clients=3) as detector,
        Load(two.gateway_url, PARTS_IMAGES, clients=3, path="/models/parts/predict") as classifier,
    ):
        detector.wait_for(6)
        classifier.wait_for(6)
        operate(two, "deploy", "yolo", "2.0", "--canary", "30")
        operate(two, "rollback", "yolo")  # aborts the canary
        operate(two, "deploy", "yolo", "2.0")
        operate(two, "rollback", "yolo")
        assert worker_pids(two, "parts") == parts_workers, "the classifier's workers never restarted"
        yolo_workers = worker_pids(two, "yolo")
        operate(two, "deploy", "parts", "1.1", "--canary", "50")
        operate(two, "deploy", "parts", "1.1", "--promote")
        operate(two, "rollback", "parts")
        operate(two, "deploy", "parts", "1.1")
        assert worker_pids(two, "yolo") == yolo_workers, "the detector's workers never restarted"
        settled = time.monotonic()
        detector.wait_for(6, after=settled)
        classifier.wait_for(6, after=settled)
    print(f"under load: yolo {dict(detector.statuses())}, parts {dict(classifier.statuses())}")
    assert detector.statuses() == {200: len(detector.answers)}, detector.statuses()
    assert classifier.statuses() == {200: len(classifier.answers)}, classifier.statuses()
    assert detector.versions() == {"1.0", "2.0"} and classifier.versions() == {"1.0", "1.1"}
    assert detector.versions(sent_after=settled) == {"1.0"} and classifier.versions(sent_after=settled) == {"1.1"}

    parts = dataclasses.replace(two, model_name="parts")
    assert [(e["action"], e["version"]) for e in read_history(parts)] == [
        ("canary", "1.1"),
        ("promote", "1.1"),
        ("rollback", "1.0"),
        ("deploy", "1.1"),
    ]
    assert [(e["action"], e["version"]) for e in read_history(two)] == [
        ("canary", "2.0"),
        ("rollback", "1.0"),
        ("deploy", "2.0"),
        ("rollback", "1.0"),
    ]
    described = {m["name"]: m for m in httpx.get(f"{two.gateway_url}/models", timeout=30).json()["models"]}
    workers = {name: {v["version"]: v["workers_total"] for v in m["versions"]} for name, m in described.items()}
    assert workers == {"yolo": {"1.0": 2, "2.0": 2}, "parts": {"1.0": 1, "1.1": 1}}, "as each archive says"
    assert os.readlink(two.current_archive("yolo")) == "yolo_v1.0.mar"
    assert os.readlink(two.current_archive("parts")) == "parts_v1.1.mar"
    text = httpx.get(f"{two.gateway_url}/metrics", timeout=10).text
    assert 'gateway_predictions_total{model="parts",model_version="1.1"}' in text


def test_a_new_model_joins_the_running_stack_with_its_first_deploy(two):
    package(two.model_store, "1.0", PARTS_WEIGHTS, name="spare", workers=1, gate_data=PARTS_GATE)
    first = operate(two, "deploy", "spare", "1.0")
    assert "as the first version of 'spare'" in first.stdout and "quality gate passed" in first.stdout
    assert os.readlink(two.current_archive("spare")) == "spare_v1.0.mar"
    answer = post(f"{two.gateway_url}/models/spare/predict", PARTS_IMAGES[0])
    assert answer.status_code == 200 and answer.json()["model"] == {"name": "spare", "version": "1.0"}
    history = read_history(dataclasses.replace(two, model_name="spare"))
    assert [(e["action"], e["version"], e["previous"], e["gated"]) for e in history] == [("deploy", "1.0", None, True)]


def test_a_restart_brings_every_model_back_on_its_current_version(two):
    stop_service(two, "torchserve")
    pid = start_torchserve(two)
    wait_until(lambda: all_ready(two), "torchserve", 180, pid, two.log_dir / "torchserve.log")
    by_name = {m["name"]: m for m in httpx.get(f"{two.gateway_url}/models", timeout=30).json()["models"]}
    assert {name: m["default_version"] for name, m in by_name.items()} == {
        "yolo": "1.0",
        "parts": "1.1",
        "spare": "1.0",
    }


def test_the_page_switches_between_models_and_their_versions(two, page, ground_truth):
    from playwright.sync_api import expect

    from tests.test_web_ui import upload, wait_for_answer

    truth = max(ground_truth, key=lambda t: len(t.boxes))
    parts = dataclasses.replace(two, model_name="parts")
    with parts.torchserve() as ts:
        if "1.0" not in ts.loaded_versions("parts"):  # the restart above loaded each model's current version only
            load_version(parts, ts, "1.0")
    page.goto(two.gateway_url)
    expect(page.locator("#models-status")).to_contain_text("Model yolo (detect)")
    options = ["parts (classify)", "spare (classify)", "yolo (detect) · default"]
    assert page.locator("#model option").all_inner_texts() == options
    assert upload(page, truth.path) == "done"
    boxes = post(f"{two.gateway_url}/models/yolo/predict", truth.path, conf="0.25", iou="0.7").json()["detections"]
    assert page.locator("#overlay").get_attribute("data-box-count") == str(len(boxes))

    with page.expect_request(lambda request: "/models/parts/predict" in request.url) as sent:
        page.select_option("#model", "parts")
    assert wait_for_answer(page) == "done"
    assert "conf=" not in sent.value.url, "a classifier is sent no box thresholds"
    expect(page.locator("#models-status")).to_contain_text("Model parts (classify)")
    assert page.locator("#overlay").get_attribute("data-box-count") == "0"
    top = post(f"{two.gateway_url}/models/parts/predict", truth.path).json()["classifications"]
    assert page.locator("#overlay").get_attribute("data-class-count") == str(len(top))
    assert page.locator("#conf").is_hidden()
    expect(page.locator("#answered-version")).to_have_text("v1.1")

    page.select_option("#version", "1.0")
    assert wait_for_answer(page) == "done"
    expect(page.locator("#answered-version")).to_have_text("v1.0")
    page.select_option("#model", "yolo")
    assert wait_for_answer(page) == "done"
    assert page.locator("#version").input_value() == "", "a version pin belongs to the model it was chosen for"
    assert page.locator("#overlay").get_attribute("data-box-count") == str(len(boxes))
    runs = page.locator("#compare tbody tr td:first-child").all_inner_texts()
    assert runs == ["yolo v1.0", "parts v1.0", "parts v1.1", "yolo v1.0"]
