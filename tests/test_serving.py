"""The whole path as a user drives it: real TorchServe (token auth on), real gateway, real images."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import assert_finds_ground_truth, assert_valid_contract

pytestmark = pytest.mark.integration


def inference_key(stack) -> str:
    return json.loads(stack.key_file.read_text())["inference"]["key"]


def gateway_predict(stack, path, **params) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(
            f"{stack.gateway_url}/predict", files={"file": (path.name, handle)}, params=params, timeout=60
        )


def test_health_reports_the_served_version(stack):
    body = httpx.get(f"{stack.gateway_url}/health").json()
    ready = body["workers_ready"]
    assert body == {
        "status": "ok",
        "model": "yolo",
        "version": "1.0",
        "workers_ready": ready,
        "models": {"yolo": ready},
    }
    assert ready >= 1
    assert httpx.get(f"{stack.gateway_url}/health/live").json() == {"status": "ok"}


def test_gateway_finds_the_labelled_defects(stack, ground_truth):
    for truth in ground_truth:
        response = gateway_predict(stack, truth.path)
        assert response.status_code == 200, response.text
        body = response.json()
        assert_valid_contract(body, truth.width, truth.height)
        assert body["model"] == {"name": "yolo", "version": "1.0"}
        assert response.headers["X-Model-Version"] == "1.0"
        assert_finds_ground_truth(body["detections"], truth)
        if not truth.boxes:
            assert body["detections"] == [], f"{truth.name} is defect-free"


def test_torchserve_direct_agrees_with_the_gateway(stack, ground_truth):
    truth = next(t for t in ground_truth if t.boxes)
    direct = httpx.post(
        f"{stack.inference_url}/predictions/yolo",
        content=truth.path.read_bytes(),
        headers={"Authorization": f"Bearer {inference_key(stack)}"},
        timeout=60,
    )
    assert direct.status_code == 200, direct.text
    via_gateway = gateway_predict(stack, truth.path).json()
    assert direct.json()["detections"] == via_gateway["detections"]


def test_torchserve_keeps_token_authorization_on(stack, ground_truth):
    data = ground_truth[0].path.read_bytes()
    anonymous = httpx.post(f"{stack.inference_url}/predictions/yolo", content=data, timeout=30)
    assert anonymous.status_code in (400, 401) and "Token" in anonymous.text
    management = httpx.get(f"{stack.management_url}/models", timeout=10)
    assert management.status_code in (400, 401)


def test_gateway_survives_a_rotated_inference_key(stack, ground_truth):
    """A key TorchServe replaced (expiry or restart) never reaches the user as an error."""
    truth = ground_truth[0]
    assert gateway_predict(stack, truth.path).status_code == 200  # gateway caches the current key
    old = inference_key(stack)
    api_key = json.loads(stack.key_file.read_text())["API"]["key"]
    rotated = httpx.post(
        f"{stack.management_url}/token", params={"type": "inference"}, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert rotated.status_code == 200
    assert inference_key(stack) != old
    stale = httpx.post(
        f"{stack.inference_url}/predictions/yolo",
        content=truth.path.read_bytes(),
        headers={"Authorization": f"Bearer {old}"},
    )
    assert stale.status_code in (400, 401), "the old key must really be dead for this test to mean anything"
    assert gateway_predict(stack, truth.path).status_code == 200


def test_query_parameters_reach_the_handler(stack, ground_truth):
    truth = max(ground_truth, key=lambda t: len(t.boxes))
    one = gateway_predict(stack, truth.path, max_det=1, conf=0.01).json()
    assert len(one["detections"]) == 1
    strict = gateway_predict(stack, truth.path, conf=0.99).json()
    assert all(d["confidence"] >= 0.99 for d in strict["detections"])
    keep = truth.boxes[0]["class"]
    only = gateway_predict(stack, truth.path, classes=keep).json()
    assert {d["class"] for d in only["detections"]} <= {keep}


def test_pinned_version_and_unknown_version(stack, ground_truth):
    pinned = gateway_predict(stack, ground_truth[0].path, version="1.0")
    assert pinned.status_code == 200 and pinned.json()["model"]["version"] == "1.0"
    missing = gateway_predict(stack, ground_truth[0].path, version="9.9")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_models_lists_versions_without_leaking_keys(stack):
    response = httpx.get(f"{stack.gateway_url}/models")
    assert response.status_code == 200
    listed = response.json()
    assert listed["default_model"] == "yolo" and [m["name"] for m in listed["models"]] == ["yolo"]
    body = httpx.get(f"{stack.gateway_url}/models/yolo").json()
    assert body == listed["models"][0]
    assert body["serves_predict"] and body["default_version"] == "1.0" and body["task"] == "detect"
    assert [v["version"] for v in body["versions"]] == ["1.0"]
    keys = json.loads(stack.key_file.read_text())
    assert not any(entry["key"] in response.text for entry in keys.values())
