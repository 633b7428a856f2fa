"""`package_mar.sh --format`: every export format serves the same boxes as the .pt weights.

Each format is packaged by the operator's command into a private store, unpacked, and
loaded by YoloHandler inside TorchServe's own Context, exactly as a worker does it; the
sample images then go through the handler as one batch.
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
import yaml
from ts.context import Context, RequestProcessor

from tests.helpers import SAMPLES, WEIGHTS, iou, package
from yolo_handler import YoloHandler

pytestmark = pytest.mark.packaging

FORMATS = ("pt", "torchscript", "onnx", "openvino")
SERIALIZED = {
    "pt": "model.pt",
    "torchscript": "model.torchscript",
    "onnx": "model.onnx",
    "openvino": "model_openvino_model.xml",
}
MIN_IOU = 0.9
MAX_CONF_DIFF = 0.02
EDGE = 0.05


@pytest.fixture(scope="module")
def format_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("format-store")
    for index, fmt in enumerate(FORMATS):
        assert package(store, f"1.{index}", WEIGHTS["1.0"], fmt=fmt).format == fmt
    return store


def load_handler(archive, model_dir) -> YoloHandler:
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    context = Context("yolo", str(model_dir), manifest, len(FORMATS), None, "0.12.0", model_yaml_config=config)
    handler = YoloHandler()
    handler.initialize(context)
    return handler


def predict_samples(handler: YoloHandler, images: list | None = None) -> list[dict]:
    images = images or sorted(SAMPLES.glob("*.jpg"))
    handler.context.request_processor = [RequestProcessor({}) for _ in images]
    handler.context.request_ids = {i: f"req-{i}" for i in range(len(images))}
    rows = [{"body": path.read_bytes()} for path in images]
    return handler.postprocess(handler.inference(handler.preprocess(rows)))


@pytest.fixture(scope="module")
def reference(format_store, tmp_path_factory):
    return predict_samples(load_handler(format_store / "yolo_v1.0.mar", tmp_path_factory.mktemp("pt")))


def test_archive_records_its_format(format_store):
    for index, fmt in enumerate(FORMATS):
        with zipfile.ZipFile(format_store / f"yolo_v1.{index}.mar") as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            config = yaml.safe_load(mar.read("model-config.yaml"))
            names = set(mar.namelist())
        assert manifest["model"]["serializedFile"] == SERIALIZED[fmt]
        assert config["handler"]["format"] == fmt
        if fmt == "openvino":
            assert {"model_openvino_model.bin", "metadata.yaml"} <= names


def matched_pairs(ours: list[dict], theirs: list[dict], conf: float) -> int:
    """Every box of ``theirs`` has a same-class twin in ``ours`` (IoU >= MIN_IOU, close confidence).

    Only a box within EDGE of the confidence threshold may lack a twin: another runtime's
    rounding can put it on the other side of the threshold.
    """
    matched = 0
    for det in theirs:
        same_class = [d for d in ours if d["class"] == det["class"]]
        twin = max(same_class, key=lambda d: iou(d["bbox"], det["bbox"]), default=None)
        if twin is None or iou(twin["bbox"], det["bbox"]) < MIN_IOU:
            assert det["confidence"] < conf + EDGE, f"{det} has no twin in {ours}"
            continue
        assert abs(twin["confidence"] - det["confidence"]) < MAX_CONF_DIFF, (det, twin)
        matched += 1
    return matched


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_format_agrees_with_pytorch(fmt, format_store, reference, tmp_path):
    handler = load_handler(format_store / f"yolo_v1.{FORMATS.index(fmt)}.mar", tmp_path)
    assert handler.backend.format == fmt
    outputs = predict_samples(handler)
    matched = 0
    for expected, got in zip(reference, outputs, strict=True):
        assert got["status"] == "success" and got["image"] == expected["image"]
        matched += matched_pairs(got["detections"], expected["detections"], handler.config.conf)
        matched_pairs(expected["detections"], got["detections"], handler.config.conf)
    assert matched >= sum(len(r["detections"]) for r in reference) - 1


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_runtime_runs_the_configured_threads_unpinned(fmt, format_store, tmp_path):
    """The archive's handler.threads reaches the runtime, and OpenVINO does not pin workers to one core."""
    handler = load_handler(format_store / f"yolo_v1.{FORMATS.index(fmt)}.mar", tmp_path)
    runtime = handler.backend.backend
    if fmt == "onnx":
        assert runtime.session.get_session_options().intra_op_num_threads == handler.config.threads
    else:
        compiled = runtime.ov_compiled_model
        assert compiled.get_property("INFERENCE_NUM_THREADS") == handler.config.threads
        assert compiled.get_property("ENABLE_CPU_PINNING") is handler.config.cpu_pinning is False


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lone_image_runs_on_the_lone_threads_with_the_same_answer(fmt, format_store, tmp_path):
    """A batch of one runs on handler.lone_threads (the idle cores), a fuller batch on handler.threads: same boxes."""
    handler = load_handler(format_store / f"yolo_v1.{FORMATS.index(fmt)}.mar", tmp_path)
    assert handler.config.lone_threads > handler.config.threads

    def threads_in_use() -> int:
        runtime = handler.backend.backend
        if fmt == "onnx":
            return runtime.session.get_session_options().intra_op_num_threads
        if fmt == "openvino":
            return runtime.ov_compiled_model.get_property("INFERENCE_NUM_THREADS")
        return torch.get_num_threads()

    images = sorted(SAMPLES.glob("*.jpg"))
    lone = predict_samples(handler, [SAMPLES / "mixed_01.jpg"])[0]
    assert threads_in_use() == handler.config.lone_threads and lone["detections"]
    batched = predict_samples(handler, images)[images.index(SAMPLES / "mixed_01.jpg")]
    assert threads_in_use() == handler.config.threads
    assert matched_pairs(lone["detections"], batched["detections"], handler.config.conf) == len(batched["detections"])
    assert matched_pairs(batched["detections"], lone["detections"], handler.config.conf) == len(lone["detections"])
