"""SIGTERM drains: the gateway turns not-ready at once, answers what reaches it, then exits when done.

This is what lets a balancer (HAProxy in the Swarm stack) take a replica out before it goes:
the health check sees 503 ``draining``, kept-alive connections are closed by the answers
themselves, and a request already in flight is answered, not cut.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from operations.stack import recorded_pid, wait_until
from tests.helpers import metric_total

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "dent_01.jpg"
DRAIN_S = 3.0


def multipart(data: bytes, boundary: str = "drainboundary") -> tuple[bytes, bytes, dict[str, str]]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="dent.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data, tail, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet (it has exited all the same)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def slow_body(first: bytes, last: bytes, seconds: float):
    """The upload in pieces over ``seconds``: a request that is still in flight when SIGTERM comes."""
    pieces = [first[i : i + 4096] for i in range(0, len(first), 4096)]
    for piece in pieces:
        yield piece
        time.sleep(seconds / len(pieces))
    yield last


def test_sigterm_reports_draining_answers_in_flight_and_new_requests_then_exits(extra_gateway):
    gateway = extra_gateway(GATEWAY_SHUTDOWN_DRAIN_S=str(DRAIN_S), GATEWAY_SHUTDOWN_TIMEOUT_S="20")
    url = gateway.gateway_url
    data = SAMPLE.read_bytes()
    assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
    first, last, headers = multipart(data)
    slow: dict[str, httpx.Response] = {}

    def send_slowly() -> None:
        body = slow_body(first, last, DRAIN_S + 1.5)
        slow["answer"] = httpx.post(f"{url}/predict", content=body, headers=headers, timeout=60)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    # The slow upload is being handled: the gateway counts it in flight, beside the /metrics request that asks.
    wait_until(lambda: metric_total(url, "gateway_in_flight_requests") >= 2, "the slow upload in flight", 10)
    pid = recorded_pid(gateway, "gateway")
    os.kill(pid, signal.SIGTERM)
    signalled = time.monotonic()

    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "draining", health.text
    assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    during = httpx.post(f"{url}/predict", files={"file": ("dent.jpg", data)}, timeout=60)
    assert during.status_code == 200, during.text
    assert during.headers["connection"] == "close", "a draining gateway ends each kept-alive connection"
    assert time.monotonic() - signalled < DRAIN_S, "the requests above must have been sent within the drain"

    sender.join(60)
    assert slow["answer"].status_code == 200, slow["answer"].text
    assert slow["answer"].json()["detections"], "the in-flight upload was answered in full"
    wait_until(lambda: exited(pid), "the gateway exited", 30)
    took = time.monotonic() - signalled
    assert DRAIN_S <= took < DRAIN_S + 15, f"exited {took:.1f} s after SIGTERM"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health/live", timeout=5)
