"""The gateway's public API beyond single predictions: batches, pictures, auth, metrics, limits, failures."""

from __future__ import annotations

import io
import subprocess
import time

import httpx
import pytest
from PIL import Image

from operations.stack import free_port, wait_until
from tests.helpers import ROOT, assert_finds_ground_truth, assert_valid_contract

pytestmark = pytest.mark.integration


def test_batch_keeps_request_order_and_per_file_status(stack, ground_truth):
    files = [("files", (t.name, t.path.read_bytes())) for t in ground_truth]
    files.insert(1, ("files", ("notes.jpg", b"not an image")))
    response = httpx.post(f"{stack.gateway_url}/predict/batch", files=files, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    assert [r["index"] for r in results] == list(range(len(files)))
    bad = results.pop(1)
    assert (bad["http_status"], bad["status"], bad["error"]["code"]) == (415, "error", "invalid_image")
    for result, truth in zip(results, ground_truth, strict=True):
        assert result["http_status"] == 200 and result["status"] == "success"
        assert_valid_contract(result, truth.width, truth.height)
        assert_finds_ground_truth(result["detections"], truth)


def test_batch_refuses_more_files_than_the_cap(extra_gateway, ground_truth):
    url = extra_gateway(GATEWAY_MAX_BATCH_FILES="2").gateway_url
    data = ground_truth[0].path.read_bytes()
    response = httpx.post(f"{url}/predict/batch", files=[("files", ("a.jpg", data))] * 3, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_files"


def test_annotated_image_format(stack, ground_truth):
    truth = next(t for t in ground_truth if t.boxes)
    with truth.path.open("rb") as handle:
        response = httpx.post(
            f"{stack.gateway_url}/predict", files={"file": handle}, params={"format": "image"}, timeout=60
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["X-Model-Version"] == "1.0"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (truth.width, truth.height)
    original = Image.open(truth.path).convert("RGB")
    assert list(picture.getdata()) != list(original.getdata()), "boxes must be drawn"


def test_api_keys_guard_predict_routes_only(extra_gateway, ground_truth):
    url = extra_gateway(GATEWAY_API_KEYS="alpha-key,beta-key").gateway_url
    data = ground_truth[0].path.read_bytes()

    def predict(headers: dict) -> httpx.Response:
        return httpx.post(f"{url}/predict", files={"file": ("a.jpg", data)}, headers=headers, timeout=60)

    missing = predict({})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert "X-API-Key" in missing.json()["error"]["message"]
    assert predict({"X-API-Key": "wrong"}).status_code == 401
    assert predict({"X-API-Key": "beta-key"}).status_code == 200
    assert predict({"Authorization": "Bearer alpha-key"}).status_code == 200
    batch = httpx.post(f"{url}/predict/batch", files=[("files", ("a.jpg", data))], timeout=60)
    assert batch.status_code == 401
    for open_route in ("/health", "/health/live", "/metrics"):
        assert httpx.get(f"{url}{open_route}", timeout=10).status_code == 200


def test_metrics_cover_requests_latency_uploads_detections_and_versions(stack, ground_truth):
    truth = next(t for t in ground_truth if t.boxes)
    with truth.path.open("rb") as handle:
        assert httpx.post(f"{stack.gateway_url}/predict", files={"file": handle}, timeout=60).status_code == 200
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    assert 'gateway_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.5",route="/predict"}' in text
    assert 'gateway_upstream_duration_seconds_count{model="yolo",model_version="1.0"}' in text
    assert "gateway_in_flight_requests " in text
    assert "gateway_upload_bytes_count " in text
    detected = truth.boxes[0]["class"]
    assert f'gateway_detections_total{{class_name="{detected}",model="yolo",model_version="1.0"}}' in text
    assert 'gateway_predictions_total{model="yolo",model_version="1.0"}' in text


def test_openapi_documents_the_real_models(stack):
    spec = httpx.get(f"{stack.gateway_url}/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert "file" in predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    assert {p["name"] for p in predict["parameters"]} >= {"conf", "iou", "max_det", "classes", "version", "format"}
    assert {"PredictResponse", "Detection", "ErrorResponse", "BatchResponse"} <= set(spec["components"]["schemas"])
    assert {"ModelsResponse", "ModelInfo"} <= set(spec["components"]["schemas"])
    named = spec["paths"]["/models/{model}/predict"]["post"]
    assert {p["name"] for p in named["parameters"]} >= {"model", "conf", "version", "format"}
    assert "/models/{model}/predict/batch" in spec["paths"] and "/models/{model}" in spec["paths"]
    assert httpx.get(f"{stack.gateway_url}/docs").status_code == 200


def test_torchserve_unreachable_is_503_with_retry_after(extra_gateway, ground_truth):
    url = extra_gateway(GATEWAY_TS_INFERENCE_URL=f"http://127.0.0.1:{free_port()}").gateway_url
    response = httpx.post(f"{url}/predict", files={"file": ("a.jpg", ground_truth[0].path.read_bytes())}, timeout=30)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "torchserve_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def test_missing_key_file_is_503_not_a_crash(extra_gateway, ground_truth, tmp_path):
    url = extra_gateway(GATEWAY_TS_KEY_FILE=str(tmp_path / "absent.json")).gateway_url
    response = httpx.post(f"{url}/predict", files={"file": ("a.jpg", ground_truth[0].path.read_bytes())}, timeout=30)
    assert response.status_code == 503 and response.json()["error"]["code"] == "torchserve_unavailable"
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


def test_upstream_timeout_is_504(extra_gateway, ground_truth):
    url = extra_gateway(GATEWAY_UPSTREAM_TIMEOUT_S="0.001").gateway_url
    response = httpx.post(f"{url}/predict", files={"file": ("a.jpg", ground_truth[0].path.read_bytes())}, timeout=30)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"


def test_no_ready_worker_is_503_and_health_says_why(stack, ground_truth):
    from operations.stack import ready_workers

    def scale(workers: int) -> None:
        with stack.torchserve(timeout=120) as ts:
            ts.scale(stack.model_name, "1.0", workers)

    serving = ready_workers(stack)
    scale(0)
    try:
        wait_until(lambda: ready_workers(stack) == 0, "scale to zero", 60)
        health = httpx.get(f"{stack.gateway_url}/health", timeout=10)
        assert health.status_code == 503 and "no READY worker" in health.json()["reason"]
        assert "Retry-After" in health.headers
        data = ground_truth[0].path.read_bytes()
        response = httpx.post(f"{stack.gateway_url}/predict", files={"file": ("a.jpg", data)}, timeout=30)
        assert response.status_code == 503 and response.json()["error"]["code"] == "no_capacity"
        assert "Retry-After" in response.headers
    finally:
        scale(serving)
        wait_until(lambda: ready_workers(stack) == serving, "scale back", 120)


def test_schemathesis_finds_no_server_error(stack):
    """Property-based requests from the OpenAPI schema: nothing may answer 5xx."""
    started = time.monotonic()
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "schemathesis"),
            "run",
            f"{stack.gateway_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--generation-deterministic",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert time.monotonic() - started < 900
    assert httpx.get(f"{stack.gateway_url}/health", timeout=10).status_code == 200
