"""The servers a user might write instead of running our stack, so ``make bench`` can compare against them.

Our stack (TorchServe + gateway) is only worth its moving parts if it beats what a user gets
in an afternoon on the same weights and format. These are those afternoons, written plainly:

  fastapi     the ~30-line FastAPI app of every tutorial: the model loaded once in-process,
              ``POST /predict`` with a multipart ``file``, PIL decoding, ``model.predict`` on the
              event loop, run by uvicorn (with uvloop and httptools, as ``fastapi[standard]`` gives).
  litserve    LitServe's LitAPI on the same model: dynamic batching (up to 4 images, 5 ms), two
              worker processes on the CPU, the batch handed to ``model.predict`` as a list.
  fastapi-pt  the FastAPI app on the eager ``best.pt``: a user who does not export (``--model best.pt``).

Each answers ``{"status": "success", "detections": [...]}`` with Ultralytics' own boxes, and
``GET /health``. Run one with ``python -m benchmarks.peers {fastapi,litserve} --model PATH --imgsz N --port P``
(``.venv-peers/bin/python`` has LitServe, uvloop and httptools; plain FastAPI also runs in ``.venv``).
``PeerProcess`` starts one as a subprocess for ``benchmarks/bench.py`` and stops it.

Threads for LitServe, as a competent user would set them on the 2-core target: two workers,
each with one torch thread (letterbox and NMS) and its OpenVINO model recompiled with one
inference thread and CPU pinning off. Ultralytics compiles OpenVINO in LATENCY mode on every
core, pinned, so two workers would otherwise fight over the same cores (serving/model-config.yaml
explains the same choice for our workers). Measured on the 2-core target (16 clients, 5 s):
26.6 images/s so, 19.5 with Ultralytics' OpenVINO defaults, 20.4 with one API server instead
of LitServe's default of one per worker. The FastAPI peers keep Ultralytics' defaults: one
process, nothing to share the cores with.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import psutil
from fastapi import FastAPI, File, UploadFile

from serving.yolo_files import archive_config

try:
    import litserve as ls
except ImportError:  # only .venv-peers has LitServe (requirements-peers.txt)
    ls = None

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS = ("fastapi", "litserve", "fastapi-pt")  # what benchmarks/bench.py measures; "-pt": the app on the eager best.pt
LITSERVE_WORKERS = 2
LITSERVE_THREADS = 1  # per worker: LITSERVE_WORKERS x LITSERVE_THREADS = the 2 cores


def detections(result) -> list[dict]:
    """One Ultralytics result as JSON-able detections."""
    boxes = result.boxes
    rows = zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)
    return [{"class_id": int(c), "class_name": result.names[int(c)], "confidence": p, "box": b} for c, p, b in rows]


def fastapi_app(model_path: str, imgsz: int):
    """The FastAPI peer, as a user writes it."""
    from PIL import Image
    from ultralytics import YOLO

    model = YOLO(model_path, task="detect")
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()]):
        img = Image.open(io.BytesIO(await file.read())).convert("RGB")
        result = model.predict(img, imgsz=imgsz, verbose=False)[0]
        return {"status": "success", "detections": detections(result)}

    return app


def single_threaded_openvino(model, model_path: str, threads: int) -> None:
    """Recompile a loaded OpenVINO model with ``threads`` inference threads and no CPU pinning."""
    backend = model.predictor.model.backend
    if hasattr(backend, "ov_compiled_model"):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
        xml = Path(model_path) if model_path.endswith(".xml") else next(Path(model_path).glob("*.xml"))
        backend.ov_compiled_model = ov.Core().compile_model(str(xml), "CPU", config)


if ls is not None:  # LitServe's workers are spawned processes: the API class must live at module level

    class YoloAPI(ls.LitAPI):
        """The LitServe peer: dynamic batching, the batch handed to ``model.predict`` as a list."""

        def __init__(self, model_path: str, imgsz: int, **options):
            super().__init__(**options)
            self.model_path, self.imgsz = model_path, imgsz

        def setup(self, device):
            import numpy as np
            import torch
            from ultralytics import YOLO

            self.model = YOLO(self.model_path, task="detect")
            blank = np.zeros((self.imgsz, self.imgsz, 3), np.uint8)
            self.model.predict(blank, imgsz=self.imgsz, verbose=False)  # builds the predictor
            torch.set_num_threads(LITSERVE_THREADS)
            single_threaded_openvino(self.model, self.model_path, LITSERVE_THREADS)

        def decode_request(self, request):
            from PIL import Image

            return Image.open(io.BytesIO(request["file"].file.read())).convert("RGB")

        def predict(self, images):
            return [detections(r) for r in self.model.predict(list(images), imgsz=self.imgsz, verbose=False)]

        def encode_response(self, output):
            return {"status": "success", "detections": output}


def serve(kind: str, model: str, imgsz: int, port: int) -> None:
    if kind == "litserve":
        server = ls.LitServer(
            YoloAPI(model, imgsz, max_batch_size=4, batch_timeout=0.005),
            accelerator="cpu",
            devices=1,
            workers_per_device=LITSERVE_WORKERS,
        )
        server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
    else:
        import uvicorn

        uvicorn.run(fastapi_app(model, imgsz), host="127.0.0.1", port=port, log_level="warning")


def peer_model(peer: str, archive: Path, unpacked: Path, work: Path, weights: Path) -> tuple[Path, int]:
    """What ``peer`` loads and at which size: the OpenVINO model of ``archive`` unpacked in ``unpacked``, laid
    out the way ``yolo export format=openvino`` leaves it (a ``*_openvino_model`` directory), or the eager
    weights; and the archive's image size."""
    imgsz = archive_config(archive)["handler"]["imgsz"]
    if peer.endswith("-pt"):
        return weights, imgsz
    xml = unpacked / json.loads((unpacked / "MAR-INF" / "MANIFEST.json").read_text())["model"]["serializedFile"]
    export = work / xml.stem  # <name>_openvino_model
    export.mkdir(parents=True, exist_ok=True)
    for source in (xml, xml.with_suffix(".bin"), unpacked / "metadata.yaml"):
        (export / source.name).unlink(missing_ok=True)
        (export / source.name).symlink_to(source)
    return export, imgsz


def ensure_peers_venv() -> None:
    """Create or update .venv-peers the way `make bench` does (idempotent: a stamp file)."""
    subprocess.run(["make", "--no-print-directory", "--silent", ".venv-peers/.installed"], cwd=ROOT, check=True)


class PeerProcess:
    """A peer as a subprocess (with its own process group), for the benchmark and the tests."""

    def __init__(self, kind: str, model: Path, imgsz: int, port: int, log: Path, python: Path | None = None):
        self.kind, self.port, self.log = kind, port, log
        interpreter = python or (PEERS_PYTHON if PEERS_PYTHON.exists() else Path(sys.executable))
        cmd = [str(interpreter), "-m", "benchmarks.peers", kind, "--model", str(model)]
        cmd += ["--imgsz", str(imgsz), "--port", str(port)]
        env = {**os.environ, "YOLO_OFFLINE": "1"}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def processes(self) -> list[psutil.Process]:
        """The peer and every process it started (LitServe's API server and workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def wait_ready(self, timeout: float = 180) -> None:
        from operations.stack import http_ok, wait_until

        wait_until(lambda: http_ok(self.url + "/health"), f"peer {self.kind}", timeout, self.proc.pid, self.log)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the whole process group (LitServe's workers too), SIGKILL whatever is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the group, if any
        self.proc.wait()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["fastapi", "litserve"])
    parser.add_argument("--model", required=True, help="OpenVINO model dir (or best.pt for the fastapi-pt peer)")
    parser.add_argument("--imgsz", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.kind, args.model, args.imgsz, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
