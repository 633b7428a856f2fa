"""The one TorchServe client of the app: pooled connections, token handling, error mapping.

TorchServe 0.12 keeps token authorization on: its inference and management keys live in
``key_file.json`` and expire (60 minutes by default), and a restart writes new ones. The
gateway re-reads the file when it changes, asks TorchServe for a fresh key (with the
never-expiring API key) shortly before expiry or when a key is refused, and retries once,
so no user request fails because a key went stale.

A prediction is idempotent, so one that failed only because the worker running it died
(killed, out of memory) is sent once more; TorchServe queues it for whichever worker is
alive or restarted. No other failure is retried, a 4xx never.
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
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

# TorchServe 0.12 answers the jobs of a worker process that died (killed, out of memory) with
# 507 {"type": "InternalServerException", "message": "Worker died."}; seen by killing workers under load.
WORKER_DIED = "Worker died."


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


def worker_died(response: httpx.Response) -> bool:
    """TorchServe lost the worker process running this request: the request itself was fine."""
    return response.status_code >= 500 and WORKER_DIED in response.text


@dataclass
class Prediction:
    status: int
    body: dict
    upstream_ms: float


class TorchServeClient:
    """Inference and read-only management calls against one TorchServe."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics):
        self.settings = settings
        self.metrics = metrics
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
            ),
        )
        self.tokens = TokenStore(
            settings.ts_key_file, settings.ts_management_url, self.client, settings.token_refresh_margin_s
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(self, kind: str, method: str, url: str, **kwargs) -> httpx.Response:
        """Send with the current key; on a refused key, refresh it and send once more."""
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
                    {"Retry-After": str(self.settings.retry_after_s)},
                ) from exc
            if not _is_token_refusal(response) or attempt:
                return response
            await self.tokens.refresh(kind, stale=key)
        raise AssertionError("unreachable")

    async def predict(self, image: bytes, version: str | None, params: dict[str, str]) -> Prediction:
        path = f"/predictions/{self.settings.model_name}" + (f"/{version}" if version else "")
        headers = {"Content-Type": "application/octet-stream", **{f"X-Yolo-{k}": v for k, v in params.items()}}
        started = time.perf_counter()
        url = self.settings.ts_inference_url + path
        response = await self._call("inference", "POST", url, content=image, headers=headers)
        if worker_died(response):
            self.metrics.upstream_retries.inc()
            response = await self._call("inference", "POST", url, content=image, headers=headers)
        upstream_ms = (time.perf_counter() - started) * 1000
        return Prediction(response.status_code, self._prediction_body(response, version), upstream_ms)

    def _prediction_body(self, response: httpx.Response, version: str | None) -> dict:
        """The handler's JSON, or an ``APIError`` that says what TorchServe itself refused."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("status") in ("success", "error"):
            return body
        text = body.get("message", response.text[:200]) if isinstance(body, dict) else response.text[:200]
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if response.status_code == 404:
            what = f"version {version} of model" if version else "model"
            raise APIError(404, "model_not_found", f"{what} {self.settings.model_name!r} is not loaded: {text}")
        if response.status_code == 413:
            raise APIError(413, "file_too_large", f"TorchServe refused the upload size: {text}")
        if response.status_code == 503 and "has no worker" in text:
            # TorchServe gives this one answer both when no worker is ready and when its job queue is full.
            raise APIError(
                503,
                "no_capacity",
                f"TorchServe cannot take the request now (no ready worker or full queue): {text}",
                retry,
            )
        if response.status_code in (408, 504):
            raise APIError(504, "upstream_timeout", f"TorchServe timed out: {text}")
        raise APIError(502, "inference_failed", f"TorchServe answered {response.status_code}: {text}")

    async def handler_metadata(self, version: str) -> dict:
        """What the version's handler says of itself (task, classes); empty when it cannot say."""
        url = f"{self.settings.ts_management_url}/models/{self.settings.model_name}/{version}"
        response = await self._call("management", "GET", url, params={"customized": "true"})
        try:
            metadata = response.json()[0]["customizedMetadata"]
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        except (ValueError, KeyError, IndexError, TypeError):
            return {}
        return metadata if isinstance(metadata, dict) else {}

    async def describe(self, version: str | None = None, all_versions: bool = False) -> list[dict]:
        """Management API's description of the model (default version, one version, or all)."""
        suffix = "/all" if all_versions else (f"/{version}" if version else "")
        url = f"{self.settings.ts_management_url}/models/{self.settings.model_name}{suffix}"
        response = await self._call("management", "GET", url)
        if response.status_code == 404:
            raise APIError(
                503, "model_not_loaded", f"model {self.settings.model_name!r} is not registered in TorchServe"
            )
        if response.status_code != 200:
            raise APIError(503, "torchserve_unavailable", f"management API answered {response.status_code}")
        return response.json()
