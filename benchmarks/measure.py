"""The measuring primitives the benchmarks share: timed calls, HTTP load, CPU time and percentiles.

One concern: how a number is taken, never which configuration it is taken on (benchmarks/bench.py)
or how it is reported (benchmarks/bench_report.py). ``in_process`` is Ultralytics' own ``predict``
loop on a model file (the ceiling), ``bare_inference`` the forward pass alone as a worker runs it
(the floor), ``http_load`` ``concurrency`` keep-alive clients against one URL; each returns a
``Result`` whose ``summary()`` is what the reports show. CPU time is counted per process role of a
stack (``cpu_seconds``, ``cpu_since``) or for any processes (``cpu_used``).
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from benchmarks.loadtest import stack_processes
from operations.stack import ROOT

SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
CORES = os.cpu_count() or 1
BOUNDARY = "benchboundary7MA4YWxk"
MULTIPART_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank ``share`` percentile (0.5: the median); NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@dataclass
class Result:
    images: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    cpu_s: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "images_per_s": round(self.images / self.seconds, 2) if self.seconds else 0.0,
            "p50_ms": round(percentile(self.latencies_ms, 0.50), 2),
            "p95_ms": round(percentile(self.latencies_ms, 0.95), 2),
            "p99_ms": round(percentile(self.latencies_ms, 0.99), 2),
            "requests": len(self.latencies_ms),
            "errors": self.errors,
            "cpu_ms_per_image": {
                role: round(1000 * used / self.images, 2) if self.images else 0.0 for role, used in self.cpu_s.items()
            },
        }


def cpu_used(procs: list[psutil.Process]) -> float:
    """CPU time (user + system) so far of these processes; one that has exited counts 0."""
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # exited between listing and reading
            continue
        total += times.user + times.system
    return total


def cpu_seconds(run_dir: Path) -> dict[str, float]:
    """CPU time (user + system) so far of each role of the stack, and of this process: the load generator."""
    roles = {**stack_processes(run_dir), "load generator": [psutil.Process()]}
    return {role: cpu_used(procs) for role, procs in roles.items()}


def cpu_since(run_dir: Path, before: dict[str, float]) -> dict[str, float]:
    """CPU each role spent since ``before`` (from ``cpu_seconds``), so costs show up per image."""
    return {role: spent - before.get(role, 0.0) for role, spent in cpu_seconds(run_dir).items()}


def in_process(model_file: Path, imgsz: int, batch: int, seconds: float) -> Result:
    """Ultralytics' predict on image files for ``seconds``: ``batch`` images per call, torch on every core."""
    import torch
    from ultralytics import YOLO

    model = YOLO(str(model_file), task="detect")
    paths = [str(p) for p in SAMPLES]
    model.predict(paths[:batch], imgsz=imgsz, device="cpu", batch=batch, verbose=False)  # builds the predictor
    torch.set_num_threads(CORES)  # Ultralytics set it to cores - 1 while building the predictor
    for _ in range(3):
        model.predict(paths[:batch], imgsz=imgsz, batch=batch, verbose=False)

    def predict(done: int) -> None:
        chunk = [paths[(done + i) % len(paths)] for i in range(batch)]
        model.predict(chunk, imgsz=imgsz, batch=batch, verbose=False)

    return timed_calls(predict, batch, seconds, "in-process")


def timed_calls(call, batch: int, seconds: float, role: str) -> Result:
    """``call(images_done_so_far)`` over and over for ``seconds``, ``batch`` images a call; this process's CPU."""
    latencies, images, started, cpu_started = [], 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        call(images)
        latencies.append((time.perf_counter() - t0) * 1000)
        images += batch
    elapsed = time.perf_counter() - started
    return Result(images, elapsed, latencies, 0, {role: time.process_time() - cpu_started})


def bare_inference(model_file: Path, imgsz: int, batch: int, threads: int, seconds: float) -> Result:
    """The forward pass alone, as a worker runs it (our runtime, its thread count, batches of ``batch``).

    The floor under every server of this model: whatever a request costs beyond it is serving overhead.
    """
    import torch

    sys.path.insert(0, str(ROOT / "serving"))
    from yolo_image import batch_tensor, decode_image, letterbox
    from yolo_runtime import load_backend

    backend = load_backend(str(model_file), threads)
    canvases = [letterbox(decode_image(p.read_bytes(), 10**8), imgsz)[0] for p in SAMPLES]
    inputs = torch.from_numpy(batch_tensor([canvases[i % len(canvases)] for i in range(batch)]))
    with torch.inference_mode():
        for _ in range(3):
            backend(inputs)
        return timed_calls(lambda _: backend(inputs), batch, seconds, "inference")


def multipart(name: str, data: bytes) -> bytes:
    """One image as the gateway's multipart ``file`` field, to send with ``MULTIPART_HEADERS``."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    return head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def http_load(url: str, bodies: list[bytes], headers: dict, concurrency: int, seconds: float) -> Result:
    """``concurrency`` clients, each on one keep-alive connection, sending for ``seconds``."""
    parts = urlsplit(url)
    lock = threading.Lock()
    latencies: list[float] = []
    counter = {"sent": 0, "errors": 0}
    started = time.perf_counter()

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while True:
            with lock:
                if time.perf_counter() - started >= seconds:
                    break
                index = counter["sent"]
                counter["sent"] += 1
            t0 = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    parts.path + (f"?{parts.query}" if parts.query else ""),
                    bodies[index % len(bodies)],
                    headers,
                )
                response = conn.getresponse()
                ok = response.status == 200 and b'"success"' in response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                ok = False
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    counter["errors"] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Result(len(latencies), time.perf_counter() - started, latencies, counter["errors"])
