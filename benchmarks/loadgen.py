"""Steady concurrent traffic against the gateway, recording every answer.

Used by the redeploy tests and by ``make report`` to prove that a deploy or rollback
under load drops no request, and to show which version answered when.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import httpx

from operations.stack import wait_until


@dataclass
class Answer:
    sent: float
    done: float
    status: int
    version: str | None
    served_by: str | None = None  # the balancer's X-Served-By, where one sits in front


class Load:
    """``clients`` threads posting the images to ``path`` (``/predict``: the default model) until the block ends."""

    def __init__(self, gateway_url: str, images: list[Path], clients: int = 8, path: str = "/predict"):
        self.url = f"{gateway_url}{path}"
        self.images = [(p.name, p.read_bytes()) for p in images]
        self.clients = clients
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(clients)

    def __enter__(self) -> Load:
        self.futures = [self.pool.submit(self._client, offset) for offset in range(self.clients)]
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for future in self.futures:
            future.result()
        self.pool.shutdown()

    def _client(self, offset: int) -> None:
        shift = offset % len(self.images)
        images = cycle(self.images[shift:] + self.images[:shift])
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                name, data = next(images)
                sent = time.monotonic()
                try:
                    response = client.post(self.url, files={"file": (name, data)})
                    status = response.status_code
                    version = response.json()["model"]["version"] if status == 200 else None
                    if status == 200 and response.headers["X-Model-Version"] != version:
                        status = -1  # a contract break counts as a failure
                    served_by = response.headers.get("X-Served-By")
                except httpx.HTTPError:
                    status, version, served_by = 0, None, None
                self.answers.append(Answer(sent, time.monotonic(), status, version, served_by))

    def wait_for(self, count: int, after: float = 0.0) -> None:
        """Until ``count`` more requests, sent after ``after``, have been answered."""
        wait_until(lambda: sum(a.sent > after for a in self.answers) >= count, "load", 120)

    def versions(self, sent_after: float = 0.0, done_before: float = float("inf")) -> set[str | None]:
        return {a.version for a in self.answers if a.sent > sent_after and a.done < done_before}

    def statuses(self) -> Counter:
        return Counter(a.status for a in self.answers)
