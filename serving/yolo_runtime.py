"""The inference runtime a YOLO handler runs: any Ultralytics export on the CPU, with chosen thread counts.

Plain code with no TorchServe dependency (TorchServe takes the handler module's only class
as the handler, so these live beside it); shipped inside the .mar next to ``yolo_handler.py``.
"""

from __future__ import annotations

import torch


class RuntimeThreads:
    """Which intra-op thread count a forward pass runs with: ``lone_threads`` for one image, ``threads`` for more.

    Workers x threads match the cores, so under load no worker steals another's core. But a
    worker that was handed a batch of one is, nearly always, the only busy one: TorchServe
    fills a batch from whatever is queued, so a batch of one means nothing else was waiting,
    and the other workers' cores sit idle while this one runs single-threaded. A second
    runtime with more threads (OpenVINO compiled model, ONNX Runtime session, torch's pool
    size) lets that lone image use them; full batches keep to ``threads``.
    """

    def __init__(self, backend, weights: str, config):
        self.backend = backend
        self.threads = config.threads
        self.lone_threads = config.lone_threads or config.threads
        # The runtime attribute swapped per batch; None: torch's pool size is set per call instead (.pt,
        # TorchScript), which also covers lone_threads == threads.
        self.attribute, self.runtimes = None, {}
        runtime = backend.backend
        if self.lone_threads == self.threads:
            return
        if backend.format == "openvino":
            self.attribute = "ov_compiled_model"
            alternate = compile_openvino(runtime, weights, self.lone_threads, config.cpu_pinning)
        elif backend.format == "onnx":
            self.attribute = "session"
            alternate = onnx_session(weights, self.lone_threads)
        else:
            return
        self.runtimes = {self.threads: getattr(runtime, self.attribute), self.lone_threads: alternate}

    def use(self, batch_size: int) -> None:
        threads = self.lone_threads if batch_size == 1 else self.threads
        if self.attribute is None:
            torch.set_num_threads(threads)
        else:
            setattr(self.backend.backend, self.attribute, self.runtimes[threads])


def load_backend(weights: str, threads: int, cpu_pinning: bool = False):
    """Load any Ultralytics export (.pt, TorchScript, ONNX, OpenVINO) on CPU with a fixed thread count.

    Ultralytics resets torch to ``cpu_count - 1`` threads when it picks a device, and builds
    ONNX Runtime sessions and OpenVINO models with one thread per core. Every runtime is set
    to ``threads`` here, so the count in the model config is a deliberate choice (workers x
    threads should match the cores), not a side effect.

    OpenVINO also pins its threads to cores unless told not to, and every worker process
    picks the same first cores: two 1-thread workers then share one core while the other
    idles (``openvino-b4-pinned`` in REPORT.md's sweep). ``cpu_pinning`` stays off unless
    each worker gets cores of its own.
    """
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(weights, device=torch.device("cpu"), fp16=False, fuse=True, verbose=False)
    backend.eval()
    torch.set_num_threads(threads)
    runtime = backend.backend
    if backend.format == "onnx":
        runtime.session = onnx_session(weights, threads)
    elif backend.format == "openvino":
        runtime.ov_compiled_model = compile_openvino(runtime, weights, threads, cpu_pinning)
    return backend


def onnx_session(weights: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(weights, options, providers=["CPUExecutionProvider"])


def compile_openvino(runtime, weights: str, threads: int, cpu_pinning: bool):
    """LATENCY as AutoBackend sets it; precision stays the CPU's native one (bf16 on AMX Xeons)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": cpu_pinning}
    return runtime.compile_model(weights, config=config)
