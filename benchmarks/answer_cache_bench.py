"""``make cache-bench``: what the answer cache saves on a stream with repeats, measured side by side in one run.

One TorchServe serving v1.0 and gateways in front of it, identical but for ``GATEWAY_ANSWER_CACHE``:
off, ``memory``, and a private ``redis-server`` when one is installed. The stream is ``--requests``
draws with replacement from a pool of ``--pool`` distinct generated parts, Zipf-like (the part of
rank k drawn with weight 1/k, as a line re-inspects a few parts often and most rarely); the same
stream goes to each gateway, one request at a time, the gateways in rotation so any drift of the
machine hits all alike. Reported per gateway: hit rate, client-side p50/p90 of hits and misses, mean
latency and how it compares with the cache off, and the TorchServe seconds the hits saved (the
gateway's ``gateway_answer_cache_saved_seconds_total``). Unpinned requests, so each lookup includes
the TorchServe management call that names the default version. Writes ``reports/answer_cache.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.capture_bench import package_v1, rotating, second_gateway
from benchmarks.measure import percentile
from models.generate_dataset import sample
from operations.stack import Stack, free_port, running, stop_service, wait_until

ROOT = Path(__file__).resolve().parent.parent
SEED, WARM_UP_SEED = 9011, 9012  # no reference, test or other bench renders these
WARM_UP = 10  # distinct parts each gateway answers first, unmeasured (and never repeated in the stream)


def stream(requests: int, pool: int, seed: int = SEED) -> list[int]:
    """Which part each request sends: ``requests`` draws from ``pool`` parts, rank k with weight 1/k."""
    rng = random.Random(seed)
    return rng.choices(range(pool), weights=[1 / (rank + 1) for rank in range(pool)], k=requests)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A private redis-server on a free port, nothing persisted; None when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _redis_answers(port), "redis-server", 30, server.pid)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def _redis_answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def cached_gateway(stack: Stack, run_dir: Path, cache: str) -> Stack:
    env = {"GATEWAY_TS_KEY_FILE": str(stack.key_file), "GATEWAY_ANSWER_CACHE": cache}
    return second_gateway(stack, run_dir, env, f"gateway with cache {cache}")


def measure(gateways: dict[str, Stack], warm_up: list[bytes], images: list[bytes]) -> dict[str, list[tuple]]:
    """Every image to every gateway, who goes first rotating; (latency ms, hit) per request by gateway."""
    seen: dict[str, list[tuple]] = {name: [] for name in gateways}
    with httpx.Client(timeout=60) as client:
        for n, name, elapsed, response in rotating(client, gateways, warm_up + images):
            if n >= len(warm_up):
                seen[name].append((elapsed, response.headers.get("X-Answer-Cache") == "hit"))
    return seen


def default_lookup_ms(stack: Stack, calls: int = 100) -> float:
    """p50 of the management call each unpinned lookup makes (which version is the default), from outside."""
    times = []
    with stack.torchserve() as ts:
        for _ in range(calls):
            started = time.perf_counter()
            ts.default_version(stack.model_name)
            times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def saved_seconds(gateway: Stack) -> float:
    text = httpx.get(f"{gateway.gateway_url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gateway_answer_cache_saved_seconds_total{"))  # fmt: skip


def summarise(seen: list[tuple], baseline_mean: float | None, saved: float) -> dict:
    hits = [ms for ms, hit in seen if hit]
    misses = [ms for ms, hit in seen if not hit]
    mean = statistics.fmean(ms for ms, _ in seen)
    return {
        "hit_rate": round(len(hits) / len(seen), 3),
        "hit_p50": round(percentile(hits, 0.5), 1) if hits else None,
        "hit_p90": round(percentile(hits, 0.9), 1) if hits else None,
        "miss_p50": round(percentile(misses, 0.5), 1),
        "miss_p90": round(percentile(misses, 0.9), 1),
        "mean": round(mean, 1),
        "mean_vs_off": round(mean / baseline_mean, 2) if baseline_mean else 1.0,
        "saved_s": round(saved, 1),
    }


def report(rows: dict[str, dict], requests: int, distinct: int, pool: int) -> list[str]:
    lines = ["# What the answer cache saves (make cache-bench)", "",
             f"{requests} unpinned `/predict` requests to each gateway, in rotation, one at a time: "
             f"{distinct} distinct parts drawn Zipf-like (weight 1/rank) from a pool of {pool}, after {WARM_UP} "
             "unmeasured ones. Client-side latency in ms; a hit includes the TorchServe management call that names "
             "the default version.", "",
             "| cache | requests | distinct images | hit rate | hit p50 | hit p90 | miss p50 | miss p90 | mean | "
             "mean vs off | upstream s saved |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in rows.items():
        hit = [row[k] if row[k] is not None else "-" for k in ("hit_p50", "hit_p90")]
        lines.append(
            f"| {name} | {requests} | {distinct} | {row['hit_rate']:.1%} | {hit[0]} | {hit[1]} | {row['miss_p50']} | "
            f"{row['miss_p90']} | {row['mean']} | {row['mean_vs_off']:.2f}x | {row['saved_s']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make cache-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests to each gateway (default: %(default)s)")
    parser.add_argument("--pool", type=int, default=100, help="distinct parts drawn from (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    drawn = stream(args.requests, args.pool)
    parts = {i: sample(SEED, "test", i)[0] for i in sorted(set(drawn))}
    warm_up = [sample(WARM_UP_SEED, "test", i)[0] for i in range(WARM_UP)]
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        work = Path(tmp)
        (work / "store").mkdir()
        package_v1(work / "store")
        stack = Stack.private(work / "run", work / "store")
        with running(stack, "1.0"), redis_server(work) as redis_url:
            gateways = {"off": stack, "memory": cached_gateway(stack, work / "gateway-memory", "memory")}
            if redis_url:
                gateways["redis"] = cached_gateway(stack, work / "gateway-redis", redis_url)
            try:
                seen = measure(gateways, warm_up, [parts[i] for i in drawn])
                saved = {name: saved_seconds(gateway) for name, gateway in gateways.items()}
                lookup_ms = default_lookup_ms(stack)
            finally:
                for name, gateway in gateways.items():
                    if name != "off":
                        stop_service(gateway, "gateway")
    baseline = statistics.fmean(ms for ms, _ in seen["off"])
    rows = {name: summarise(values, baseline, saved[name]) for name, values in seen.items()}
    lines = report(rows, args.requests, len(parts), args.pool)
    if "redis" not in rows:
        lines += ["", "No redis-server installed: the Redis cache was not measured."]
    took = time.perf_counter() - started
    lines += [
        "",
        "The default-version lookup each unpinned hit and miss makes (TorchServe's management API, "
        f"`GET /models/yolo`): p50 {lookup_ms} ms, measured alone. Whole run: {took:.0f} s.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "answer_cache.md").write_text("\n".join(lines) + "\n")
    summary = {
        "requests": args.requests,
        "distinct": len(parts),
        "pool": args.pool,
        "gateways": rows,
        "default_lookup_p50_ms": lookup_ms,
    }
    (args.out / "answer_cache.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
