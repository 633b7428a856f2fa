"""The one TorchServe API client, shared by the gateway and the operator scripts.

TorchServe 0.12 keeps token authorization on: its inference and management keys live in
``key_file.json`` and expire (60 minutes by default), and a restart writes new ones. The
client re-reads the file when it changes, asks TorchServe for a fresh key (with the
never-expiring API key) shortly before expiry or when a key is refused, and sends once
more, so no call fails because a key went stale. The gateway maps what comes back to its
HTTP answers (``gateway.upstream``); ``scripts.torchserve`` drives the same client
synchronously for deploy, rollback and ``make up``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway.errors import APIError


@dataclass(frozen=True)
class Key:
    value: str
    expires_at: float  # unix time; inf for the API key


def parse_key_file(text: str) -> dict[str, Key]:
    """Read TorchServe's key file: ``{"inference": {"key", "expiration time"}, "management": ..., "API": ...}``."""
    keys = {}
    for kind, entry in json.loads(text).items():
        stamp = entry.get("expiration time")
        keys[kind] = Key(entry["key"], _parse_instant(stamp) if stamp else float("inf"))
    return keys


def _parse_instant(stamp: str) -> float:
    """TorchServe writes nanosecond ISO instants (``...T09:10:01.685821687Z``); Python parses microseconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]}").replace(tzinfo=UTC).timestamp()


class TokenStore:
    """Current TorchServe keys, reloaded when the key file changes and refreshed before they expire."""

    def __init__(self, key_file: Path, management_url: str, client: httpx.AsyncClient, margin_s: float):
        self._path = key_file
        self._management_url = management_url
        self._client = client
        self._margin_s = margin_s
        self._keys: dict[str, Key] = {}
        self._stamp: tuple[int, int] | None = None
        self._lock = asyncio.Lock()

    def _reload(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._keys = parse_key_file(self._path.read_text())
                self._stamp = stamp
            except (OSError, ValueError, KeyError):
                self._keys, self._stamp = {}, None  # half-written by a restarting TorchServe: read again next time

    async def get(self, kind: str) -> str:
        """A key of ``kind`` ("inference" or "management") that is valid for at least the margin."""
        self._reload()
        key = self._keys.get(kind)
        if key is None:
            raise APIError(503, "torchserve_unavailable", "TorchServe has not written its key file yet.")
        if key.expires_at - time.time() < self._margin_s:
            key = await self.refresh(kind, stale=key.value)
        return key.value

    async def refresh(self, kind: str, stale: str | None = None) -> Key:
        """Ask TorchServe for a new key unless another request already replaced ``stale``."""
        async with self._lock:
            self._reload()
            current = self._keys.get(kind)
            if current is not None and current.value != stale and current.expires_at - time.time() >= self._margin_s:
                return current
            api = self._keys.get("API")
            if api is None:
                raise APIError(503, "torchserve_unavailable", "TorchServe's key file has no API key.")
            try:
                response = await self._client.post(
                    f"{self._management_url}/token",
                    params={"type": kind},
                    headers={"Authorization": f"Bearer {api.value}"},
                )
            except httpx.HTTPError as exc:
                raise APIError(503, "torchserve_unavailable", f"cannot refresh the TorchServe key: {exc}") from exc
            if response.status_code != 200:
                raise APIError(503, "torchserve_unavailable", "TorchServe refused to issue a new key.")
            self._stamp = None
            self._reload()
            if kind not in self._keys:
                raise APIError(503, "torchserve_unavailable", "TorchServe's key file has no key after a refresh.")
            return self._keys[kind]


def _is_token_refusal(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return True
    return response.status_code == 400 and "InvalidKeyException" in response.text


class TorchServeAPI:
    """Authorized calls to one TorchServe's inference and management APIs over pooled connections."""

    def __init__(
        self,
        inference_url: str,
        management_url: str,
        key_file: Path,
        timeout: httpx.Timeout,
        max_connections: int = 64,
        refresh_margin_s: float = 300.0,
        retry_after_s: int = 2,
    ):
        self.inference_url = inference_url
        self.management_url = management_url
        self.retry_after_s = retry_after_s
        self.client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self.tokens = TokenStore(key_file, management_url, self.client, refresh_margin_s)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, kind: str, method: str, url: str, **kwargs) -> httpx.Response:
        """Send with the current key of ``kind``; on a refused key, refresh it and send once more.

        A TorchServe that does not answer is an ``APIError`` (504 on a timeout, else 503).
        """
        headers = kwargs.pop("headers", {})
        for attempt in range(2):
            key = await self.tokens.get(kind)
            try:
                response = await self.client.request(
                    method, url, headers={**headers, "Authorization": f"Bearer {key}"}, **kwargs
                )
            except httpx.TimeoutException as exc:
                raise APIError(
                    504, "upstream_timeout", f"TorchServe did not answer in time ({exc.__class__.__name__})."
                ) from exc
            except httpx.HTTPError as exc:
                raise APIError(
                    503,
                    "torchserve_unavailable",
                    f"TorchServe is unreachable ({exc.__class__.__name__}).",
                    {"Retry-After": str(self.retry_after_s)},
                ) from exc
            if not _is_token_refusal(response) or attempt:
                return response
            await self.tokens.refresh(kind, stale=key)
        raise AssertionError("unreachable")

    def model_url(self, model: str, suffix: str = "") -> str:
        return f"{self.management_url}/models/{model}{suffix}"

    async def management(self, method: str, model: str, suffix: str = "", **kwargs) -> httpx.Response:
        """A management call about one model (``suffix``: ``/VERSION``, ``/all``, ``/VERSION/set-default``)."""
        return await self.call("management", method, self.model_url(model, suffix), **kwargs)

    async def predict(self, model: str, version: str | None, image: bytes, headers: dict[str, str]) -> httpx.Response:
        url = f"{self.inference_url}/predictions/{model}" + (f"/{version}" if version else "")
        return await self.call("inference", "POST", url, content=image, headers=headers)

    async def model_names(self) -> list[str]:
        """Every model registered, sorted, following the list's pages."""
        names: list[str] = []
        token: str | None = "0"
        while token is not None:
            response = await self.call(
                "management", "GET", f"{self.management_url}/models", params={"limit": 100, "next_page_token": token}
            )
            if response.status_code != 200:
                raise APIError(503, "torchserve_unavailable", f"management API answered {response.status_code}")
            page = response.json()
            names += [entry["modelName"] for entry in page.get("models", [])]
            token = page.get("nextPageToken")
        return sorted(names)

    async def handler_metadata(self, model: str, version: str) -> dict:
        """What a version's handler says of itself (task, classes); empty when it cannot say."""
        response = await self.management("GET", model, f"/{version}", params={"customized": "true"})
        try:
            metadata = response.json()[0]["customizedMetadata"]
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        except (ValueError, KeyError, IndexError, TypeError):
            return {}
        return metadata if isinstance(metadata, dict) else {}


def worker_pids(description: list[dict]) -> frozenset[int]:
    """The worker processes in a management API description; a restarted worker has a new pid
    (its ``startTime`` stays that of the first start)."""
    return frozenset(w["pid"] for entry in description for w in entry.get("workers", []) if w.get("pid", -1) > 0)


def ready_count(description: list[dict]) -> int:
    """READY workers in a management API description (of one version or of several)."""
    return sum(w.get("status") == "READY" for entry in description for w in entry.get("workers", []))
