"""The one TorchServe client: keys, inference and management calls, worker status, one error type.

TorchServe 0.12 keeps token authorization on: its inference and management keys live in
``key_file.json`` and expire (60 minutes by default), and a restart writes new ones. The
client re-reads the file when it changes, asks TorchServe for a fresh key (with the
never-expiring API key) shortly before expiry or when a key is refused, and sends once
more, so no call fails because a key went stale. Every failure to reach TorchServe, and every
management call it refuses, is a ``TorchServeError``. The gateway maps predictions to its HTTP
answers (``gateway.upstream``); the operations code (deploy, rollback, ``make up``) and the tests
drive the same client synchronously through ``BlockingTorchServe``. Nothing here needs torch.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway.errors import APIError


class TorchServeError(APIError):
    """TorchServe did not answer, has not written its keys, or refused a management call.

    An ``APIError`` so the gateway answers it as is (503 unavailable, 504 timeout, 502 refused);
    the operations code prints its message.
    """


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def handler_answer(response: httpx.Response) -> dict | None:
    """The handler's own answer (``status`` success or error) in a prediction response; None when
    TorchServe answered for itself (a refused key, an unknown model, a full queue)."""
    body = _json(response)
    return body if isinstance(body, dict) and body.get("status") in ("success", "error") else None


def torchserve_message(response: httpx.Response, limit: int = 300) -> str:
    """What TorchServe said: its JSON ``message``, else the start of the body."""
    body = _json(response)
    return str(body.get("message", response.text[:limit])) if isinstance(body, dict) else response.text[:limit]


def version_suffix(version: str | None) -> str:
    """The management path of one version, or of the default version when None."""
    return f"/{version}" if version else ""


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
            raise TorchServeError(503, "torchserve_unavailable", "TorchServe has not written its key file yet.")
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
                raise TorchServeError(503, "torchserve_unavailable", "TorchServe's key file has no API key.")
            try:
                response = await self._client.post(
                    f"{self._management_url}/token",
                    params={"type": kind},
                    headers={"Authorization": f"Bearer {api.value}"},
                )
            except httpx.HTTPError as exc:
                message = f"cannot refresh the TorchServe key: {exc}"
                raise TorchServeError(503, "torchserve_unavailable", message) from exc
            if response.status_code != 200:
                raise TorchServeError(503, "torchserve_unavailable", "TorchServe refused to issue a new key.")
            self._stamp = None
            self._reload()
            if kind not in self._keys:
                message = "TorchServe's key file has no key after a refresh."
                raise TorchServeError(503, "torchserve_unavailable", message)
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

        A TorchServe that does not answer is a ``TorchServeError`` (504 on a timeout, else 503).
        """
        headers = kwargs.pop("headers", {})
        for attempt in range(2):
            key = await self.tokens.get(kind)
            try:
                response = await self.client.request(
                    method, url, headers={**headers, "Authorization": f"Bearer {key}"}, **kwargs
                )
            except httpx.TimeoutException as exc:
                raise TorchServeError(
                    504, "upstream_timeout", f"TorchServe did not answer in time ({exc.__class__.__name__})."
                ) from exc
            except httpx.HTTPError as exc:
                raise TorchServeError(
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
        url = f"{self.inference_url}/predictions/{model}{version_suffix(version)}"
        return await self.call("inference", "POST", url, content=image, headers=headers)

    async def describe(self, model: str, suffix: str = "") -> list[dict] | None:
        """The management API's description (``suffix``: "", "/VERSION" or "/all"); None for no such model/version."""
        response = await self.management("GET", model, suffix)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise TorchServeError(503, "torchserve_unavailable", f"management API answered {response.status_code}")
        return response.json()

    async def default_version(self, model: str) -> str | None:
        description = await self.describe(model)
        return description[0]["modelVersion"] if description else None

    async def loaded_versions(self, model: str) -> list[str]:
        return [entry["modelVersion"] for entry in await self.describe(model, "/all") or []]

    async def workers(self, model: str, version: str | None = None) -> list[dict]:
        """The workers of one version (default: the default version), as the management API lists them."""
        description = await self.describe(model, version_suffix(version))
        return [w for entry in description or [] for w in entry.get("workers", [])]

    async def ready_workers(self, model: str, version: str | None = None) -> int:
        return ready_count(await self.describe(model, version_suffix(version)) or [])

    @staticmethod
    def _changed(what: str, response: httpx.Response, ok: tuple[int, ...] = (200,)) -> None:
        if response.status_code not in ok:
            message = torchserve_message(response)
            raise TorchServeError(502, "torchserve_refused", f"TorchServe refused to {what}: {message}")

    async def register(self, archive: str, model: str, **params: str | int) -> None:
        """Register ``archive`` (a file name in the model store) as ``model``, without waiting for its workers.

        ``synchronous=true`` would block the Netty thread that took the call until the workers
        are up, and that thread also carries inference connections, so it is never used here.
        """
        params = {"url": archive, "model_name": model, "synchronous": "false", **params}
        response = await self.call("management", "POST", f"{self.management_url}/models", params=params)
        self._changed(f"load {archive}", response, (200, 202))

    async def scale(self, model: str, version: str, workers: int) -> None:
        params = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
        response = await self.management("PUT", model, f"/{version}", params=params)
        self._changed(f"scale {model} {version}", response)

    async def set_default(self, model: str, version: str) -> None:
        response = await self.management("PUT", model, f"/{version}/set-default")
        self._changed(f"make {version} the default", response)

    async def unregister(self, model: str, version: str) -> None:
        """Unload one version; already gone is fine."""
        response = await self.management("DELETE", model, f"/{version}", timeout=120)
        self._changed(f"unload {version}", response, (200, 404))

    async def model_names(self) -> list[str]:
        """Every model registered, sorted, following the list's pages."""
        names: list[str] = []
        token: str | None = "0"
        while token is not None:
            response = await self.call(
                "management", "GET", f"{self.management_url}/models", params={"limit": 100, "next_page_token": token}
            )
            if response.status_code != 200:
                raise TorchServeError(503, "torchserve_unavailable", f"management API answered {response.status_code}")
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


class BlockingTorchServe:
    """The same client for code that makes one call after another (operations, tests): every
    coroutine method of ``TorchServeAPI`` is here as a plain method, e.g. ``ts.loaded_versions("yolo")``.

    The calls run on a private event loop in a thread of its own, so a caller whose thread
    already runs a loop (Playwright's sync API does) can use it too. Close it, or use ``with``.
    """

    def __init__(self, inference_url: str, management_url: str, key_file: Path, timeout: float = 60):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="torchserve-client", daemon=True)
        self._thread.start()
        self.api = TorchServeAPI(inference_url, management_url, key_file, httpx.Timeout(timeout, connect=5))

    def __getattr__(self, name: str) -> Callable:
        method = getattr(self.api, name)
        if not asyncio.iscoroutinefunction(method):
            raise AttributeError(name)

        def blocking(*args, **kwargs):
            return asyncio.run_coroutine_threadsafe(method(*args, **kwargs), self._loop).result()

        return blocking

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.api.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingTorchServe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def worker_pids(description: list[dict]) -> frozenset[int]:
    """The worker processes in a management API description; a restarted worker has a new pid
    (its ``startTime`` stays that of the first start)."""
    return frozenset(w["pid"] for entry in description for w in entry.get("workers", []) if w.get("pid", -1) > 0)


def ready_count(description: list[dict]) -> int:
    """READY workers in a management API description (of one version or of several)."""
    return sum(w.get("status") == "READY" for entry in description for w in entry.get("workers", []))
