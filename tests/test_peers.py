"""The FastAPI peer `make bench` compares us against (benchmarks/peers.py) serves the real model correctly.

A benchmark against a peer that answers fast but wrong would flatter the peer, so the peer is
started as ``benchmarks/bench.py`` starts it, on the OpenVINO model of an archive built by
``package_mar.sh`` (the ``model_store`` fixture), and must find what Ultralytics finds with
the .pt weights on every sample image.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import httpx
import psutil
import pytest
from ultralytics import YOLO

from benchmarks.peers import PeerProcess, peer_model
from operations.stack import free_port
from tests.helpers import SAMPLES, WEIGHTS, iou

pytestmark = pytest.mark.integration  # starts the peer server

CLEAR = 0.28  # detections this confident must be in both answers; ones at the 0.25 threshold may differ by format


@pytest.fixture(scope="module")
def openvino_export(model_store, tmp_path_factory) -> tuple[Path, int]:
    unpacked = tmp_path_factory.mktemp("peer-archive")
    archive = model_store / "yolo_v1.0.mar"
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(unpacked)
    return peer_model("fastapi", archive, unpacked, tmp_path_factory.mktemp("peer-model"), WEIGHTS["1.0"])


def test_fastapi_peer_answers_like_ultralytics(openvino_export, tmp_path):
    model_dir, imgsz = openvino_export
    assert model_dir.name.endswith("_openvino_model") and any(model_dir.glob("*.xml"))
    reference = YOLO(str(WEIGHTS["1.0"]))
    # the main venv's interpreter: plain uvicorn, as a user without fastapi[standard] runs it
    peer = PeerProcess("fastapi", model_dir, imgsz, free_port(), tmp_path / "peer.log", python=Path(sys.executable))
    with peer:
        peer.wait_ready(timeout=60)
        found = 0
        for image in sorted(SAMPLES.glob("*.jpg")):
            files = {"file": (image.name, image.read_bytes(), "image/jpeg")}
            response = httpx.post(peer.url + "/predict", files=files, timeout=30)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "success"
            served = body["detections"]
            result = reference.predict(str(image), imgsz=imgsz, verbose=False)[0]
            boxes = result.boxes
            expected = [
                {"class_id": int(c), "confidence": p, "box": b}
                for c, p, b in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)
            ]
            for d in served:
                assert d["class_name"] == result.names[d["class_id"]]
            for mine, theirs, what in (
                (expected, served, "not served"),
                (served, expected, "served, not found by .pt"),
            ):
                for d in mine:
                    if d["confidence"] >= CLEAR:
                        best = max(
                            (iou(d["box"], o["box"]) for o in theirs if o["class_id"] == d["class_id"]), default=0
                        )
                        assert best >= 0.9, f"{image.name}: {d} {what}: {theirs}"
            found += sum(d["confidence"] >= CLEAR for d in expected)
        assert found >= 5  # the samples' defects: a model that finds nothing would pass the loop above
        tree = peer.processes()
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "peer left processes"
