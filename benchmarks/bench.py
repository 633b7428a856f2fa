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
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import yaml

from benchmarks.loadtest import MemorySampler, stack_processes
from benchmarks.peers import PEERS, PeerProcess, cpu_used, ensure_peers_venv, peer_model
from operations.packaging import DEFAULT_FORMAT, PackagingError, package
from operations.stack import ROOT, Stack, free_port, running
from serving.yolo_files import archive_config

SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
TEMPLATE = ROOT / "serving" / "model-config.yaml"
CORES = os.cpu_count() or 1
BOUNDARY = "benchboundary7MA4YWxk"
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


@dataclass
class Result:
    images: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    cpu_s: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else float("nan")

        return {
            "images_per_s": round(self.images / self.seconds, 2) if self.seconds else 0.0,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "requests": len(lat),
            "errors": self.errors,
            "cpu_ms_per_image": {
                role: round(1000 * used / self.images, 2) if self.images else 0.0 for role, used in self.cpu_s.items()
            },
        }


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
    gateway_headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    direct_bodies = [data for _, data in images]
    out: dict = {}
    with running(stack, "1.0"):
        token = json.loads(stack.key_file.read_text())["inference"]["key"]
        direct_headers = {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {token}"}
        paths = {
            "direct": (stack.inference_url + "/predictions/yolo", direct_bodies, direct_headers),
            "gateway": (stack.gateway_url + "/predict", gateway_bodies, gateway_headers),
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
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    load_generator = [psutil.Process()]
    out = {}
    for peer in PEERS:
        model, imgsz = peer_model(peer, archive, work / "unpacked", work / "peer", args.weights.resolve())
        print(f"== peer {peer}: {model.name}, imgsz {imgsz}", flush=True)
        kind = peer.removesuffix("-pt")
        with PeerProcess(kind, model, imgsz, free_port(), work / f"peer-{peer}.log") as server:
            server.wait_ready()
            url = server.url + "/predict"
            http_load(url, bodies, headers, args.concurrency, WARM_UP_S)
            entry = {"model": str(model.name), "imgsz": imgsz}
            for level, concurrency in (("c1", 1), ("saturation", args.concurrency)):
                before = cpu_used(server.processes()), cpu_used(load_generator)
                result = http_load(url, bodies, headers, concurrency, args.seconds)
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


def ratio(num: float, den: float) -> float:
    return round(num / den, 3) if den else float("nan")


def ratios(entry: dict) -> dict:
    a, b, c = entry["in_process"], entry["direct"], entry["gateway"]
    return {
        "direct_over_in_process_c1": ratio(b["c1"]["images_per_s"], a["c1"]["images_per_s"]),
        "direct_over_in_process_saturation": ratio(b["saturation"]["images_per_s"], a["saturation"]["images_per_s"]),
        "gateway_over_direct_c1": ratio(c["c1"]["images_per_s"], b["c1"]["images_per_s"]),
        "gateway_over_direct_saturation": ratio(c["saturation"]["images_per_s"], b["saturation"]["images_per_s"]),
        "gateway_over_in_process_saturation": ratio(c["saturation"]["images_per_s"], a["saturation"]["images_per_s"]),
        "gateway_p50_overhead_ms_c1": round(c["c1"]["p50_ms"] - b["c1"]["p50_ms"], 2),
    }


def peer_ratios(ours: dict, peers: dict) -> dict:
    """Ours (the gateway path of the default configuration) against the best peer at each level."""
    best_c1 = min(peer["c1"]["p50_ms"] for peer in peers.values())
    best_saturation = max(peer["saturation"]["images_per_s"] for peer in peers.values())
    return {
        "ours_p50_over_best_peer_c1": ratio(ours["c1"]["p50_ms"], best_c1),
        "ours_over_best_peer_saturation": ratio(ours["saturation"]["images_per_s"], best_saturation),
    }


def server_cpu(summary: dict) -> float:
    """CPU per image of every serving process (all roles but the load generator)."""
    return sum(v for role, v in summary["cpu_ms_per_image"].items() if role != "load generator")


def peers_table(entry: dict) -> list[str]:
    """Ours vs peers: the same load generator, bodies and model file, one after the other."""
    lines = [
        "Ours vs peers (ours = the gateway path of the default configuration; each peer serves the same "
        "OpenVINO model from the default archive, `-pt` the eager weights; benchmarks/peers.py). CPU per image at "
        "saturation, server process tree and load generator:",
        "",
        "| server | c1 p50 ms | c1 img/s | saturation img/s | saturation p50 ms | errors | "
        "server CPU ms/img | load gen. CPU ms/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = {"ours (gateway)": entry["gateway"], **entry["peers"]}
    for name, row in rows.items():
        c1, sat = row["c1"], row["saturation"]
        cpu = sat["cpu_ms_per_image"]
        lines.append(
            f"| {name} | {c1['p50_ms']:.1f} | {c1['images_per_s']:.1f} | {sat['images_per_s']:.1f} | "
            f"{sat['p50_ms']:.1f} | {c1['errors'] + sat['errors']} | {server_cpu(sat):.2f} | "
            f"{cpu.get('load generator', float('nan')):.2f} |"
        )
    return lines


def markdown(report: dict) -> str:
    lines = [
        f"Benchmark: `{report['command']}` on {report['cores']} cores, {report['samples']} sample images "
        f"({report['started']}); saturation = {report['concurrency']} concurrent clients "
        f"(in-process: batches of {report['concurrency']}); {report['seconds']:g} s per measurement.",
        "",
        "| config | path | conc. 1 img/s | p50 | p95 | p99 | saturation img/s | p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["runs"]:
        for path in ("in_process", "direct", "gateway"):
            if path not in entry:
                continue
            row = [f"{entry['config']['name']} ({entry['label']})", path]
            for level in ("c1", "saturation"):
                s = entry[path].get(level)
                row += (
                    [f"{s['images_per_s']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}"]
                    if s
                    else ["-"] * 4
                )
            lines.append("| " + " | ".join(row) + " |")
    if report.get("ratios"):
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in report["ratios"].items()]
    lines += ["", *cpu_table(report["runs"])]
    for entry in report["runs"]:
        if entry.get("peers"):
            lines += ["", *peers_table(entry)]
    lines += ["", "| config | role | processes | peak RSS MiB | growth MiB |", "|---|---|---|---|---|"]
    for entry in report["runs"]:
        for role, mem in entry.get("memory", {}).items():
            lines.append(
                f"| {entry['config']['name']} | {role} | {mem['processes']} | {mem['peak_rss_mib']} | "
                f"{mem['growth_mib']:+} |"
            )
    return "\n".join(lines) + "\n"


def cpu_table(runs: list[dict]) -> list[str]:
    """Where the CPU goes at saturation: milliseconds of CPU per image served, by process role."""
    roles = ["in-process", "workers", "frontend", "gateway", "load generator"]
    lines = [
        "CPU time per image at saturation, in ms (user + system over all threads of each process; "
        f"{CORES} cores give at most {CORES * 1000} ms of CPU per second):",
        "",
        "| config | path | " + " | ".join(roles) + " | total |",
        "|---|---|" + "---|" * (len(roles) + 1),
    ]
    for entry in runs:
        for path in ("in_process", "direct", "gateway"):
            cpu = entry.get(path, {}).get("saturation", {}).get("cpu_ms_per_image")
            if not cpu:
                continue
            cells = [f"{cpu[role]:.2f}" if role in cpu else "-" for role in roles]
            total = sum(cpu.values())
            lines.append(f"| {entry['config']['name']} | {path} | " + " | ".join(cells) + f" | {total:.2f} |")
        bare = entry.get("in_process", {}).get("bare_inference")
        if bare:
            lines.append(
                f"| {entry['config']['name']} | bare inference (batch {bare['batch']}, {bare['threads']} thread(s)) | "
                + " | ".join(["-"] * len(roles))
                + f" | {bare['cpu_ms_per_image']['inference']:.2f} |"
            )
    return lines


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
        report["ratios"] = {
            **ratios(default),
            "default_over_baseline_gateway_saturation": ratio(
                default["gateway"]["saturation"]["images_per_s"], baseline["gateway"]["saturation"]["images_per_s"]
            ),
            "default_over_baseline_direct_saturation": ratio(
                default["direct"]["saturation"]["images_per_s"], baseline["direct"]["saturation"]["images_per_s"]
            ),
            **peer_ratios(default["gateway"], default["peers"]),
            "ours_cpu_over_bare_inference_saturation": ratio(
                server_cpu(default["gateway"]["saturation"]),
                default["in_process"]["bare_inference"]["cpu_ms_per_image"]["inference"],
            ),
        }
        name = "bench"
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.reports / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
