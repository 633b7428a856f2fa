"""The answer cache: an exact repeat of a prediction is answered from the stored answer, not TorchServe.

Off by default (``GATEWAY_ANSWER_CACHE``). A repeat is the same image bytes with the same parameters
that change the answer, to the same model and the same version: the key names the version that will
answer, resolved before the lookup (the pinned one, the canary's pick, else the model's default as
TorchServe says it now), so a deploy or a promotion changes the key and never serves a stale answer.
A miss is stored under the version that did answer, which is the resolved one unless a deploy
switched the default in between. Only successes are stored.

Two backends hold the answers as JSON text: an LRU in this process (``memory``), bounded by entries,
or a Redis (``redis://HOST:PORT/DB``) that every replica shares, keys ``answer:...`` with ``SET EX``.
Both expire an answer after ``GATEWAY_ANSWER_CACHE_TTL_S``. The cache never costs a prediction more
than a short wait: Redis calls time out after ``REDIS_TIMEOUT_S``, are not retried, and after a
failure the cache is left alone for ``PAUSE_AFTER_FAILURE_S`` (every lookup then counts an error and
goes to TorchServe), so a Redis that is down costs one timeout a second, not one per request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

OFF, MEMORY = "off", "memory"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
KEY_PREFIX = "answer:"
REDIS_TIMEOUT_S = 0.2  # connect and each read or write: a slow Redis costs a request this much, not more
PAUSE_AFTER_FAILURE_S = 1.0

DefaultVersion = Callable[[str], Awaitable[str | None]]


def check_location(value: str) -> str:
    """``off``, ``memory`` or a Redis URL, else ValueError saying which (the settings' check at startup)."""
    if value in (OFF, MEMORY):
        return value
    if not value.startswith(REDIS_SCHEMES):
        raise ValueError(f"{value!r} is not off, memory or a redis://HOST:PORT/DB URL")
    from redis.asyncio.connection import parse_url

    try:
        parse_url(value)
        database = urlsplit(value).path.strip("/")
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a Redis URL: {exc}") from None
    if value.startswith("redis") and (not urlsplit(value).hostname or not (database or "0").isdigit()):
        raise ValueError(f"{value!r} is not a Redis URL (say redis://HOST:PORT/DB)")
    return value


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer_key(model: str, version: str, digest: str, params: dict[str, str]) -> str:
    """The key of one answer: the model, its version, the image's sha256 and the parameters in any order.

    ``params`` are the ones sent to TorchServe (``InferenceParams.upstream_headers``): only what the
    client set, so a parameter left out and the same value given explicitly are two keys (two misses
    at worst, never a wrong answer). Model and version stay readable so an operator can find them.
    """
    canonical = json.dumps([model, version, digest, sorted(params.items())], separators=(",", ":"))
    return f"{KEY_PREFIX}{model}:{version}:{hashlib.sha256(canonical.encode()).hexdigest()}"


@dataclass
class Entry:
    """A stored answer: the body as the handler gave it (without its signals), the drift signals a hit
    feeds the drift watch with, and how long TorchServe took for it (what each hit saves)."""

    body: dict
    signals: dict | None
    upstream_ms: float

    def dumps(self) -> str:
        return json.dumps({"body": self.body, "signals": self.signals, "upstream_ms": self.upstream_ms})

    @classmethod
    def loads(cls, text: str | bytes) -> Entry:
        data = json.loads(text)
        return cls(data["body"], data["signals"], float(data["upstream_ms"]))


class Backend(Protocol):
    async def get(self, key: str) -> str | bytes | None: ...

    async def put(self, key: str, value: str) -> None: ...

    async def aclose(self) -> None: ...


class MemoryAnswers:
    """An LRU of at most ``entries`` answers in this process, each kept ``ttl_s`` seconds at most."""

    def __init__(self, entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.entries = entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self.clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    async def put(self, key: str, value: str) -> None:
        self._items[key] = (self.clock() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    async def aclose(self) -> None:
        self._items.clear()


class RedisAnswers:
    """Answers in a Redis every replica shares; Redis expires them (``SET ... EX``)."""

    def __init__(self, url: str, ttl_s: int, timeout_s: float = REDIS_TIMEOUT_S):
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.ttl_s = ttl_s
        self._redis = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def put(self, key: str, value: str) -> None:
        await self._redis.set(key, value, ex=self.ttl_s)

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass
class Lookup:
    """One request's look in the cache: what it asked, and what it found (hit, miss, or error)."""

    model: str
    digest: str
    params: dict[str, str]
    result: str
    entry: Entry | None = None

    @property
    def header(self) -> str:
        """``X-Answer-Cache``: hit, or miss for anything TorchServe answered (a failed lookup too)."""
        return "hit" if self.entry is not None else "miss"


class AnswerCache:
    """Finds and keeps answers in one backend, counting each lookup; a backend failure is only counted."""

    def __init__(self, backend: Backend, metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic):
        self.backend = backend
        self.metrics = metrics
        self.clock = clock
        self._paused_until = 0.0
        self._failing = False

    async def find(
        self, model: str, version: str | None, data: bytes, params: dict[str, str], default_version: DefaultVersion
    ) -> Lookup:
        """Look for the answer ``version`` of ``model`` gave ``data`` with ``params``.

        ``version`` None is the default arm: ``default_version(model)`` asks TorchServe which version
        that is now, on every lookup, never remembered, so an answer of the previous default is never
        served after a deploy. It costs one management API round trip per unpinned lookup, hit or miss
        (p50 about 1.5 ms with TorchServe on the same host, measured alone by ``make cache-bench``, whose hit
        latencies include it); pinned and canary requests skip it. A model TorchServe does not know is
        not looked up.
        """
        lookup = Lookup(model, image_digest(data), params, "miss")
        if self.clock() < self._paused_until:
            lookup.result = "error"
            return lookup
        try:
            version = version or await default_version(model)
        except Exception:  # noqa: BLE001 - TorchServe cannot say: the prediction will say why, if it fails too
            lookup.result = "error"
            return lookup
        if version is None:
            return lookup
        try:
            text = await self.backend.get(answer_key(model, version, lookup.digest, params))
            lookup.entry = Entry.loads(text) if text is not None else None
        except Exception as exc:  # noqa: BLE001 - a cache that cannot answer is a miss, never a failed prediction
            self._failed("read", exc)
            lookup.result = "error"
            return lookup
        self._recovered()
        if lookup.entry is not None:
            lookup.result = "hit"
            self.metrics.answer_cache_saved.labels(model).inc(lookup.entry.upstream_ms / 1000)
        return lookup

    async def keep(self, lookup: Lookup, version: str, entry: Entry) -> None:
        """Store the answer ``version`` gave (the version that did answer, whatever the lookup resolved)."""
        if self.clock() < self._paused_until:
            return
        value = entry.dumps()  # now: the caller goes on changing the body it answers with
        try:
            await self.backend.put(answer_key(lookup.model, version, lookup.digest, lookup.params), value)
        except Exception as exc:  # noqa: BLE001 - the answer is good whether or not it is kept
            self._failed("write", exc)

    def count(self, lookup: Lookup) -> None:
        """Count the lookup once its model is known to exist (a client's typo must not become a label)."""
        self.metrics.answer_cache.labels(lookup.model, lookup.result).inc()

    def _failed(self, what: str, exc: Exception) -> None:
        self._paused_until = self.clock() + PAUSE_AFTER_FAILURE_S
        if not self._failing:
            logger.warning("answer cache: cannot %s (%r); predictions go to TorchServe", what, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.warning("answer cache: answering again")
        self._failing = False

    async def aclose(self) -> None:
        await self.backend.aclose()


def open_answer_cache(location: str, ttl_s: int, entries: int, metrics: GatewayMetrics) -> AnswerCache | None:
    """The cache ``GATEWAY_ANSWER_CACHE`` names, or None when it is off. Nothing is connected yet: a Redis
    that is down at startup is a counted error on each lookup, and answers once it is up."""
    if location == OFF:
        return None
    backend = MemoryAnswers(entries, ttl_s) if location == MEMORY else RedisAnswers(location, ttl_s)
    return AnswerCache(backend, metrics)
