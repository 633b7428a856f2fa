"""Who a client is, how fast it may ask, and how many predictions may wait for TorchServe at once.

- ``client_address``: the peer's address, or, when the peer is a configured trusted proxy,
  the address that proxy (and any trusted proxy before it) saw in ``X-Forwarded-For``.
  A client that is not a trusted proxy cannot choose its address by sending the header.
- ``TokenBuckets``: a token bucket per client (API key, or address when keys are off):
  ``rate`` tokens a second up to ``burst``; a prediction spends one per image (a batch larger
  than the burst waits for a full bucket and leaves it in debt).
- ``PendingPredictions``: the cap that answers 503 ``busy``. It counts requests whose body is
  complete and that wait for or are in TorchServe; a body still arriving never holds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network, IPv6Network, ip_address

from starlette.types import Scope

from gateway.errors import APIError

Networks = tuple[IPv4Network | IPv6Network, ...]
MAX_IDLE_BUCKETS = 10_000  # past this many clients, buckets that have refilled are forgotten


def _trusted(address: str, networks: Networks) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def client_address(scope: Scope, networks: Networks) -> str:
    """The client's address: the peer's, or what trusted proxies say it was (rightmost untrusted hop)."""
    address = (scope.get("client") or ("unknown", 0))[0]
    if not networks or not _trusted(address, networks):
        return address
    forwarded = b",".join(value for key, value in scope["headers"] if key == b"x-forwarded-for")
    for hop in reversed(forwarded.decode("latin-1").split(",")):
        hop = hop.strip()
        try:
            ip_address(hop)
        except ValueError:
            break  # a garbled entry: believe nothing further left of it
        address = hop
        if not _trusted(address, networks):
            break
    return address


class TokenBuckets:
    """One token bucket per client identity, refilled lazily when the client asks."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, when)

    def take(self, identity: str, tokens: int = 1) -> float:
        """Spend ``tokens`` and answer 0, or spend nothing and answer the seconds until they would be there.

        A batch larger than the burst goes when the bucket is full and leaves it in debt, so it
        is neither refused forever nor a way around the rate.
        """
        now = self._clock()
        held, when = self._buckets.get(identity, (float(self.burst), now))
        held = min(float(self.burst), held + (now - when) * self.rate)
        needed = min(tokens, self.burst)
        if held >= needed:
            self._buckets[identity] = (held - tokens, now)
            if len(self._buckets) > MAX_IDLE_BUCKETS:
                self._forget_full(now)
            return 0.0
        self._buckets[identity] = (held, now)
        return (needed - held) / self.rate

    def _forget_full(self, now: float) -> None:
        """A bucket that has refilled is the same as no bucket: drop those, so memory follows active clients."""
        full = [who for who, (held, when) in self._buckets.items() if held + (now - when) * self.rate >= self.burst]
        for who in full:
            del self._buckets[who]


def rate_limited(wait_s: float, rate: float, burst: int, who: str) -> APIError:
    return APIError(
        429,
        "rate_limited",
        f"{who} may send {rate:g} predictions/s (bursts of {burst}); retry in {wait_s:.1f} s.",
        {"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


class PendingPredictions:
    """Requests waiting for or in TorchServe; past ``limit`` a new one is answered 503 at once."""

    def __init__(self, limit: int, retry_after_s: int, on_refused: Callable[[], None] = lambda: None):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.on_refused = on_refused
        self.count = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.count >= self.limit:
            self.on_refused()
            raise APIError(
                503,
                "busy",
                f"The gateway has {self.count} predictions waiting for TorchServe, its limit; retry shortly.",
                {"Retry-After": str(self.retry_after_s)},
            )
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
