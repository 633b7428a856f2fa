"""The gateway's view of TorchServe: predictions and model descriptions, mapped to HTTP answers.

Calls go through the shared ``gateway.torchserve.TorchServeAPI`` (tokens, pooled connections).
A prediction is idempotent, so one that failed only because the worker running it died
(killed, out of memory) is sent once more; TorchServe queues it for whichever worker is
alive or restarted. TorchServe 0.12 reports most such jobs ("Worker died."), but drops
without an answer the ones its worker thread was still gathering into a batch when the
process died (``WorkerThread.run`` clears them with ``cleanJobs()`` while its ``req`` is still
null). Such a request runs into the upstream timeout; it is sent once more only when the
version's worker pids differ from the ones the gateway knew when it sent the request (it reads
them once per version before the first request, and again after each worker death), so a
timeout without a worker death, an overloaded TorchServe for one, is never retried. No other
failure is retried, a 4xx never.

For an unknown model name, TorchServe's own 404 is turned into one that names the models it
does serve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.torchserve import TorchServeAPI, handler_answer, torchserve_message, version_suffix, worker_pids

# TorchServe 0.12 answers the jobs of a worker process that died (killed, out of memory) with
# 507 {"type": "InternalServerException", "message": "Worker died."}; seen by killing workers under load.
WORKER_DIED = "Worker died."
UNKNOWN_MODEL = "unknown_model"  # the error code of a model name TorchServe does not serve


def worker_died(response: httpx.Response) -> bool:
    """TorchServe lost the worker process running this request: the request itself was fine."""
    return response.status_code >= 500 and WORKER_DIED in response.text


@dataclass
class Prediction:
    status: int
    body: dict
    upstream_ms: float


class Upstream:
    """The gateway's side of the TorchServe client: predictions with their one retry, and TorchServe's
    answers and descriptions turned into the gateway's HTTP answers (404s that name the served models)."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics):
        self.settings = settings
        self.metrics = metrics
        self.api = TorchServeAPI(
            settings.ts_inference_url,
            settings.ts_management_url,
            settings.ts_key_file,
            httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s),
            max_connections=settings.max_connections,
            refresh_margin_s=settings.token_refresh_margin_s,
            retry_after_s=settings.retry_after_s,
        )
        self._worker_pids: dict[tuple[str, str | None], frozenset[int]] = {}

    async def aclose(self) -> None:
        await self.api.aclose()

    async def predict(self, model: str, image: bytes, version: str | None, params: dict[str, str]) -> Prediction:
        headers = {"Content-Type": "application/octet-stream", **{f"X-Yolo-{k}": v for k, v in params.items()}}
        started = time.perf_counter()
        if (model, version) not in self._worker_pids:
            await self._read_worker_pids(model, version)
        sent_to = self._worker_pids.get((model, version))
        try:
            response = await self.api.predict(model, version, image, headers)
        except APIError as exc:
            if exc.code != "upstream_timeout" or sent_to is None:
                raise
            if await self._read_worker_pids(model, version) in (sent_to, None):
                raise
            self.metrics.upstream_retries.labels(model, "lost_with_worker").inc()
            response = await self.api.predict(model, version, image, headers)
        if worker_died(response):
            self.metrics.upstream_retries.labels(model, "worker_died").inc()
            response = await self.api.predict(model, version, image, headers)
            await self._read_worker_pids(model, version)
        upstream_ms = (time.perf_counter() - started) * 1000
        return Prediction(response.status_code, await self._prediction_body(response, model, version), upstream_ms)

    async def _prediction_body(self, response: httpx.Response, model: str, version: str | None) -> dict:
        """The handler's JSON, or an ``APIError`` that says what TorchServe itself refused."""
        body = handler_answer(response)
        if body is not None:
            return body
        text = torchserve_message(response, limit=200)
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if response.status_code == 404:
            await self.require_known(model)
            raise APIError(404, "model_not_found", f"version {version} of model {model!r} is not loaded: {text}")
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

    async def _read_worker_pids(self, model: str, version: str | None) -> frozenset[int] | None:
        """Read and remember the version's worker pids (a restarted worker has a new one); None for no such version."""
        description = await self.api.describe(model, version_suffix(version))
        if description is None:
            return None  # no such model or version: nothing to remember (names come from clients)
        pids = self._worker_pids[(model, version)] = worker_pids(description)
        return pids

    async def model_names(self) -> list[str]:
        return await self.api.model_names()

    async def default_version(self, model: str) -> str | None:
        """The version TorchServe answers ``model``'s unpinned requests with now; None for no such model.

        One management API call each time, nothing remembered: the answer cache asks it per lookup.
        """
        return await self.api.default_version(model)

    async def require_known(self, model: str) -> None:
        """A 404 that names the served models when ``model`` is not one of them."""
        known = await self.model_names()
        if model not in known:
            raise APIError(404, UNKNOWN_MODEL, f"no model {model!r}; this gateway serves: {', '.join(known) or 'none'}")

    async def handler_metadata(self, model: str, version: str) -> dict:
        """What the version's handler says of itself, without its drift reference (``drift_reference`` has it)."""
        metadata = await self.api.handler_metadata(model, version)
        metadata.pop("drift_reference", None)
        return metadata

    async def drift_reference(self, model: str, version: str) -> dict | None:
        """The drift reference the version's archive carries (``package_mar.sh --reference``), or None."""
        return (await self.api.handler_metadata(model, version)).get("drift_reference")

    async def describe(self, model: str, version: str | None = None, all_versions: bool = False) -> list[dict]:
        """Management API's description of a model (default version, one version, or all)."""
        description = await self.api.describe(model, "/all" if all_versions else version_suffix(version))
        if description is None:
            await self.require_known(model)
            raise APIError(404, "model_not_found", f"version {version} of model {model!r} is not loaded")
        return description
