"""TorchServe handler for Ultralytics YOLO weights of any task, shipped inside the .mar.

One request carries the raw bytes of one image. A batch is decoded item by item, so a
bad image fails only its own item (with a 4xx status and a JSON error body) while the
others run through one batched forward pass. The archive's model-config YAML (``handler``
section, written by ``package_mar.sh`` from the weights) names the task — detect, segment,
pose, obb or classify — and ``yolo_tasks`` holds how each task's answer is built.
Per-request parameters come from ``X-Yolo-*`` headers; their defaults, the image size and
the thread count come from the same section. Every answer carries its drift signals
(``yolo_signals``) for the gateway's detectors, and the version's drift reference
(``drift-reference.json``, written by ``package_mar.sh --reference``) is what
``describe_handle`` hands the gateway to compare them with.

The class is TorchServe's handler contract itself (``initialize`` and ``handle``), not a
subclass of TorchServe's ``BaseHandler``: importing that module imports ``openvino.torch``
(and with it torch's compiler stack), ``onnxruntime`` and ``torch_tensorrt`` whatever the
archive serves, which cost every worker about 2.5 s of CPU at start for nothing it uses.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from yolo_signals import input_signals

from yolo_contract import DRIFT_REFERENCE_FILE, error_body
from yolo_image import RequestError, batch_tensor, decode_upload
from yolo_request import HandlerConfig, parse_params, request_payload
from yolo_runtime import RuntimeThreads, load_backend
from yolo_tasks import Prepared, task_unit

os.environ.setdefault("YOLO_OFFLINE", "1")

logger = logging.getLogger(__name__)


class YoloHandler:
    """Batch-aware YOLO handler for every task: bytes in, contract-shaped JSON out."""

    def __init__(self):
        self.context = None
        self.initialized = False

    def handle(self, data, context):
        """TorchServe's entry point for a batch: preprocess, inference and postprocess, or, for the management API's
        ``?customized=true``, ``describe_handle``; the time it took is the ``HandlerTime`` metric, as TorchServe's
        own handlers report it."""
        started = time.time()
        self.context = context
        if context.get_request_header(0, "describe") == "True":
            output = [self.describe_handle()]
        else:
            output = self.postprocess(self.inference(self.preprocess(data)))
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return output

    def initialize(self, context):
        self.context = context
        self.manifest = context.manifest
        self.config = HandlerConfig.from_yaml((getattr(context, "model_yaml_config", None) or {}).get("handler"))
        model_dir = context.system_properties["model_dir"]
        weights = os.path.join(model_dir, self.manifest["model"]["serializedFile"])
        self.model_info = {"name": context.model_name, "version": self.manifest["model"].get("modelVersion", "")}
        self.backend = load_backend(weights, self.config.threads, self.config.cpu_pinning)
        self.runtimes = RuntimeThreads(self.backend, weights, self.config)
        # Eager .pt archives decode at full size: they answer exactly as YOLO(weights).predict does.
        reduced = self.config.reduced_decode and self.backend.format != "pt"
        self.reduce_to = self.config.imgsz if reduced else 0
        self.names = {int(k): str(v) for k, v in self.backend.names.items()}
        self.task = task_unit(self.config)(
            self.config,
            self.names,
            end2end=bool(getattr(self.backend, "end2end", False)),
            kpt_shape=getattr(self.backend, "kpt_shape", None),
        )
        reference = os.path.join(model_dir, DRIFT_REFERENCE_FILE)
        self.drift_reference = None
        if os.path.isfile(reference):
            with open(reference) as handle:
                self.drift_reference = json.load(handle)
        for batch in (1, 2):  # both thread counts: the first request of each kind must not pay the warm-up
            self._forward(np.zeros((batch, 3, self.config.imgsz, self.config.imgsz), dtype=np.float32))
        logger.info(
            "YoloHandler ready: %s v%s, task=%s, weights=%s (%s), imgsz=%d, threads=%d (lone image: %d), classes=%s",
            self.model_info["name"],
            self.model_info["version"],
            self.task.name,
            os.path.basename(weights),
            self.backend.format,
            self.config.imgsz,
            self.config.threads,
            self.runtimes.lone_threads,
            self.names,
        )
        self.initialized = True

    def preprocess(self, requests):
        items: list[Prepared | RequestError] = []
        for idx, row in enumerate(requests):
            started = time.perf_counter()
            try:
                params = parse_params(self.context.get_all_request_header(idx) or {}, self.config, self.names)
                decoded = decode_upload(
                    request_payload(row), self.config.max_pixels, self.reduce_to, self.task.kept_side
                )
                prepared = self.task.prepare(decoded.rgb, (decoded.width, decoded.height))
                image = input_signals(decoded.rgb, decoded.width, decoded.height)
                items.append(Prepared(prepared, params, (time.perf_counter() - started) * 1000, image))
            except RequestError as err:
                items.append(err)
        return items

    def inference(self, items):
        """One forward pass per input shape: images of one camera share a shape, so usually one pass."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for idx, item in enumerate(items):
            if isinstance(item, Prepared):
                groups.setdefault(item.input.canvas.shape, []).append(idx)
        started = time.perf_counter()
        outputs = {}
        for indices in groups.values():
            raw = self._forward(batch_tensor([items[i].input.canvas for i in indices]))
            outputs.update(zip(indices, self.task.split(raw), strict=True))
        return items, outputs, (time.perf_counter() - started) * 1000

    def postprocess(self, data):
        items, outputs, inference_ms = data
        responses = []
        for idx, item in enumerate(items):
            if isinstance(item, RequestError):
                self.context.set_response_status(item.status, item.code, idx=idx)
                logger.warning(
                    "request %s refused: %d %s: %s",
                    self.context.get_request_id(idx),
                    item.status,
                    item.code,
                    item.message,
                )
                responses.append(error_body(item.code, item.message))
                continue
            started = time.perf_counter()
            answer = self.task.answer(outputs[idx], item.input, item.params)
            drift = {
                **item.image_signals,
                **self.task.signals(answer, item.input.width, item.input.height),
            }
            responses.append(
                {
                    "status": "success",
                    "task": self.task.name,
                    "model": self.model_info,
                    "image": {"width": item.input.width, "height": item.input.height},
                    **answer,
                    "signals": drift,
                    "timing_ms": {
                        "preprocess": round(item.preprocess_ms, 2),
                        "inference": round(inference_ms, 2),
                        "postprocess": round((time.perf_counter() - started) * 1000, 2),
                    },
                }
            )
        return responses

    def describe_handle(self):
        """What the management API's ``?customized=true`` shows: the task and classes this version serves."""
        return {
            "task": self.task.name,
            "classes": self.names,
            "kpt_names": list(self.config.kpt_names) if self.config.kpt_names else None,
            "imgsz": self.config.imgsz,
            "conf": self.config.conf,
            "format": self.backend.format,
            "drift_reference": self.drift_reference,
        }

    def _forward(self, batch: np.ndarray):
        self.runtimes.use(len(batch))
        with torch.inference_mode():
            return self.backend(torch.from_numpy(batch))
