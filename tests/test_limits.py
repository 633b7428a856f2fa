"""Rate limits and client addresses, without a server: token buckets, trusted proxies, settings, one-line errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from gateway.limits import PendingPredictions, TokenBuckets, client_address
from gateway.main import create_app
from gateway.settings import Settings
from tests.helpers import ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes back every 1/rate s
    assert buckets.take("b") == 0.0, "another client has its own bucket"
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 60
    assert [buckets.take("a") for _ in range(4)][-1] > 0, "a bucket refills to its burst, no further"


def test_a_batch_takes_a_token_an_image_and_a_refused_one_takes_none():
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=4, clock=clock)
    assert buckets.take("a", 3) == 0.0
    assert buckets.take("a", 3) == pytest.approx(2.0)
    assert buckets.take("a", 1) == 0.0, "the refused batch spent nothing"


def test_a_batch_larger_than_the_burst_waits_for_a_full_bucket_and_leaves_it_in_debt():
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=4, clock=clock)
    buckets.take("a", 2)
    assert buckets.take("a", 9) == pytest.approx(2.0), "told when the bucket is full, not refused forever"
    clock.now += 2
    assert buckets.take("a", 9) == 0.0
    assert buckets.take("a", 1) == pytest.approx(6.0), "the 5 tokens of debt are paid back at the rate first"


def test_buckets_of_clients_that_went_quiet_are_forgotten(monkeypatch):
    monkeypatch.setattr("gateway.limits.MAX_IDLE_BUCKETS", 10)
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock)
    for i in range(10):
        buckets.take(f"old {i}")
    clock.now += 5
    buckets.take("new 1")
    buckets.take("new 2")
    assert set(buckets._buckets) == {"new 1", "new 2"}


def scope(peer: str, forwarded: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return {"type": "http", "client": (peer, 5000), "headers": headers}


def networks(text: str):
    return Settings(trusted_proxies=text).trusted_proxy_networks


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", "198.51.100.1", "", "203.0.113.9"),  # no proxies trusted: the header is ignored
        ("203.0.113.9", "198.51.100.1", "10.0.0.0/8", "203.0.113.9"),  # the peer is not a trusted proxy
        ("10.0.0.5", "198.51.100.1", "10.0.0.0/8", "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.1", "10.0.0.0/8", "198.51.100.1"),  # a client-chosen entry stays unread
        ("10.0.0.5", "198.51.100.1, 10.0.0.7", "10.0.0.0/8", "198.51.100.1"),  # through two trusted proxies
        ("10.0.0.5", "garbage, 10.0.0.7", "10.0.0.0/8", "10.0.0.7"),
        ("10.0.0.5", None, "10.0.0.0/8", "10.0.0.5"),
        ("::1", "2001:db8::1", "::1", "2001:db8::1"),
    ],
)
def test_the_client_address_believes_only_trusted_proxies(peer, forwarded, trusted, expected):
    assert client_address(scope(peer, forwarded), networks(trusted)) == expected


def test_the_pending_cap_refuses_past_its_limit_and_frees_on_exit():
    refused = []
    pending = PendingPredictions(1, 2, lambda: refused.append(1))
    with pending.hold():
        with pytest.raises(Exception) as caught, pending.hold():
            pass
        assert (caught.value.status, caught.value.code, caught.value.headers) == (503, "busy", {"Retry-After": "2"})
    with pending.hold():
        assert pending.count == 1
    assert pending.count == 0 and refused == [1]


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate(tmp_path):
    """The gateway app itself: 429 comes before TorchServe is asked (none runs here), per forwarded address."""
    settings = Settings(
        state_store=str(tmp_path / "state.db"),
        rate_limit_per_s=0.01,
        rate_limit_burst=1,
        trusted_proxies="127.0.0.1",
        ts_inference_url="http://127.0.0.1:9",
        connect_timeout_s=0.5,
    )

    async def statuses(peer: str, forwarded: list[str]) -> list[int]:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://g") as client,
        ):
            files = {"file": ("a.jpg", b"\xff\xd8 not really")}
            return [
                (await client.post("/predict", files=files, headers={"X-Forwarded-For": who})).status_code
                for who in forwarded
            ]

    proxied = asyncio.run(statuses("127.0.0.1", ["198.51.100.1", "198.51.100.1", "198.51.100.2"]))
    assert proxied[1] == 429 and 429 not in (proxied[0], proxied[2]), proxied
    direct = asyncio.run(statuses("203.0.113.9", ["198.51.100.1", "198.51.100.2"]))
    assert direct[1] == 429, "a client that is not a trusted proxy cannot pick a fresh address"


def test_a_wrong_limit_setting_stops_the_gateway_with_one_line():
    env = {**os.environ, "GATEWAY_TRUSTED_PROXIES": "10.0.0.1, proxy-a", "GATEWAY_MIN_UPLOAD_RATE": "-5"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.serve", "--port", "9"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "GATEWAY_TRUSTED_PROXIES" in result.stderr and "'proxy-a' is not an address" in result.stderr
    assert "GATEWAY_MIN_UPLOAD_RATE" in result.stderr


def test_an_unusable_spool_directory_stops_the_gateway_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {**os.environ, "GATEWAY_SPOOL_DIR": str(blocker / "spool"), "GATEWAY_STATE_STORE": str(tmp_path / "s.db")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.serve", "--port", "9"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot spool uploads in {blocker / 'spool'}" in result.stderr and "GATEWAY_SPOOL_DIR" in result.stderr


def test_the_readme_documents_every_gateway_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`GATEWAY_{name.upper()}`" not in readme]
    assert not missing, f"README's settings table lacks {missing}"
