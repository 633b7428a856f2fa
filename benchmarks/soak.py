"""Soak the stack: steady good traffic with hostile uploads and slow clients mixed in, for a long time.

`make soak DURATION=30m` calls this. The v1.0 weights are packaged into a private model store
and a private stack (TorchServe + gateway, as `make up` runs them, default settings) is
started on free ports. Until the duration is spent:

- ``--clients`` threads post good photos (the JPEG samples, and HEIC, AVIF and PGM copies): 200;
- one thread posts hostile uploads, each expecting its exact 4xx (empty, text, truncated,
  pixel bomb, oversized, wrong field, bad parameter);
- ``--slow-clients`` threads trickle a byte every few seconds: a third of them headers (the
  header deadline closes), a third a 5 MB body (under the minimum rate once the grace is over:
  408), a third a body whose first 1 MB comes at once (spooled past the memory buffer; above the
  minimum rate, so the body deadline answers 408).

The gateway runs with its default limits (listed at the top of the report).

Every ``--interval`` seconds the resident memory and open file descriptors of every process
(gateway, TorchServe frontend, each worker) are sampled, and once more after the traffic
stopped. Writes ``reports/soak.md`` and ``reports/soak.json``; exits 1 on any unexpected status.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pillow_heif
import psutil
from PIL import Image

from benchmarks.hostile import slow_upload_head
from benchmarks.hostile import trickle as slow_client
from benchmarks.loadtest import stack_processes
from gateway.settings import Settings
from operations.packaging import package
from operations.stack import ROOT, Stack, running

SAMPLES = ROOT / "samples"
WEIGHTS = ROOT / "models" / "weights" / "v1.0" / "best.pt"
TRICKLE_S = 2.0  # a slow client's pause between bytes

pillow_heif.register_heif_opener()


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90s, 30m or 2h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def good_photos() -> list[tuple[str, bytes]]:
    jpegs = sorted(SAMPLES.glob("*.jpg"))
    photos = [(path.name, path.read_bytes()) for path in jpegs]
    source = Image.open(jpegs[0]).convert("RGB")
    photos += [
        ("phone.heic", encode(source, "HEIF", quality=80)),
        ("phone.avif", encode(source, "AVIF", quality=80)),
        ("camera.pgm", encode(source.convert("L"), "PPM")),
    ]
    return photos


def hostile_uploads() -> list[tuple[str, dict, int]]:
    """(what, httpx.post keyword arguments, the status it must get)."""
    jpeg = (SAMPLES / "scratch_01.jpg").read_bytes()
    bomb = encode(Image.new("L", (8000, 6000)), "PNG")
    return [
        ("empty file", {"files": {"file": ("a.jpg", b"")}}, 400),
        ("text named .jpg", {"files": {"file": ("a.jpg", b"not an image\n" * 50)}}, 415),
        ("truncated jpeg", {"files": {"file": ("a.jpg", jpeg[: len(jpeg) // 3])}}, 415),
        ("48 Mpixel bomb", {"files": {"file": ("bomb.png", bomb)}}, 413),
        ("7 MB upload", {"files": {"file": ("big.jpg", b"\xff" * 7_000_000)}}, 413),
        ("wrong field", {"files": {"image": ("a.jpg", jpeg)}}, 400),
        ("bad parameter", {"files": {"file": ("a.jpg", jpeg)}, "params": {"conf": "2"}}, 422),
    ]


class Traffic:
    """The client threads and what they saw: ``counts[(kind, expected)][status]``."""

    def __init__(self, url: str, until: float):
        self.url = url
        self.until = until
        self.counts: dict[tuple[str, str], Counter] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, expected: str, got: str) -> None:
        with self._lock:
            self.counts.setdefault((kind, expected), Counter())[got] += 1

    def good(self, seed: int) -> None:
        photos, pick = good_photos(), random.Random(seed)
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < self.until:
                name, data = pick.choice(photos)
                self.record(
                    f"good {Path(name).suffix}", "200", _post(client, self.url, {"files": {"file": (name, data)}})
                )

    def hostile(self) -> None:
        cases = hostile_uploads()
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < self.until:
                for what, kwargs, status in cases:
                    self.record(what, str(status), _post(client, self.url, kwargs))
                    time.sleep(0.5)

    def slow(self, kind: str) -> None:
        host, port = httpx.URL(self.url).host, httpx.URL(self.url).port
        body_head = slow_upload_head(host)
        head, what = {
            "headers": (b"POST /predict HTTP/1.1\r\n", "slow headers"),
            "body": (body_head, "slow 5 MB body"),
            "front-loaded": (body_head + b"\xff" * 2**20, "slow body, 1 MB at once"),
        }[kind]
        drip = b"X-Slow: 1\r\n" if kind == "headers" else b"x"
        expected = "closed" if kind == "headers" else "408"
        while time.monotonic() < self.until:
            self.record(what, expected, trickle(host, port, head, drip))


def _post(client: httpx.Client, url: str, kwargs: dict) -> str:
    try:
        return str(client.post(f"{url}/predict", **kwargs).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def trickle(host: str, port: int, head: bytes, drip: bytes) -> str:
    """Send ``head``, then ``drip`` every TRICKLE_S until the server answers or closes; say which."""
    reply = slow_client(host, port, head, drip, every_s=TRICKLE_S, rounds=600)
    if reply is None:
        return "never cut"
    return reply[9:12].decode() if reply.startswith(b"HTTP/1.1 ") else "closed"


def sample_processes(run_dir: Path) -> dict[str, dict]:
    """RSS (MiB) and open file descriptors of every process of the stack, keyed ``role pid``."""
    sample = {}
    for role, procs in stack_processes(run_dir).items():
        for proc in procs:
            try:
                sample[f"{role} {proc.pid}"] = {"rss_mib": proc.memory_info().rss / 2**20, "fds": proc.num_fds()}
            except psutil.Error:
                continue
    return sample


def run(args: argparse.Namespace, stack: Stack) -> dict:
    started = time.monotonic()
    traffic = Traffic(stack.gateway_url, started + args.duration)
    # daemons: an interrupted soak stops its stack and exits instead of waiting for the clients
    threads = [threading.Thread(target=traffic.good, args=(seed,), daemon=True) for seed in range(args.clients)]
    threads.append(threading.Thread(target=traffic.hostile, daemon=True))
    kinds = ("headers", "body", "front-loaded")
    threads += [
        threading.Thread(target=traffic.slow, args=(kinds[i % 3],), daemon=True) for i in range(args.slow_clients)
    ]
    for thread in threads:
        thread.start()
    samples = []
    while time.monotonic() < traffic.until:
        samples.append({"t": round(time.monotonic() - started), "procs": sample_processes(stack.run_dir)})
        print(f"{samples[-1]['t']:>6} s  {_totals(samples[-1]['procs'])}", flush=True)
        time.sleep(min(args.interval, max(0.0, traffic.until - time.monotonic())))
    for thread in threads:
        thread.join()
    time.sleep(args.settle)
    after = {"t": round(time.monotonic() - started), "procs": sample_processes(stack.run_dir)}
    counts = {f"{kind} -> {expected}": dict(seen) for (kind, expected), seen in sorted(traffic.counts.items())}
    unexpected = sum(n for (_, expected), seen in traffic.counts.items() for got, n in seen.items() if got != expected)
    return {
        "duration_s": args.duration,
        "samples": samples,
        "after_traffic": after,
        "counts": counts,
        "unexpected": unexpected,
    }


def _totals(procs: dict[str, dict]) -> str:
    roles: dict[str, list[float]] = {}
    for name, values in procs.items():
        total = roles.setdefault(name.split()[0], [0.0, 0.0])
        total[0] += values["rss_mib"]
        total[1] += values["fds"]
    return "  ".join(f"{role} {rss:.0f} MiB {fds:.0f} fds" for role, (rss, fds) in sorted(roles.items()))


def markdown(result: dict, warmup_s: float) -> str:
    """The soak's tables: per process start (after warm-up) / end / peak / after traffic, and every status seen."""
    samples = result["samples"]
    start = next((s for s in samples if s["t"] >= warmup_s), samples[0])
    limits = Settings()
    lines = [
        f"Gateway limits (defaults): body deadline {limits.body_timeout_s:g} s, grace {limits.upload_grace_s:g} s, "
        f"minimum rate {limits.min_upload_rate} B/s, {limits.max_slow_uploads_per_address} slow uploads per "
        f"address, {limits.upload_buffer_bytes // 1024} KiB in memory per upload, "
        f"{limits.max_pending_predictions} pending predictions, {limits.max_client_connections} connections.",
        "",
        f"Soak of {result['duration_s'] / 60:.0f} min; {len(samples)} samples; start = first sample after "
        f"{warmup_s:.0f} s of warm-up; after = {result['after_traffic']['t'] - result['duration_s']:.0f} s after "
        "the traffic stopped.",
        "",
        "| process | RSS start | RSS end | RSS peak | RSS after | fds start | fds end | fds peak | fds after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(start["procs"]):
        series = [s["procs"][name] for s in samples if name in s["procs"] and s["t"] >= start["t"]]
        after = result["after_traffic"]["procs"].get(name, {"rss_mib": float("nan"), "fds": float("nan")})
        rss, fds = [v["rss_mib"] for v in series], [v["fds"] for v in series]
        lines.append(
            f"| {name} | {rss[0]:.0f} MiB | {rss[-1]:.0f} MiB | {max(rss):.0f} MiB | {after['rss_mib']:.0f} MiB "
            f"| {fds[0]} | {fds[-1]} | {max(fds)} | {after['fds']} |"
        )
    lines += ["", "| traffic -> expected | seen |", "|---|---|"]
    for what, seen in result["counts"].items():
        lines.append(f"| {what} | {', '.join(f'{status}: {n}' for status, n in sorted(seen.items()))} |")
    lines += ["", f"Unexpected statuses: {result['unexpected']}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=parse_duration, default="30m", help="e.g. 90s, 30m, 2h (default: 30m)")
    parser.add_argument("--clients", type=int, default=4, help="threads of good uploads (default: %(default)s)")
    parser.add_argument("--slow-clients", type=int, default=12, help="trickling connections (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=15, help="seconds between samples (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=15, help="seconds to wait before the last sample")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports", help="report directory (default: reports/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.reports.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        store = Path(work) / "store"
        package(WEIGHTS, "1.0", store, log=lambda _: None)
        with running(Stack.private(Path(work) / "run", store), "1.0") as stack:
            result = run(args, stack)
    report = markdown(result, warmup_s=min(120.0, args.duration / 10))
    (args.reports / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.reports / "soak.md").write_text(report)
    print("\n" + report + f"reports: {args.reports / 'soak.md'}, {args.reports / 'soak.json'}")
    return 1 if result["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
