"""Side-by-side benchmark: in-process Ultralytics, TorchServe direct, and the gateway, in one run.

For each serving configuration (format, batch size, max batch delay, workers, threads)
the same weights are packaged by ``package_mar.sh`` into a private model store, and the
same sample images are sent:

  (a) in-process: Ultralytics' own ``predict`` loop on the packaged model file (the ceiling),
      in a separate process before any server runs, with every core's threads;
  (b) TorchServe direct: ``POST /predictions/yolo`` with the inference token;
  (c) the gateway: ``POST /predict`` multipart, as users call it;

each at concurrency 1 and at saturation (``--concurrency`` clients, or batches of that
many images in-process), for ``--seconds`` each after a warm-up. Then, with the same load
generator and bodies, the peers a user might pick instead (benchmarks/peers.py: a plain FastAPI
app, LitServe with dynamic batching, FastAPI on the eager .pt) on the default archive's own
OpenVINO model and image size, each in its own process tree. The default
configuration (serving/model-config.yaml and package_mar's default format) and the
baseline (eager .pt, batch size 1, one worker) run in the same invocation, so their
ratios come from one machine state. ``--sweep`` measures the grid the default was
chosen from. Results: reports/bench.json and reports/bench.md.

Here: the configurations and each one's run (package, measure in-process, serve and load, the
peers) and the command. How a number is taken lives in benchmarks/measure.py; the ratios and
tables in benchmarks/bench_report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil
import yaml

from benchmarks.bench_report import bench_ratios, markdown
from benchmarks.loadtest import MemorySampler
from benchmarks.measure import (
    CORES,
    MULTIPART_HEADERS,
    SAMPLES,
    bare_inference,
    cpu_seconds,
    cpu_since,
    cpu_used,
    http_load,
    in_process,
    multipart,
)
from benchmarks.peers import PEERS, PeerProcess, ensure_peers_venv, peer_model
from operations.packaging import DEFAULT_FORMAT, PackagingError, package
from operations.stack import ROOT, Stack, free_port, running
from serving.yolo_files import archive_config

TEMPLATE = ROOT / "serving" / "model-config.yaml"
WARM_UP_S = 3  # per path, before anything is measured: JIT, first batches, connection pools


@dataclass(frozen=True)
class Config:
    name: str
    format: str
    batch_size: int
    max_delay_ms: int
    workers: int
    threads: int
    cpu_pinning: bool = False
    lone_threads: int | None = None  # threads for a batch of one (None: ``threads``)
    reduced_decode: bool = False

    @property
    def label(self) -> str:
        pinned = ", pinned" if self.cpu_pinning else ""
        lone = f", lone image x {self.lone_threads}" if self.lone_threads and self.lone_threads != self.threads else ""
        reduced = ", reduced decode" if self.reduced_decode and self.format != "pt" else ""
        return (
            f"{self.format}, batch {self.batch_size}/{self.max_delay_ms} ms, "
            f"{self.workers} worker(s) x {self.threads} thread(s){lone}{pinned}{reduced}"
        )


def default_config() -> Config:
    template = yaml.safe_load(TEMPLATE.read_text())
    return Config(
        "default",
        DEFAULT_FORMAT,
        template["batchSize"],
        template["maxBatchDelay"],
        template["maxWorkers"],
        template["handler"]["threads"],
        template["handler"].get("cpu_pinning", False),
        template["handler"].get("lone_threads"),
        template["handler"].get("reduced_decode", False),
    )


BASELINE = Config("baseline", "pt", 1, 0, 1, CORES)


def sweep_configs() -> list[Config]:
    """The grid the default was chosen from: format, batching, workers x threads, then each of the default's levers."""
    default = default_config()
    grid = [Config(f"{fmt}-b4", fmt, 4, 5, CORES, 1) for fmt in ("pt", "onnx", "openvino")]
    grid += [Config(f"openvino-b{b}", "openvino", b, d, CORES, 1) for b, d in ((1, 0), (2, 5), (8, 10))]
    grid += [
        Config("openvino-b4-1w", "openvino", 4, 5, 1, CORES),
        Config("openvino-b4-pinned", "openvino", 4, 5, CORES, 1, cpu_pinning=True),
    ]
    grid += [  # the default, then the default less one lever at a time
        replace(default, name="default"),
        replace(default, name="default-delay-5ms", max_delay_ms=5),
        replace(default, name="default-no-lone-threads", lone_threads=None),
        replace(default, name="default-full-decode", reduced_decode=False),
    ]
    return grid


def package_config(config: Config, weights: Path, store: Path) -> Path:
    """Package ``weights`` as the operator does, with this configuration's model-config."""
    template = yaml.safe_load(TEMPLATE.read_text())
    template.update(
        minWorkers=config.workers,
        maxWorkers=config.workers,
        batchSize=config.batch_size,
        maxBatchDelay=config.max_delay_ms,
    )
    template["handler"]["threads"] = config.threads
    template["handler"]["cpu_pinning"] = config.cpu_pinning
    template["handler"]["lone_threads"] = config.lone_threads
    template["handler"]["reduced_decode"] = config.reduced_decode
    model_config = store / f"{config.name}.yaml"
    model_config.write_text(yaml.safe_dump(template, sort_keys=False))
    try:
        built = package(weights, "1.0", store, fmt=config.format, config=model_config, force=True, log=lambda _: None)
    except PackagingError as exc:
        raise SystemExit(f"packaging {config.name} failed: {exc}") from None
    return built.archive


def measure_in_process(archive: Path, work: Path, config: Config, args: argparse.Namespace) -> dict:
    """Run (a), and the bare forward pass at the configuration's batch size, in a fresh interpreter."""
    model_dir = work / "unpacked"
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(model_dir)
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    imgsz = archive_config(archive)["handler"]["imgsz"]
    model_file = model_dir / manifest["model"]["serializedFile"]
    cmd = [sys.executable, "-m", "benchmarks.bench", "--in-process", str(model_file), "--imgsz", str(imgsz)]
    cmd += ["--seconds", str(args.seconds), "--concurrency", str(args.concurrency)]
    cmd += ["--bare-batch", str(config.batch_size), "--bare-threads", str(config.threads)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})
    if result.returncode:
        raise SystemExit(f"in-process run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_served(archive: Path, work: Path, args: argparse.Namespace) -> dict:
    """Start a private stack on free ports, load it through (b) and (c), sample memory, stop it."""
    stack = Stack.private(work / "run", archive.parent)
    images = [(p.name, p.read_bytes()) for p in SAMPLES]
    gateway_bodies = [multipart(name, data) for name, data in images]
    direct_bodies = [data for _, data in images]
    out: dict = {}
    with running(stack, "1.0"):
        token = json.loads(stack.key_file.read_text())["inference"]["key"]
        direct_headers = {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {token}"}
        paths = {
            "direct": (stack.inference_url + "/predictions/yolo", direct_bodies, direct_headers),
            "gateway": (stack.gateway_url + "/predict", gateway_bodies, MULTIPART_HEADERS),
        }
        for url, bodies, headers in paths.values():
            http_load(url, bodies, headers, args.concurrency, WARM_UP_S)
        levels = [("c1", 1), ("saturation", args.concurrency)]
        with MemorySampler(stack.run_dir, interval=0.5) as sampler:
            for level, concurrency in levels:
                for path, (url, bodies, headers) in paths.items():
                    before = cpu_seconds(stack.run_dir)
                    result = http_load(url, bodies, headers, concurrency, args.seconds)
                    result.cpu_s = cpu_since(stack.run_dir, before)
                    out.setdefault(path, {})[level] = result.summary()
        out["memory"] = sampler.summary()
    return out


def measure_peers(archive: Path, work: Path, args: argparse.Namespace) -> dict:
    """Each peer on a free port: wait until it answers, warm up, c1 and saturation with its CPU, stop it."""
    bodies = [multipart(p.name, p.read_bytes()) for p in SAMPLES]
    load_generator = [psutil.Process()]
    out = {}
    for peer in PEERS:
        model, imgsz = peer_model(peer, archive, work / "unpacked", work / "peer", args.weights.resolve())
        print(f"== peer {peer}: {model.name}, imgsz {imgsz}", flush=True)
        kind = peer.removesuffix("-pt")
        with PeerProcess(kind, model, imgsz, free_port(), work / f"peer-{peer}.log") as server:
            server.wait_ready()
            url = server.url + "/predict"
            http_load(url, bodies, MULTIPART_HEADERS, args.concurrency, WARM_UP_S)
            entry = {"model": str(model.name), "imgsz": imgsz}
            for level, concurrency in (("c1", 1), ("saturation", args.concurrency)):
                before = cpu_used(server.processes()), cpu_used(load_generator)
                result = http_load(url, bodies, MULTIPART_HEADERS, concurrency, args.seconds)
                result.cpu_s = {
                    "peer": cpu_used(server.processes()) - before[0],
                    "load generator": cpu_used(load_generator) - before[1],
                }
                entry[level] = result.summary()
        print(json.dumps({peer: entry}), flush=True)
        out[peer] = entry
    return out


def run_config(config: Config, args: argparse.Namespace, in_process: bool = True, peers: bool = False) -> dict:
    print(f"== {config.name}: {config.label}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"bench-{config.name}-") as tmp:
        work = Path(tmp)
        store = work / "store"
        store.mkdir()
        archive = package_config(config, args.weights.resolve(), store)
        entry = {"config": asdict(config), "label": config.label}
        if in_process:
            entry["in_process"] = measure_in_process(archive, work, config, args)
        entry.update(measure_served(archive, work, args))
        if peers:
            entry["peers"] = measure_peers(archive, work, args)
    print(json.dumps({k: v for k, v in entry.items() if k not in ("config", "memory", "peers")}), flush=True)
    return entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "models/weights/v1.0/best.pt")
    parser.add_argument("--seconds", type=float, default=15, help="length of each measurement (default: %(default)s)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="clients at saturation: enough to fill every worker's batch twice over (default: %(default)s)",
    )
    parser.add_argument("--sweep", action="store_true", help="measure the configuration grid instead")
    parser.add_argument("--configs", help="with --sweep: only these comma-separated configurations of the grid")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--in-process", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--imgsz", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--bare-threads", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.in_process:
        levels = {"c1": 1, "saturation": args.concurrency}
        out = {
            level: in_process(args.in_process, args.imgsz, batch, args.seconds).summary()
            for level, batch in levels.items()
        }
        bare = bare_inference(args.in_process, args.imgsz, args.bare_batch, args.bare_threads, args.seconds)
        out["bare_inference"] = {**bare.summary(), "batch": args.bare_batch, "threads": args.bare_threads}
        print(json.dumps(out))
        return 0
    report = {
        "command": "python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cores": CORES,
        "samples": len(SAMPLES),
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "weights": str(args.weights),
    }
    if args.sweep:
        chosen = set(args.configs.split(",")) if args.configs else None
        grid = [config for config in sweep_configs() if chosen is None or config.name in chosen]
        report["runs"] = [run_config(config, args, in_process=False) for config in grid]
        name = "sweep"
    else:
        ensure_peers_venv()
        default, baseline = run_config(default_config(), args, peers=True), run_config(BASELINE, args)
        report["runs"] = [default, baseline]
        report["ratios"] = bench_ratios(default, baseline)
        name = "bench"
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.reports / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
