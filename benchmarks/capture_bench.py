"""``make capture-bench``: what capturing costs a request, measured side by side in one run.

One TorchServe serving v1.0 and three gateways in front of it, identical but for capture: no
policy, 10 % of answers at random, and **every** answer (near-duplicate check on; the worst case:
a hash, a write and a row per request). The same images go to each, one request at a time, the
gateways in rotation so any drift of the machine hits all alike. Reported: each gateway's p50 and
p90 client-side latency, the p50 it adds over the one without capture, and the captures stored.
Writes ``reports/capture_bench.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.measure import percentile
from models.generate_dataset import sample
from operations.packaging import package
from operations.stack import Stack, free_port, http_ok, running, start_gateway, stop_service, wait_until

ROOT = Path(__file__).resolve().parent.parent
SEED = 9007
SHARES = {"10 % at random": 0.1, "every answer": 1.0}


def package_v1(store: Path) -> None:
    """yolo_v1.0.mar in ``store``, as `make up` packages it (our samples as its gate set)."""
    weights = ROOT / "models" / "weights" / "v1.0" / "best.pt"
    package(weights, "1.0", store, gate_data=ROOT / "samples", log=lambda _: None)


def second_gateway(stack: Stack, run_dir: Path, env: dict[str, str], what: str = "capturing gateway") -> Stack:
    """Another gateway in front of ``stack``'s TorchServe, with ``env`` on top of its settings."""
    other = dataclasses.replace(stack, run_dir=run_dir, gateway_port=free_port(), gateway_env=env)
    run_dir.mkdir(parents=True)
    pid = start_gateway(other)
    wait_until(lambda: http_ok(f"{other.gateway_url}/health/live"), what, 30, pid)
    return other


def rotating(client: httpx.Client, gateways: dict[str, Stack], images: list[bytes]) -> Iterator[tuple]:
    """Each image to every gateway, who goes first rotating: (image index, gateway name, latency ms, answer)."""
    order = list(gateways.items())
    for n, data in enumerate(images):
        turn = n % len(order)
        for name, gateway in order[turn:] + order[:turn]:
            started = time.perf_counter()
            response = client.post(f"{gateway.gateway_url}/predict", files={"file": ("p.jpg", data, "image/jpeg")})
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.text
            yield n, name, elapsed, response


def measure(gateways: dict[str, Stack], images: list[bytes]) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each image to every gateway, who goes first rotating; (latencies in ms by gateway, captures stored)."""
    times: dict[str, list[float]] = {name: [] for name in gateways}
    with httpx.Client(timeout=60) as client:
        for n, name, elapsed, _ in rotating(client, gateways, images[:20] + images):
            if n >= 20:  # the first 20 warm every gateway up
                times[name].append(elapsed)
        time.sleep(2)
        stored = {
            name: client.get(f"{gateway.gateway_url}/models/yolo/captures", params={"limit": 1},
                             headers={"X-Admin-Key": "bench"}).json()["total"]
            for name, gateway in gateways.items() if name != "off"
        }  # fmt: skip
    return times, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make capture-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests to each gateway (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    images = [sample(SEED, "test", i)[0] for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix="capture-bench-") as tmp:
        work = Path(tmp)
        (work / "store").mkdir()
        package_v1(work / "store")
        stack = Stack.private(work / "run", work / "store")
        with running(stack, "1.0"):
            gateways = {"off": stack}
            for name, share in SHARES.items():
                policy = work / f"capture-{share}.yaml"
                policy.write_text(f"yolo:\n  random: {share}\n")
                env = {
                    "GATEWAY_TS_KEY_FILE": str(stack.key_file),
                    "GATEWAY_CAPTURE_POLICY": str(policy),
                    "GATEWAY_CAPTURE_DIR": str(work / f"captures-{share}"),
                    "GATEWAY_ADMIN_KEYS": "bench",
                }
                gateways[name] = second_gateway(stack, work / f"gateway-{share}", env)
            try:
                times, stored = measure(gateways, images)
            finally:
                for name, gateway in gateways.items():
                    if name != "off":
                        stop_service(gateway, "gateway")
    rows = {name: {"p50": round(statistics.median(v), 2), "p90": round(percentile(v, 0.9), 2)}
            for name, v in times.items()}  # fmt: skip
    added = {name: round(rows[name]["p50"] - rows["off"]["p50"], 2) for name in SHARES}
    summary = {"requests": args.requests, "captured": stored, "latency_ms": rows, "p50_added_ms": added}
    lines = ["# What capturing costs a request (make capture-bench)", "",
             f"{args.requests} requests to each gateway, in rotation, one at a time.", "",
             "| gateway | captures stored | p50 ms | p90 ms | p50 added ms |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in rows.items():
        lines.append(
            f"| capture {name} | {stored.get(name, 0)} | {row['p50']} | {row['p90']} | {added.get(name, '')} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capture_bench.md").write_text("\n".join(lines) + "\n")
    (args.out / "capture_bench.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
