"""The answer cache (gateway/answer_cache.py): its keys, the LRU's bound and expiry, a Redis that fails, and
on the real stack: repeats answered from it, a new default version never answered from the old one's
answers, capture skipped and drift fed on a hit, and two gateways sharing one real redis-server."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from gateway.answer_cache import AnswerCache, Entry, MemoryAnswers, RedisAnswers, answer_key, image_digest
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from operations.archives import archive_for
from operations.releases import load_version
from operations.stack import free_port, wait_until
from tests.helpers import ROOT, metric_total, package

ADMIN = {"X-Admin-Key": "cache-operator"}

BODY = {
    "status": "success",
    "task": "detect",
    "model": {"name": "yolo", "version": "1.0"},
    "image": {"width": 64, "height": 48},
    "detections": [{"class": "scratch", "class_id": 0, "confidence": 0.9, "bbox": [1, 2, 30, 40]}],
    "timing_ms": {"preprocess": 1.0, "inference": 5.0, "postprocess": 1.0},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counted(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_the_key_names_model_version_image_and_parameters_in_any_order():
    digest = image_digest(b"image one")
    key = answer_key("yolo", "1.0", digest, {"Conf": "0.5", "Iou": "0.4"})
    assert key == answer_key("yolo", "1.0", digest, {"Iou": "0.4", "Conf": "0.5"})
    assert key.startswith("answer:yolo:1.0:")
    others = [
        answer_key("yolo", "1.0", digest, {"Conf": "0.6", "Iou": "0.4"}),
        answer_key("yolo", "1.0", digest, {"Conf": "0.5"}),
        answer_key("yolo", "1.0", digest, {"Conf": "0.5", "Iou": "0.4", "Max-Det": "3"}),
        answer_key("yolo", "2.0", digest, {"Conf": "0.5", "Iou": "0.4"}),
        answer_key("parts", "1.0", digest, {"Conf": "0.5", "Iou": "0.4"}),
        answer_key("yolo", "1.0", image_digest(b"image two"), {"Conf": "0.5", "Iou": "0.4"}),
    ]
    assert len({key, *others}) == 1 + len(others)


def test_the_lru_evicts_the_least_recently_used():
    async def run() -> None:
        answers = MemoryAnswers(entries=2, ttl_s=60)
        await answers.put("a", "A")
        await answers.put("b", "B")
        assert await answers.get("a") == "A"  # a is now the most recently used
        await answers.put("c", "C")
        assert (await answers.get("a"), await answers.get("b"), await answers.get("c")) == ("A", None, "C")
        assert len(answers) == 2

    asyncio.run(run())


def test_an_answer_expires_after_its_ttl():
    async def run() -> None:
        clock = Clock()
        answers = MemoryAnswers(entries=10, ttl_s=60, clock=clock)
        await answers.put("a", "A")
        clock.now += 59.9
        assert await answers.get("a") == "A"
        clock.now += 0.1
        assert await answers.get("a") is None and len(answers) == 0, "an expired answer is dropped when found"
        await answers.put("a", "A2")
        assert await answers.get("a") == "A2"

    asyncio.run(run())


def test_find_resolves_the_default_on_every_lookup_and_keeps_under_the_answering_version():
    metrics = GatewayMetrics()
    cache = AnswerCache(MemoryAnswers(100, 60), metrics)
    defaults = ["1.0", "1.0", "2.0", "2.0"]
    asked = []

    async def default_version(model: str) -> str | None:
        asked.append(model)
        return defaults[len(asked) - 1]

    async def run() -> list:
        first = await cache.find("yolo", None, b"img", {"Conf": "0.5"}, default_version)
        await cache.keep(first, "1.0", Entry(dict(BODY), {"luma": 0.5}, 250.0))
        second = await cache.find("yolo", None, b"img", {"Conf": "0.5"}, default_version)
        after_deploy = await cache.find("yolo", None, b"img", {"Conf": "0.5"}, default_version)
        pinned = await cache.find("yolo", "1.0", b"img", {"Conf": "0.5"}, default_version)
        return [first, second, after_deploy, pinned]

    first, second, after_deploy, pinned = asyncio.run(run())
    assert (first.result, second.result, after_deploy.result, pinned.result) == ("miss", "hit", "miss", "hit")
    assert asked == ["yolo"] * 3, "asked on every unpinned lookup, never for a pinned one"
    assert second.entry.body == BODY and second.entry.signals == {"luma": 0.5} and second.header == "hit"
    assert second.entry.body is not pinned.entry.body, "each hit gets a body of its own to change"
    assert counted(metrics, "gateway_answer_cache_saved_seconds_total", model="yolo") == 0.5
    for lookup in (first, second, after_deploy, pinned):
        cache.count(lookup)
    assert counted(metrics, "gateway_answer_cache_requests_total", model="yolo", result="hit") == 2
    assert counted(metrics, "gateway_answer_cache_requests_total", model="yolo", result="miss") == 2


def test_an_unknown_model_is_not_looked_up():
    class Refusing(MemoryAnswers):
        async def get(self, key: str) -> str | None:
            raise AssertionError("looked up")

    async def unknown(model: str) -> None:
        return None

    lookup = asyncio.run(AnswerCache(Refusing(10, 60), GatewayMetrics()).find("nope", None, b"x", {}, unknown))
    assert (lookup.result, lookup.entry) == ("miss", None)


def test_a_redis_that_does_not_answer_costs_a_counted_error_then_is_left_alone():
    """Nothing listens on the port: each call fails at once; after a failure the cache is not tried for a while."""
    clock = Clock()
    metrics = GatewayMetrics()
    cache = AnswerCache(RedisAnswers(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60), metrics, clock=clock)
    tried = []

    async def default_version(model: str) -> str:
        tried.append(model)
        return "1.0"

    async def run() -> list:
        started = time.perf_counter()
        failed = await cache.find("yolo", None, b"img", {}, default_version)
        await cache.keep(failed, "1.0", Entry(dict(BODY), None, 10.0))
        elapsed = time.perf_counter() - started
        paused = await cache.find("yolo", None, b"img", {}, default_version)
        clock.now += 1.1
        again = await cache.find("yolo", None, b"img", {}, default_version)
        await cache.aclose()
        return [failed, paused, again, elapsed]

    failed, paused, again, elapsed = asyncio.run(run())
    assert elapsed < 1.0, f"{elapsed:.2f}s: a failing Redis must not hold a prediction"
    assert [failed.result, paused.result, again.result] == ["error"] * 3
    assert failed.header == "miss"
    assert tried == ["yolo", "yolo"], "while paused the cache is not even consulted"


def test_bad_settings_are_refused_and_the_gateway_says_so_in_one_line(tmp_path):
    assert Settings().answer_cache == "off"
    for good in ("memory", "redis://cache:6379/0", "redis://10.0.0.5:6380", "rediss://cache:6379/2"):
        assert Settings(answer_cache=good).answer_cache == good
    for bad, message in [
        ("on", "is not off, memory or a redis://HOST:PORT/DB URL"),
        ("redis://cache:port/0", "is not a Redis URL"),
        ("redis://cache:6379/zero", "is not a Redis URL"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Settings(answer_cache=bad)
    with pytest.raises(ValidationError):
        Settings(answer_cache_ttl_s=0)
    with pytest.raises(ValidationError):
        Settings(answer_cache_entries=0)
    env = {**os.environ, "GATEWAY_ANSWER_CACHE": "memcached://x", "GATEWAY_STATE_STORE": str(tmp_path / "s.db")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.serve", "--port", "9"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: GATEWAY_ANSWER_CACHE: Value error, 'memcached://x' is not off, memory or a redis://HOST:PORT/DB URL"
    ]


# --- on the real stack ---------------------------------------------------------------------------------------


def post(url: str, data: bytes, **params) -> httpx.Response:
    response = httpx.post(f"{url}/predict", files={"file": ("part.jpg", data)}, params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response


def found(response: httpx.Response) -> list[dict]:
    return response.json()["detections"]


def cache_count(url: str, result: str) -> float:
    return metric_total(url, f'gateway_answer_cache_requests_total{{model="yolo",result="{result}"}}')


@pytest.fixture
def caching(extra_gateway, tmp_path):
    """A gateway with the memory cache that captures every answer it gets from TorchServe."""
    policy = tmp_path / "capture.yaml"
    policy.write_text("yolo:\n  random: 1.0\n")
    return extra_gateway(
        GATEWAY_ANSWER_CACHE="memory",
        GATEWAY_CAPTURE_POLICY=str(policy),
        GATEWAY_CAPTURE_DIR=str(tmp_path / "captures"),
        GATEWAY_ADMIN_KEYS=ADMIN["X-Admin-Key"],
    )


@pytest.mark.integration
def test_a_repeat_is_answered_from_the_cache(caching, ground_truth):
    url = caching.gateway_url
    busy, other = sorted(ground_truth, key=lambda t: -len(t.boxes))[:2]
    photo = busy.path.read_bytes()
    first = post(url, photo, signals="true")
    again = post(url, photo, signals="true")
    assert (first.headers["X-Answer-Cache"], again.headers["X-Answer-Cache"]) == ("miss", "hit")
    assert found(again) == found(first) and found(first), "the same detections, and some"
    assert again.json()["signals"] == first.json()["signals"]
    assert again.headers["X-Model-Version"] == "1.0"
    timing = again.json()["timing_ms"]
    assert timing["upstream"] == timing["inference"] == 0 and 0 < timing["total"] < first.json()["timing_ms"]["total"]
    assert post(url, photo, version="1.0").headers["X-Answer-Cache"] == "hit", "pinned to the version that answered"
    assert post(url, photo, conf="0.5").headers["X-Answer-Cache"] == "miss", "other parameters, another answer"
    assert post(url, photo, conf="0.5").headers["X-Answer-Cache"] == "hit"
    drawn = post(url, photo, format="image")
    assert drawn.headers["X-Answer-Cache"] == "hit" and drawn.headers["content-type"] == "image/jpeg"
    files = [("files", ("a.jpg", photo)), ("files", ("b.jpg", other.path.read_bytes()))]
    batch = httpx.post(f"{url}/predict/batch", files=files, timeout=60)
    assert batch.headers["X-Answer-Cache"] == "hit, miss"
    assert batch.json()["results"][0]["detections"] == found(first)
    assert cache_count(url, "hit") == 5 and cache_count(url, "miss") == 3 and cache_count(url, "error") == 0
    saved = metric_total(url, 'gateway_answer_cache_saved_seconds_total{model="yolo"}')
    assert 0 < saved < 5 * 30
    drift = httpx.get(f"{url}/models/yolo/drift", timeout=30).json()["versions"]
    assert [(v["version"], v["requests"]) for v in drift] == [("1.0", 8)], "hits feed the drift watch too"
    assert offered_to_capture(url) == 3, "the misses are offered to the capture policy; a hit never is"


def offered_to_capture(url: str) -> float:
    """Answers the capture worker has dealt with (kept or dropped, e.g. as an exact duplicate) so far.

    The worker takes what is offered in turn: once a last answer, of an image never sent before (noise), is
    listed as captured, every earlier one has been dealt with. That last one is not counted."""
    noise = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noise, "PNG")
    last = post(url, noise.getvalue()).headers["x-request-id"]

    def listed() -> bool:
        rows = httpx.get(f"{url}/models/yolo/captures", headers=ADMIN, timeout=10).json()["captures"]
        return any(row["request_id"] == last for row in rows)

    wait_until(listed, "the last answer captured", 30)
    return metric_total(url, "gateway_captures_total") + metric_total(url, "gateway_capture_dropped_total") - 1


@pytest.mark.integration
def test_a_new_default_version_is_never_answered_from_the_old_ones_answers(stack, extra_gateway, ground_truth):
    url = extra_gateway(GATEWAY_ANSWER_CACHE="memory").gateway_url
    photo = ground_truth[0].path.read_bytes()
    assert post(url, photo).headers["X-Answer-Cache"] == "miss"
    assert post(url, photo).headers["X-Answer-Cache"] == "hit"
    with stack.torchserve() as ts:
        loaded_here = "2.0" not in ts.loaded_versions(stack.model_name)
        if loaded_here:
            if not archive_for(stack, "2.0").is_file():
                package(stack.model_store, "2.0")
            load_version(stack, ts, "2.0")
        try:
            ts.set_default(stack.model_name, "2.0")
            switched = post(url, photo)
            assert (switched.headers["X-Answer-Cache"], switched.headers["X-Model-Version"]) == ("miss", "2.0")
            assert post(url, photo).headers["X-Answer-Cache"] == "hit"
            assert post(url, photo).json()["model"]["version"] == "2.0"
        finally:
            ts.set_default(stack.model_name, "1.0")
            if loaded_here:
                ts.unregister(stack.model_name, "2.0")
    back = post(url, photo)
    assert (back.headers["X-Answer-Cache"], back.headers["X-Model-Version"]) == ("hit", "1.0")


@pytest.mark.integration
def test_no_cache_header_when_the_cache_is_off(stack, ground_truth):
    photo = ground_truth[0].path.read_bytes()
    for _ in range(2):
        assert "X-Answer-Cache" not in post(stack.gateway_url, photo).headers
    batch = httpx.post(f"{stack.gateway_url}/predict/batch", files=[("files", ("a.jpg", photo))], timeout=60)
    assert batch.status_code == 200 and "X-Answer-Cache" not in batch.headers
    assert "gateway_answer_cache_requests_total{" not in httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text


@pytest.mark.integration
def test_two_gateways_on_one_redis_share_answers_and_one_without_redis_still_answers(
    redis_url, extra_gateway, ground_truth
):
    first, second = (extra_gateway(GATEWAY_ANSWER_CACHE=redis_url).gateway_url for _ in range(2))
    photo = ground_truth[1].path.read_bytes()
    asked = post(first, photo)
    shared = post(second, photo)
    assert (asked.headers["X-Answer-Cache"], shared.headers["X-Answer-Cache"]) == ("miss", "hit")
    assert found(shared) == found(asked)
    assert cache_count(second, "hit") == 1 and cache_count(second, "miss") == 0
    nowhere = extra_gateway(GATEWAY_ANSWER_CACHE=f"redis://127.0.0.1:{free_port()}/0").gateway_url
    for _ in range(2):
        lost = post(nowhere, photo)
        assert lost.headers["X-Answer-Cache"] == "miss" and found(lost) == found(asked)
    assert cache_count(nowhere, "error") == 2 and cache_count(nowhere, "hit") == 0
