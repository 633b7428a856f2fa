"""Locust load profile for the gateway: single predictions, batches, and a realistic mix.

Run it through ``make loadtest`` (benchmarks/loadtest.py), which picks the user classes and
writes the CSV/HTML reports. Every request checks the body, not only the status code, so
a 200 with an error body still counts as a failure. ``GATEWAY_API_KEY`` is sent as
``X-API-Key`` when set (gateways started with ``GATEWAY_API_KEYS``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from locust import HttpUser, between, task

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.jpg"))
if not SAMPLES:
    raise RuntimeError("no samples/*.jpg to send")
IMAGES = [(path.name, path.read_bytes()) for path in SAMPLES]
BATCH_SIZE = 4


def _headers() -> dict[str, str]:
    key = os.environ.get("GATEWAY_API_KEY", "")
    return {"X-API-Key": key} if key else {}


class GatewayUser(HttpUser):
    """Shared request helpers; not a user class of its own."""

    abstract = True
    wait_time = between(0.05, 0.2)

    def predict_one(self) -> None:
        name, data = random.choice(IMAGES)
        with self.client.post(
            "/predict", files={"file": (name, data, "image/jpeg")}, headers=_headers(), catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif response.json().get("status") != "success":
                response.failure(f"not a success body: {response.text[:200]}")

    def predict_batch(self) -> None:
        files = [("files", (name, data, "image/jpeg")) for name, data in random.sample(IMAGES, BATCH_SIZE)]
        with self.client.post("/predict/batch", files=files, headers=_headers(), catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            results = response.json().get("results", [])
            failed = [r.get("http_status") for r in results if r.get("http_status") != 200]
            if len(results) != BATCH_SIZE or failed:
                response.failure(f"{len(results)} results, failed items {failed}")

    def check_health(self) -> None:
        with self.client.get("/health", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class SinglePredictUser(GatewayUser):
    """One image per request, the common client."""

    @task
    def single(self) -> None:
        self.predict_one()


class BatchPredictUser(GatewayUser):
    """Several images per request through /predict/batch."""

    @task
    def batch(self) -> None:
        self.predict_batch()


class MixedUser(GatewayUser):
    """Mostly single predictions, some batches, and the health checks a load balancer sends."""

    @task(8)
    def single(self) -> None:
        self.predict_one()

    @task(1)
    def batch(self) -> None:
        self.predict_batch()

    @task(2)
    def health(self) -> None:
        self.check_health()
