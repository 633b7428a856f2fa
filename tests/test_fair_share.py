"""Slow senders and greedy clients against the real stack: nobody else waits for them.

Each test starts its own gateway (in front of the session's TorchServe) with the limits it
tests, measures honest traffic alone, then again with the hostile clients running.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import httpx
import psutil
import pytest

from benchmarks.hostile import greedy, slow_upload_head, trickle
from operations.stack import recorded_pid, wait_until
from tests.helpers import metric_total

pytestmark = pytest.mark.integration

SLOW_SENDERS = 200
FRONT_LOADED_BYTES = 3 * 1024 * 1024  # half the slow senders send this at once, then a byte a second
BUFFER_BYTES = 64 * 1024
# What one front-loaded connection may hold at once: its spool's memory buffer, plus up to 1 MiB
# for the copies of one socket read (up to 256 KiB) on its way through asyncio, h11, uvicorn's
# receive buffer (it stops reading past 64 KiB) and the parser; plus slack for the allocator.
# Without the spool each would hold its whole body: 3 MiB. The trickling ones hold a few bytes.
MEMORY_BOUND_MIB = SLOW_SENDERS // 2 * (BUFFER_BYTES / 2**20 + 1) + 16
SLOW_LIMITS = {
    "GATEWAY_UPLOAD_BUFFER_BYTES": str(BUFFER_BYTES),
    "GATEWAY_MIN_UPLOAD_RATE": str(384 * 1024),  # the front-loaded ones fall under it after 8 s
}


def client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=60)


def timed_posts(http: httpx.Client, url: str, photo: bytes, until, every_s: float, **kwargs) -> list[tuple[int, float]]:
    """Post ``photo`` every ``every_s`` until ``until()`` is true; each answer's status and seconds."""
    results = []
    while not until():
        started = time.perf_counter()
        status = http.post(url, files={"file": ("part.jpg", photo)}, **kwargs).status_code
        elapsed = time.perf_counter() - started
        results.append((status, elapsed))
        time.sleep(max(0.0, every_s - elapsed))
    return results


def after(n: int):
    """An ``until`` for ``timed_posts``: true once it has been asked ``n + 1`` times (n posts)."""
    count = iter(range(n))
    return lambda: next(count, None) is None


def p50(results: list[tuple[int, float]]) -> float:
    return statistics.median(seconds for _, seconds in results)


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["same-address", "other-address"])
def test_slow_senders_never_starve_normal_requests(stack, extra_gateway, ground_truth, source):
    gateway = extra_gateway(**SLOW_LIMITS)
    url, photo = f"{gateway.gateway_url}/predict", ground_truth[0].path.read_bytes()
    process = psutil.Process(recorded_pid(gateway, "gateway"))
    with client(source) as http:
        timed_posts(http, url, photo, after(2), 0.0)  # warm the connection and the worker
        alone = timed_posts(http, url, photo, after(12), 0.3)
        baseline_mib = process.memory_info().rss / 2**20
        done = threading.Event()
        peak_mib = [baseline_mib]

        def watch_memory() -> None:
            while not done.is_set():
                peak_mib[0] = max(peak_mib[0], process.memory_info().rss / 2**20)
                time.sleep(0.1)

        with ThreadPoolExecutor(max_workers=SLOW_SENDERS + 2) as pool:
            pool.submit(watch_memory)
            prefixes = [b"", b"\xff" * FRONT_LOADED_BYTES]
            slow = [
                pool.submit(
                    trickle,
                    gateway.host,
                    gateway.gateway_port,
                    slow_upload_head(gateway.host, prefixes[i % 2]),
                    b"x",
                    1.0,
                    90,
                )
                for i in range(SLOW_SENDERS)
            ]
            loaded = timed_posts(http, url, photo, lambda: all(f.done() for f in slow), 0.3)
            done.set()
            replies = [future.result() for future in slow]

    print(
        f"\n{source}: p50 alone {p50(alone) * 1000:.0f} ms, held {p50(loaded) * 1000:.0f} ms over {len(loaded)}; "
        f"gateway RSS {baseline_mib:.0f} -> peak {peak_mib[0]:.0f} MiB"
    )
    assert [status for status, _ in alone + loaded] == [200] * (len(alone) + len(loaded))
    assert len(loaded) >= 10, f"only {len(loaded)} normal requests while the slow senders were held"
    assert p50(loaded) <= 2 * p50(alone), f"p50 {p50(loaded):.3f} s held vs {p50(alone):.3f} s alone"
    assert all(reply is not None for reply in replies), "a slow sender was never cut"
    for reply in filter(None, replies):
        assert reply.startswith((b"HTTP/1.1 408", b"HTTP/1.1 429")), reply[:200]
    cut = {
        reason: metric_total(gateway.gateway_url, f'gateway_cut_uploads_total{{reason="{reason}"}}')
        for reason in ("body_too_slow", "too_many_slow_uploads", "body_timeout", "busy")
    }
    assert cut["body_too_slow"] + cut["too_many_slow_uploads"] == SLOW_SENDERS, cut
    assert cut["too_many_slow_uploads"] == SLOW_SENDERS // 2 - 20, cut  # 20 front-loaded ones may linger
    assert cut["busy"] == cut["body_timeout"] == 0, cut
    arrived_mib = SLOW_SENDERS // 2 * FRONT_LOADED_BYTES / 2**20
    assert peak_mib[0] - baseline_mib < MEMORY_BOUND_MIB, (
        f"the gateway grew {peak_mib[0] - baseline_mib:.0f} MiB (bound {MEMORY_BOUND_MIB:.0f}) "
        f"while {arrived_mib:.0f} MiB of bodies arrived"
    )


@pytest.mark.parametrize("keys", [True, False], ids=["per-key", "per-address"])
def test_a_greedy_client_is_limited_and_leaves_others_their_latency(stack, extra_gateway, ground_truth, keys):
    photo = ground_truth[0].path.read_bytes()
    with httpx.Client(timeout=60) as http:  # one prediction's time through the session's gateway
        service_s = p50(timed_posts(http, f"{stack.gateway_url}/predict", photo, after(8), 0.0)[2:])
    rate = round(1 / (10 * service_s), 2)  # the greedy client's share: a tenth of one worker
    env = {"GATEWAY_RATE_LIMIT_PER_S": str(rate), "GATEWAY_RATE_LIMIT_BURST": "2"}
    if keys:
        env["GATEWAY_API_KEYS"] = "polite-key,greedy-key"
    gateway = extra_gateway(**env)
    url = f"{gateway.gateway_url}/predict"
    polite_headers = {"X-API-Key": "polite-key"} if keys else {}
    greedy_headers = {"X-API-Key": "greedy-key"} if keys else {}
    polite_every = 2 / rate  # half its own rate: never limited
    greedy_s = 15 * polite_every + 2
    with client("127.0.0.1") as polite, ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        alone = timed_posts(polite, url, photo, after(10), polite_every, headers=polite_headers)
        greed = pool.submit(
            greedy, url, photo, 10 * rate, greedy_s, greedy_headers, "127.0.0.1" if keys else "127.0.0.2"
        )
        limited = 'gateway_cut_uploads_total{reason="rate_limited"}'
        wait_until(lambda: metric_total(gateway.gateway_url, limited) > 0, "the greedy client limited", 30)
        loaded = timed_posts(polite, url, photo, after(15), polite_every, headers=polite_headers)
        statuses, refusal = greed.result()

    print(
        f"\nrate {rate}/s: polite p50 alone {p50(alone) * 1000:.0f} ms, beside greedy {p50(loaded) * 1000:.0f} ms; "
        f"greedy sent {len(statuses)} in {greedy_s:.0f} s: {statuses.count(200)} x 200, {statuses.count(429)} x 429"
    )
    assert [status for status, _ in alone + loaded] == [200] * (len(alone) + len(loaded))
    assert p50(loaded) <= 2 * p50(alone), f"p50 {p50(loaded):.3f} s beside the greedy client, {p50(alone):.3f} alone"
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) <= rate * greedy_s + 2 + 1, (statuses.count(200), rate, greedy_s)
    assert len(statuses) >= 5 * rate * greedy_s, f"the greedy client sent only {len(statuses)} in {greedy_s:.0f} s"
    assert refusal["body"]["error"]["code"] == "rate_limited" and int(refusal["retry_after"]) >= 1, refusal
    assert metric_total(gateway.gateway_url, limited) == statuses.count(429)
    exposed = httpx.get(f"{gateway.gateway_url}/metrics", timeout=10).text
    assert "greedy-key" not in exposed and "127.0.0.2" not in exposed


def test_a_rate_limited_client_is_told_when_to_come_back(extra_gateway, ground_truth):
    """Over HTTP: past its burst a client gets a 429 JSON error whose Retry-After (whole seconds) is how long its
    bucket needs for a token, and a client that waits that long is answered."""
    gateway = extra_gateway(GATEWAY_RATE_LIMIT_PER_S="0.25", GATEWAY_RATE_LIMIT_BURST="1")  # a token every 4 s
    url, photo = f"{gateway.gateway_url}/predict", ground_truth[0].path.read_bytes()
    with httpx.Client(timeout=60) as http:
        first = http.post(url, files={"file": ("part.jpg", photo)})
        refused = http.post(url, files={"file": ("part.jpg", photo)})
        assert first.status_code == 200, first.text
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/json", refused.text
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and "0.25 predictions/s (bursts of 1)" in error["message"], error
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 4, refused.headers
        time.sleep(retry_after)  # the client does as it is told: that is what is tested
        assert http.post(url, files={"file": ("part.jpg", photo)}).status_code == 200
