"""Capture: which answers a policy keeps, its caps, quota and retention, dedupe, purge, and that a failing
disk or store never costs a request. The unit tests drive the gateway's Capturer with real images, a real
SQLite state store and a real folder; the live ones go through a gateway in front of the real TorchServe.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import stat
import time

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.capture.policy import CapturePolicy, Window, load_policies, reasons
from gateway.capture.store import CaptureStore, distance, phash
from gateway.capture.worker import Capturer
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.state import StateError, open_store
from models.generate_dataset import DEFAULT_SIZE, encode_jpeg, image_rng, render
from tests.helpers import metric_total

ADMIN = {"X-Admin-Key": "capture-operator"}


def part(index: int, seed: int = 9010) -> bytes:
    """One generated part as the line's camera encodes it."""
    rng = image_rng(seed, "test", index)
    bgr, _ = render(rng, *DEFAULT_SIZE)
    return encode_jpeg(rng, bgr)


def detections(*scores: float, name: str = "scratch") -> dict:
    items = [{"class": name, "class_id": 0, "confidence": s, "bbox": [1, 2, 30, 40]} for s in scores]
    return {
        "status": "success",
        "task": "detect",
        "image": {"width": 640, "height": 480},
        "model": {"name": "yolo", "version": "1.0"},
        "detections": items,
        "timing_ms": {"inference": 5.0},
    }


def capturer_for(tmp_path, policy: dict, state=None) -> tuple[Capturer, GatewayMetrics]:
    metrics = GatewayMetrics()
    store = CaptureStore(tmp_path / "captures", state or open_store(tmp_path / "state.db"))
    return Capturer({"yolo": CapturePolicy.model_validate(policy)}, store, metrics), metrics


def counted(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def offer_all(capturer: Capturer, images: list[bytes], answer: dict | None = None, alarmed=False) -> list:
    """Offer each image as one request's answer, then let the worker store what was taken."""
    capturer.start()
    taken = [
        capturer.offer(f"req-{i}", data, {}, answer or detections(0.9), None, 0.25, alarmed)
        for i, data in enumerate(images)
    ]
    await capturer.stop(timeout_s=60)
    return taken


def test_policy_file_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "capture.yaml"
    path.write_text("yolo:\n  random: 2\n  caps: {minute: 5, weekly: 3}\n")
    with pytest.raises(ValueError) as caught:
        load_policies(path)
    assert str(path) in str(caught.value)
    assert "yolo.random" in str(caught.value) and "yolo.caps.weekly" in str(caught.value)
    with pytest.raises(ValueError, match="capture.yaml"):
        Settings(capture_policy=path)
    path.write_text("- yolo\n")
    with pytest.raises(ValueError, match="mapping of model name to policy"):
        load_policies(path)
    with pytest.raises(ValueError, match="nowhere.yaml"):
        load_policies(tmp_path / "nowhere.yaml")
    path.write_text("yolo: {random: 0.1, classes: [dent]}\nparts: {}\n")
    assert set(load_policies(path)) == {"yolo", "parts"} and load_policies(None) == {}


def test_each_rule_gives_its_reason():
    policy = CapturePolicy(
        random=0.1, drift_boost=5, near_threshold=0.05, classes=["dent"], no_detections=True, more_than=2
    )
    assert reasons(policy, detections(0.9), 0.25, False, draw=0.05) == ["random"]
    assert reasons(policy, detections(0.9), 0.25, False, draw=0.3) == []
    assert reasons(policy, detections(0.9), 0.25, True, draw=0.3) == ["drift"], "the boost: 0.1 x 5 while alarmed"
    assert reasons(policy, detections(0.9), 0.25, True, draw=0.6) == []
    assert reasons(policy, detections(0.28), 0.25, False, draw=0.9) == ["near_threshold"]
    assert reasons(policy, detections(0.28), 0.5, False, draw=0.9) == []
    assert reasons(policy, detections(0.9, name="dent"), 0.25, False, draw=0.9) == ["class:dent"]
    assert reasons(policy, detections(), 0.25, False, draw=0.9) == ["no_detections"]
    assert reasons(policy, detections(0.9, 0.8, 0.7), 0.25, False, draw=0.9) == ["many_detections"]
    classified = {
        "status": "success",
        "task": "classify",
        "model": {"name": "parts", "version": "1.0"},
        "classifications": [{"class": "nut", "confidence": 0.5}, {"class": "bolt", "confidence": 0.47}],
    }
    assert reasons(CapturePolicy(near_threshold=0.05, classes=["bolt"]), classified, 0.25, False, 0.9) == [
        "near_threshold"
    ], "classify: the top two within near_threshold; only the top class counts for classes"
    assert reasons(CapturePolicy(), detections(), 0.25, True, draw=0.0) == [], "no rule set: nothing is captured"


def test_caps_per_minute_hour_and_day():
    now = 1_000_000.0
    window = Window([now - 30, now - 20])
    assert window.over(CapturePolicy(caps={"minute": 3}).caps, now) is None
    assert window.over(CapturePolicy(caps={"minute": 2}).caps, now) == "cap_minute"
    window = Window([now - 3000 + i for i in range(5)] + [now - 50_000])
    assert window.over(CapturePolicy(caps={"minute": 1, "hour": 5}).caps, now) == "cap_hour"
    assert window.over(CapturePolicy(caps={"hour": 6, "day": 6}).caps, now) == "cap_day"
    assert window.over(CapturePolicy(caps={"day": 6}).caps, now + 86_400) is None, "a day later they are forgotten"


def test_captures_keep_the_bytes_0600_with_one_row_each_and_drop_exact_duplicates(tmp_path):
    capturer, metrics = capturer_for(tmp_path, {"random": 1.0})
    images = [part(i) for i in range(4)]
    taken = asyncio.run(offer_all(capturer, [*images, images[0], images[2]]))
    assert all(t == ["random"] for t in taken)
    rows = capturer.store.rows("yolo")
    assert [row["request_id"] for row in rows] == ["req-0", "req-1", "req-2", "req-3"]
    assert counted(metrics, "gateway_capture_dropped_total", model="yolo", cause="duplicate") == 2
    for row, data in zip(rows, images, strict=True):
        path = capturer.store.blob_path("yolo", row["sha256"])
        assert path.read_bytes() == data and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert row["media_type"] == "image/jpeg" and (row["width"], row["height"]) == DEFAULT_SIZE
        assert row["answer"]["detections"][0]["confidence"] == 0.9 and "timing_ms" not in row["answer"]
    assert counted(metrics, "gateway_captures_total", model="yolo") == 4
    assert counted(metrics, "gateway_capture_bytes", model="yolo") == sum(map(len, images))


def jitter(data: bytes, rng: np.random.Generator) -> bytes:
    """The same part filmed again: shifted a few pixels, a little noise, another JPEG quality."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    dx, dy = rng.integers(-3, 4, size=2)
    moved = cv2.warpAffine(bgr, np.float32([[1, 0, dx], [0, 1, dy]]), bgr.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    noisy = np.clip(moved + rng.normal(0, 2, moved.shape), 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 95))])[1].tobytes()


def test_a_burst_of_the_same_part_is_kept_once_and_other_parts_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    first = part(0)
    burst = [first] + [jitter(first, rng) for _ in range(29)]
    assert max(distance(phash(first), phash(b)) for b in burst) <= 6, "the hash sees the same part"
    others = [part(i) for i in range(1, 11)]
    assert min(distance(phash(a), phash(b)) for a in others for b in others if a is not b) > 6
    capturer, metrics = capturer_for(tmp_path, {"random": 1.0, "near_duplicate": {"distance": 6, "window_s": 60}})
    asyncio.run(offer_all(capturer, burst + others))
    dropped = counted(metrics, "gateway_capture_dropped_total", model="yolo", cause="near_duplicate")
    assert dropped / (len(burst) - 1) >= 0.9, dropped
    assert len(capturer.store.rows("yolo")) == len(burst) - dropped + len(others)


def test_caps_and_quota_drop_and_count(tmp_path):
    images = [part(i) for i in range(6)]
    capturer, metrics = capturer_for(tmp_path / "a", {"random": 1.0, "caps": {"minute": 2}})
    asyncio.run(offer_all(capturer, images))
    assert len(capturer.store.rows("yolo")) == 2
    assert counted(metrics, "gateway_capture_dropped_total", model="yolo", cause="cap_minute") == 4
    quota_mb = (len(images[0]) + len(images[1]) + len(images[2]) // 2) / 1e6
    capturer, metrics = capturer_for(tmp_path / "b", {"random": 1.0, "quota_mb": quota_mb})
    asyncio.run(offer_all(capturer, images))
    kept = capturer.store.rows("yolo")
    assert [row["request_id"] for row in kept][:2] == ["req-0", "req-1"] and "req-2" not in str(kept)
    assert sum(row["size"] for row in kept) <= quota_mb * 1e6, "a smaller image that still fits is kept"
    assert counted(metrics, "gateway_capture_dropped_total", model="yolo", cause="quota") == 6 - len(kept)


class FailingStore:
    """A state store that answers reads and fails every write, as Redis does when it is gone."""

    location = "redis://gone"

    def scan(self, prefix):
        return []

    def get(self, key):
        return None

    def put(self, key, value):
        raise StateError("state store redis://gone: Connection refused")


def test_a_failing_store_or_a_full_disk_drops_the_capture_and_nothing_else(tmp_path, monkeypatch):
    capturer, metrics = capturer_for(tmp_path, {"random": 1.0}, state=FailingStore())
    taken = asyncio.run(offer_all(capturer, [part(0), part(1)]))
    assert taken == [["random"], ["random"]], "the request side took its decision and went on"
    assert counted(metrics, "gateway_capture_dropped_total", model="yolo", cause="store_error") == 2
    assert list((tmp_path / "captures").rglob("*.*")) == [] and not any(
        p.is_file() for p in (tmp_path / "captures").rglob("*")
    ), "no image without its row"
    monkeypatch.setattr("gateway.capture.worker.DISK_RESERVE", 1 << 62)
    capturer, metrics = capturer_for(tmp_path / "full", {"random": 1.0})
    asyncio.run(offer_all(capturer, [part(0)]))
    assert counted(metrics, "gateway_capture_dropped_total", model="yolo", cause="disk_full") == 1


def test_retention_by_age_and_size_and_purge(tmp_path):
    capturer, _ = capturer_for(tmp_path, {"random": 1.0, "retention": {"days": 1, "mb": 1}})
    images = [part(i) for i in range(5)]
    asyncio.run(offer_all(capturer, images))
    store, policy = capturer.store, capturer.policies["yolo"]
    rows = store.rows("yolo")
    assert len(rows) == 5
    now = time.time()
    assert store.sweep("yolo", policy, now) == [], "young and small: all kept"
    keep_mb = (rows[-1]["size"] + rows[-2]["size"] + 10) / 1e6
    assert store.sweep("yolo", CapturePolicy(retention={"mb": keep_mb}), now) == [
        rows[0]["id"],
        rows[1]["id"],
        rows[2]["id"],
    ], "oldest first until under the size"
    assert store.sweep("yolo", policy, now + 2 * 86400) == [rows[3]["id"], rows[4]["id"]], "too old"
    assert store.rows("yolo") == [] and not any(p.is_file() for p in (tmp_path / "captures").rglob("*"))
    asyncio.run(offer_all(capturer, images[:3]))
    rows = store.rows("yolo")
    assert store.purge("yolo", ids=[rows[1]["id"]]) == [rows[1]["id"]]
    assert not store.blob_path("yolo", rows[1]["sha256"]).exists()
    assert store.purge("yolo", before=rows[2]["time"]) == [rows[0]["id"]]
    assert [row["id"] for row in store.rows("yolo")] == [rows[2]["id"]]


# --- through the gateway, in front of the real TorchServe ----------------------------------------------------


@pytest.fixture
def capturing(extra_gateway, tmp_path):
    policy = tmp_path / "capture.yaml"
    policy.write_text("yolo:\n  random: 1.0\n  near_duplicate: {distance: 0}\n")
    return extra_gateway(
        GATEWAY_CAPTURE_POLICY=str(policy),
        GATEWAY_CAPTURE_DIR=str(tmp_path / "captures"),
        GATEWAY_ADMIN_KEYS=ADMIN["X-Admin-Key"],
    )


def wait_for_captures(url: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = httpx.get(f"{url}/models/yolo/captures", headers=ADMIN, timeout=10).json()
        if listed["total"] >= count:
            return listed["captures"]
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} captures after 30 s: {listed}")


@pytest.mark.integration
def test_a_captured_request_is_listed_fetched_and_purged_through_the_gateway(capturing, stack):
    url = capturing.gateway_url
    images = sorted(stack.sample_images)[:3]
    with httpx.Client(timeout=60) as client:
        sent = client.post(
            f"{url}/models/yolo/predict",
            params={"conf": 0.3},
            headers={"X-Request-ID": "line-7/part-0001"},
            files={"file": (images[0].name, images[0].read_bytes(), "image/jpeg")},
        )
        assert sent.status_code == 200 and sent.headers["x-request-id"] == "line-7/part-0001"
        other = client.post(f"{url}/predict", files={"file": ("a.jpg", images[1].read_bytes(), "image/jpeg")})
        assert other.status_code == 200 and len(other.headers["x-request-id"]) == 32, "a new id when none is given"
        bad = client.post(f"{url}/predict", headers={"X-Request-ID": "x" * 300}, files={"file": ("a.jpg", b"no")})
        assert bad.status_code == 415 and bad.headers["x-request-id"] != "x" * 300, "errors carry one too"
        captures = wait_for_captures(url, 2)
        newest, oldest = captures
        assert oldest["request_id"] == "line-7/part-0001" and oldest["params"] == {"conf": 0.3}
        assert oldest["answer"]["detections"] == sent.json()["detections"] and oldest["reasons"] == ["random"]
        assert set(oldest["signals"]) >= {"luma", "sharpness"}, "the drift signals travel with the capture"
        assert newest["request_id"] == other.headers["x-request-id"]
        image = client.get(f"{url}/models/yolo/captures/{oldest['id']}", params={"image": "true"}, headers=ADMIN)
        assert image.content == images[0].read_bytes() and image.headers["content-type"] == "image/jpeg"
        assert client.get(f"{url}/models/yolo/captures", timeout=10).status_code == 401, "production images"
        info = client.get(f"{url}/models/yolo").json()["capture"]
        assert info["policy"]["random"] == 1.0 and info["stored"] == 2
        missing = client.get(f"{url}/models/yolo/captures/0000000000000000", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "capture_not_found"
        gone = client.delete(f"{url}/models/yolo/captures/{oldest['id']}", headers=ADMIN)
        assert gone.status_code == 200 and gone.json()["purged"] == [oldest["id"]]
        everything = client.delete(f"{url}/models/yolo/captures", params={"older_than_days": 0}, headers=ADMIN)
        assert everything.json()["purged"] == [newest["id"]]
        assert client.get(f"{url}/models/yolo/captures", headers=ADMIN).json()["total"] == 0
        history = json.dumps(client.get(f"{url}/admin/models/yolo/history", headers=ADMIN).json())
        assert "captures-purged" in history
    assert metric_total(url, 'gateway_captures_total{model="yolo"}') == 2


@pytest.mark.integration
def test_capture_is_off_without_a_policy(stack):
    info = httpx.get(f"{stack.gateway_url}/models/yolo", timeout=30).json()
    assert info["capture"] is None
    image = io.BytesIO()
    Image.new("RGB", (64, 48)).save(image, format="JPEG")
    answer = httpx.post(f"{stack.gateway_url}/predict", files={"file": ("a.jpg", image.getvalue())}, timeout=60)
    assert answer.status_code == 200 and "x-request-id" in answer.headers


def test_the_sample_policies_load():
    from retraining.trigger import load_triggers
    from tests.helpers import ROOT

    assert load_policies(ROOT / "samples" / "capture.yaml")["yolo"].drift_boost == 50
    assert load_triggers(ROOT / "samples" / "retrain.yaml")["yolo"].min_new_labels == 200
