"""Drift on the real stack: v1.0 and v2.0 packaged with a reference, served by TorchServe behind the gateway.

Streams are rendered by the generator from a seed no reference saw (``benchmarks.drift_bench``'s
shifts, applied before the camera's JPEG encoding) and sent one request at a time, as a line
camera sends them. The replay of the same stream runs the archive's own handler offline and
the gateway's detector class: it must alarm at the same request counts as the live gateway.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.drift_bench import REFERENCE_IMAGES, REFERENCE_SEED, Shift, ensure_images, render_shifted
from drift.detector import DEFAULT_TARGET_ERT, MARGIN, Detector, Reference
from drift.offline import handler_for, signals_of
from drift.reference import cache_folder, reference_images, reference_key
from operations.packaging import PackagingError
from operations.packaging import package as build
from operations.releases import load_version
from operations.stack import free_port, http_ok, recorded_pid, running, start_gateway, stop_service, wait_until
from serving.yolo_contract import DRIFT_REFERENCE_FILE
from tests.helpers import WEIGHTS, TestStack, answers, package

pytestmark = [pytest.mark.integration, pytest.mark.calibration]
ADMIN = {"X-Admin-Key": "drift-operator"}
STREAM_SEED = 9004  # no reference, bench or other test renders this seed
UNSHIFTED = Shift("none", (), 0)
DARK = Shift("brightness x0.8", ("luma",), 80, factor=0.8)
BLUR = Shift("blur sigma 2", ("sharpness",), 15, factor=2.0)


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A stack serving yolo 1.0 (default) and 2.0, both packaged with --reference, with an operator key."""
    ensure_images(REFERENCE_IMAGES, REFERENCE_SEED)
    store = tmp_path_factory.mktemp("drift-store")
    for version in ("1.0", "2.0"):
        built = package(store, version, WEIGHTS[version], reference=REFERENCE_IMAGES / "images", gate_data=None)
        with zipfile.ZipFile(built.archive) as mar:
            assert json.loads(mar.read(DRIFT_REFERENCE_FILE))["images"] == 2400
    run = tmp_path_factory.mktemp("drift-run")
    stack = TestStack.private(run, store, gateway_env={"GATEWAY_ADMIN_KEYS": ADMIN["X-Admin-Key"]})
    with running(stack, "1.0") as instance:
        with instance.torchserve() as ts:
            load_version(instance, ts, "2.0")
        yield instance


@pytest.fixture(scope="module")
def streams() -> dict[str, list[bytes]]:
    return {
        "none": render_shifted(UNSHIFTED, 200, STREAM_SEED),
        "dark": render_shifted(DARK, 120, STREAM_SEED),
        "blur": render_shifted(BLUR, 30, STREAM_SEED),
    }


def send(stack: TestStack, images: list[bytes], version: str) -> list[dict]:
    """The stream one request at a time; each answer's drift signals (asked for with signals=true)."""
    found = []
    with httpx.Client(timeout=60) as client:
        for data in images:
            response = client.post(
                f"{stack.gateway_url}/models/yolo/predict",
                params={"version": version, "signals": "true"},
                files={"file": ("part.jpg", data, "image/jpeg")},
            )
            assert response.status_code == 200, response.text
            found.append(response.json()["signals"])
    return found


def drift(stack: TestStack) -> dict[str, dict]:
    response = httpx.get(f"{stack.gateway_url}/models/yolo/drift", timeout=30)
    assert response.status_code == 200, response.text
    return {entry["version"]: entry for entry in response.json()["versions"]}


def reset(stack: TestStack) -> None:
    response = httpx.post(f"{stack.gateway_url}/models/yolo/drift/reset", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text


def replay(stack: TestStack, version: str, images: list[bytes], tmp_path: Path) -> list[tuple[int, str]]:
    """The stream through the archive's handler offline and a fresh detector: (request, signal) per alarm."""
    handler = handler_for(stack.model_store / f"yolo_v{version}.mar", tmp_path)
    reference = Reference.from_stored(json_file(tmp_path / DRIFT_REFERENCE_FILE))
    detector = Detector(reference, reference.threshold(DEFAULT_TARGET_ERT, MARGIN)[0])
    rows, refused = signals_of(handler, images)
    assert not refused
    return [(i, s.name) for i, row in enumerate(rows, 1) for s in detector.update(row)]


def json_file(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def alarms_of(entry: dict) -> list[tuple[int, str]]:
    return [(alarm["at_request"], alarm["signal"]) for alarm in entry["alarms"]]


def test_an_unshifted_stream_raises_nothing_and_the_versions_show_their_reference(watched, streams):
    reset(watched)
    send(watched, streams["none"], "1.0")
    state = drift(watched)["1.0"]
    assert state["state"] == "ok" and state["alarms"] == [] and state["requests"] == len(streams["none"])
    assert {s["tier"] for s in state["signals"]} == {"input", "output"}
    assert all(s["statistic"] <= s["threshold"] for s in state["signals"])
    info = httpx.get(f"{watched.gateway_url}/models/yolo", timeout=30).json()
    for version in info["versions"]:
        reference = version["drift_reference"]
        assert reference["images"] == 2400 and reference["source"] == "archive"
        assert reference["predicted_ert"] >= DEFAULT_TARGET_ERT * MARGIN


def test_a_blurred_stream_names_sharpness_and_alarms_where_the_replay_does(watched, streams, tmp_path):
    reset(watched)
    live_signals = send(watched, streams["blur"], "1.0")
    state = drift(watched)["1.0"]
    assert state["state"] == "warning"
    first = state["alarms"][0]
    assert first["signal"] == "sharpness" and first["tier"] == "input" and first["at_request"] <= 15
    replayed = replay(watched, "1.0", streams["blur"], tmp_path)
    assert alarms_of(state) == replayed
    offline = [row["sharpness"] for row in signals_of(handler_for_cached(watched, tmp_path), streams["blur"])[0]]
    assert np.allclose([row["sharpness"] for row in live_signals], offline)


def handler_for_cached(stack: TestStack, tmp_path: Path):
    return handler_for(stack.model_store / "yolo_v1.0.mar", tmp_path / "again")


def test_a_darkened_canary_arm_alarms_on_luma_and_leaves_the_default_alone(watched, streams, tmp_path):
    reset(watched)
    send(watched, streams["none"][:50], "1.0")
    send(watched, streams["dark"], "2.0")
    state = drift(watched)
    assert state["1.0"]["state"] == "ok" and state["1.0"]["requests"] == 50
    first = state["2.0"]["alarms"][0]
    assert first["signal"] == "luma" and first["at_request"] <= 80
    assert alarms_of(state["2.0"]) == replay(watched, "2.0", streams["dark"], tmp_path)
    metrics = httpx.get(f"{watched.gateway_url}/metrics", timeout=10).text
    assert 'model_drift_alarm{model="yolo",model_version="2.0",signal="luma",tier="input"} 1.0' in metrics
    assert 'model_drift_alarm{model="yolo",model_version="1.0",signal="luma",tier="input"} 0.0' in metrics


def test_a_gateway_restart_keeps_the_drift_state(watched, streams):
    reset(watched)
    send(watched, streams["dark"][:30], "2.0")
    before = drift(watched)["2.0"]
    pid = recorded_pid(watched, "gateway")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not answers(f"{watched.gateway_url}/health/live"), "gateway stopped", 30)
    start_gateway(watched)
    wait_until(lambda: answers(f"{watched.gateway_url}/health/live"), "gateway restarted", 60)
    after = drift(watched)["2.0"]
    assert after["requests"] == before["requests"] == 30
    assert [s["statistic"] for s in after["signals"]] == [s["statistic"] for s in before["signals"]]


@pytest.fixture
def keyless(watched, tmp_path):
    """A second gateway in front of the same TorchServe with no operator key configured."""
    env = {"GATEWAY_TS_KEY_FILE": str(watched.key_file)}  # no GATEWAY_ADMIN_KEYS
    instance = dataclasses.replace(watched, run_dir=tmp_path / "keyless", gateway_port=free_port(), gateway_env=env)
    instance.run_dir.mkdir()
    pid = start_gateway(instance)
    try:
        health = f"{instance.gateway_url}/health/live"
        wait_until(lambda: http_ok(health), "keyless gateway", 30, pid, instance.log_dir / "gateway.log")
        yield instance
    finally:
        stop_service(instance, "gateway")


def test_reset_and_rebaseline_need_the_operator_key_and_are_recorded(watched, streams, keyless):
    url = f"{watched.gateway_url}/models/yolo/drift"
    for action in ("reset", "rebaseline"):
        assert httpx.post(f"{url}/{action}", timeout=30).status_code == 401
        assert httpx.post(f"{url}/{action}", headers={"X-Admin-Key": "wrong"}, timeout=30).status_code == 401
        refused = httpx.post(f"{keyless.gateway_url}/models/yolo/drift/{action}", headers=ADMIN, timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_disabled"
    reset(watched)
    send(watched, streams["dark"], "2.0")
    too_many = httpx.post(f"{url}/rebaseline", params={"version": "2.0", "last": 100_000}, headers=ADMIN, timeout=30)
    assert too_many.status_code in (409, 422), too_many.text
    done = httpx.post(f"{url}/rebaseline", params={"version": "2.0", "last": 120}, headers=ADMIN, timeout=120)
    assert done.status_code == 422, "fewer than 200 requests cannot calibrate a threshold"
    send(watched, streams["dark"] + streams["dark"][:100], "2.0")
    done = httpx.post(f"{url}/rebaseline", params={"version": "2.0", "last": 220}, headers=ADMIN, timeout=120)
    assert done.status_code == 200, done.text
    (fresh,) = done.json()["versions"]
    assert fresh["state"] == "ok" and fresh["reference"]["source"] == "rebaseline"
    assert fresh["reference"]["images"] == 220
    history = httpx.get(f"{watched.gateway_url}/admin/models/yolo/history", headers=ADMIN, timeout=30).json()
    actions = [entry["action"] for entry in history["entries"]]
    assert "drift-reset" in actions and actions[-1] == "drift-rebaseline"


def test_the_archive_without_a_reference_says_so(tmp_path):
    said: list[str] = []
    built = build(WEIGHTS["1.0"], "1.0", tmp_path, fmt="pt", log=said.append)
    assert built.reference is None and any(line.startswith("warning: no --reference") for line in said), said
    with pytest.raises(PackagingError, match="--reference /nowhere: not a folder of images"):
        build(WEIGHTS["1.0"], "1.1", tmp_path, reference="/nowhere")


def test_a_reference_is_computed_once_per_model_code_and_images(watched, tmp_path):
    """Packaging the same weights with the same images again (another version, another gate set) reads the kept
    reference instead of running 2,400 images through the model; anything a signal depends on changes its key."""
    images = reference_images(REFERENCE_IMAGES / "images", log=lambda line: None)
    first = watched.model_store / "yolo_v1.0.mar"
    key = reference_key(first, images, seed=0)
    assert (cache_folder() / f"{key}.json").is_file()  # kept by whichever packaging computed it first
    said: list[str] = []
    again = build(WEIGHTS["1.0"], "1.1", tmp_path, reference=REFERENCE_IMAGES / "images", log=said.append)
    assert any("drift reference ok" in line and "kept in" in line for line in said), said
    assert stored_reference(again.archive) == stored_reference(first)

    assert reference_key(watched.model_store / "yolo_v2.0.mar", images, 0) != key  # other weights
    assert reference_key(first, images, seed=1) != key
    assert reference_key(first, images[:-1], 0) != key
    changed = tmp_path / "changed.png"
    changed.write_bytes(images[0].read_bytes() + b"\0")
    assert reference_key(first, [changed, *images[1:]], 0) != key
    edited = tmp_path / "edited.mar"  # the same archive with one handler module changed
    with zipfile.ZipFile(first) as old, zipfile.ZipFile(edited, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            new.writestr(item, data + b"\n# changed\n" if item.filename == "yolo_signals.py" else data)
    assert reference_key(edited, images, 0) != key


def stored_reference(archive: Path) -> bytes:
    with zipfile.ZipFile(archive) as mar:
        return mar.read(DRIFT_REFERENCE_FILE)
