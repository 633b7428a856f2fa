"""The operator scripts' handle on TorchServe: the gateway's own API client, driven synchronously.

``deploy.py``, ``stack.py`` and the tests make one call after another, so they run the
gateway's ``TorchServeAPI`` (key file, token refresh on a refused key) on a private event
loop instead of keeping a second client with its own token handling. The loop runs in a
thread of its own, so a caller whose thread already runs a loop (Playwright's sync API does)
can use it too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import httpx

from gateway.errors import APIError
from gateway.torchserve import TorchServeAPI, ready_count

if TYPE_CHECKING:
    from scripts.stack import Stack


class TorchServeError(Exception):
    """TorchServe did not answer, or has not written its keys (it is not running, or still starting)."""


class TorchServe:
    """Synchronous management and inference calls on one stack's TorchServe; close it (or use ``with``)."""

    def __init__(self, stack: Stack, timeout: float = 60):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="torchserve-client", daemon=True)
        self._thread.start()
        self.api = TorchServeAPI(
            stack.inference_url, stack.management_url, stack.key_file, httpx.Timeout(timeout, connect=5)
        )

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
        except APIError as exc:
            raise TorchServeError(exc.message) from exc

    def management(self, method: str, model: str, suffix: str = "", **kwargs) -> httpx.Response:
        """A management call about ``model``; ``suffix`` is ``/VERSION``, ``/all``, ``/VERSION/set-default``."""
        return self._run(self.api.management(method, model, suffix, **kwargs))

    def register(self, **params: str | int) -> httpx.Response:
        return self._run(self.api.call("management", "POST", f"{self.api.management_url}/models", params=params))

    def predict(self, model: str, version: str | None, image: bytes) -> httpx.Response:
        return self._run(self.api.predict(model, version, image, {"Content-Type": "application/octet-stream"}))

    def model_names(self) -> list[str]:
        return self._run(self.api.model_names())

    def ready_workers(self, model: str, version: str | None = None) -> int:
        response = self.management("GET", model, f"/{version}" if version else "")
        return ready_count(response.json()) if response.status_code == 200 else 0

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.api.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> TorchServe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
