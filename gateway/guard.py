"""Upload hardening as pure ASGI middleware: what receiving a body may cost, and readable early answers.

Uvicorn has no time limit for a request body, so a client that announces 5 MB and sends a
byte every few seconds would hold its connection (and a file descriptor) forever. Here every
``receive`` of the body runs against three limits, as nginx's ``client_body_timeout`` and
Apache's ``mod_reqtimeout`` ``MinRate`` do:

- one deadline for the whole body (``body_timeout_s``): past it 408 ``body_timeout``;
- after a grace period (``upload_grace_s``), a minimum average rate (``min_upload_rate``):
  a body under it is answered 408 ``body_too_slow``;
- after the grace, at most ``max_slow_uploads_per_address`` bodies still arriving from one
  client address: one more is answered 429 ``too_many_slow_uploads``.

Each of these closes the connection. Bodies still arriving hold no slot of the inference
path (``gateway.limits.PendingPredictions`` counts only complete ones), so slow senders cannot
crowd out requests whose body is complete; what each costs in memory is bounded by spooling
(``gateway.uploads``) and uvicorn's flow control.

An answer given before the body was read (413, 401, 429) is otherwise followed by closing a
socket with unread data, which the kernel turns into a reset: clients that write the whole
body before reading (Python's urllib) then see "connection reset" instead of the answer. So,
as nginx's lingering close does, the rest of a declared body is read and discarded first,
within a size and a time bound.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from functools import cached_property
from typing import NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError
from gateway.limits import client_address
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings


def _header(scope: Scope, name: bytes) -> bytes:
    return next((value for key, value in scope["headers"] if key == name), b"")


def has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return (length.isdigit() and int(length) > 0) or bool(_header(scope, b"transfer-encoding"))


class _Body:
    """One request's body stream, read against its limits; knows how much of it is still unread."""

    def __init__(self, scope: Scope, receive: Receive, guard: UploadGuard):
        self._receive = receive
        self._scope = scope
        self._guard = guard
        self._settings = settings = guard.settings
        self._started_at = asyncio.get_running_loop().time()
        self._deadline = self._started_at + settings.body_timeout_s
        length = _header(scope, b"content-length")
        self.declared = int(length) if length.isdigit() else None
        self.awaits_continue = _header(scope, b"expect").lower() == b"100-continue"
        self.received = 0
        self.started = False
        self.complete = False
        self.lingering = False  # counted against its address: still arriving after the grace
        self.cut: str | None = None  # why the gateway stopped reading it

    @cached_property
    def address(self) -> str:
        """The client's address, needed only once a body is still arriving after the grace."""
        return client_address(self._scope, self._settings.trusted_proxy_networks)

    async def receive(self) -> Message:
        """The app's ``receive``: a message, or the APIError of the first limit the body breaks."""
        loop = asyncio.get_running_loop()
        while not self.complete:
            check_at = self._next_check()
            try:
                return self._count(await asyncio.wait_for(self._receive(), max(check_at - loop.time(), 0)))
            except TimeoutError:
                self._check(loop.time())
        return await self._receive()

    def _next_check(self) -> float:
        """When the body, if nothing more arrives, next breaks or reaches a limit."""
        settings = self._settings
        grace_end = self._started_at + settings.upload_grace_s
        checks = [self._deadline]
        if settings.max_slow_uploads_per_address and not self.lingering:
            checks.append(grace_end)
        if settings.min_upload_rate:
            checks.append(max(grace_end, self._started_at + self.received / settings.min_upload_rate))
        return min(checks)

    def _check(self, now: float) -> None:
        settings = self._settings
        elapsed = now - self._started_at
        if now >= self._deadline:
            self._stop(
                "body_timeout",
                APIError(
                    408,
                    "body_timeout",
                    f"The request body did not arrive within {settings.body_timeout_s:g} s; send it faster.",
                ),
            )
        too_slow = settings.min_upload_rate and self.received <= settings.min_upload_rate * elapsed
        if too_slow and elapsed >= settings.upload_grace_s:
            rate = self.received / max(elapsed, 1e-9)
            self._stop(
                "body_too_slow",
                APIError(
                    408,
                    "body_too_slow",
                    f"The request body arrived at {rate:.0f} bytes/s, under the minimum of "
                    f"{settings.min_upload_rate} bytes/s; send it faster.",
                ),
            )
        if elapsed >= settings.upload_grace_s and not self.lingering and settings.max_slow_uploads_per_address:
            if not self._guard.linger(self.address):
                self._stop(
                    "too_many_slow_uploads",
                    APIError(
                        429,
                        "too_many_slow_uploads",
                        f"{settings.max_slow_uploads_per_address} uploads from {self.address} are still arriving "
                        f"after {settings.upload_grace_s:g} s, the most one address may have; finish those first.",
                        {"Retry-After": str(settings.retry_after_s)},
                    ),
                )
            self.lingering = True

    def _stop(self, reason: str, error: APIError) -> NoReturn:
        self.cut = reason
        raise error

    def _count(self, message: Message) -> Message:
        self.started = True
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True  # http.disconnect: nothing more will come
        return message

    def worth_draining(self) -> bool:
        """Drain only a declared remainder within the bound that the client is already sending.

        A client waiting for ``100 Continue`` has sent nothing and reads the answer at once;
        a chunked body has no end we could promise to reach; a cut client had its chance.
        """
        if self.complete or self.cut or self.declared is None:
            return False
        if self.awaits_continue and not self.started:
            return False
        return self.declared - self.received <= self._settings.drain_max_bytes

    async def drain(self) -> None:
        """Read and discard the rest of the body, within ``drain_timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.drain_timeout_s
        while not self.complete and (remaining := deadline - loop.time()) > 0:
            try:
                self._count(await asyncio.wait_for(self._receive(), remaining))
            except TimeoutError:
                return


class UploadGuard:
    """Outer ASGI layer around requests that carry a body; requests without one pass straight through."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: GatewayMetrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.lingering: Counter[str] = Counter()  # client address -> its bodies still arriving after the grace

    def linger(self, address: str) -> bool:
        """Count one more slow body against ``address``; False when it already has its most."""
        if self.lingering[address] >= self.settings.max_slow_uploads_per_address:
            return False
        self.lingering[address] += 1
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        body = _Body(scope, receive, self)
        try:
            await self.app(scope, body.receive, self._answer_after_body(body, send))
        finally:
            if body.lingering:
                self.lingering[body.address] -= 1
                if not self.lingering[body.address]:
                    del self.lingering[body.address]
            if body.cut:
                self.metrics.cut_uploads.labels(body.cut).inc()

    def _answer_after_body(self, body: _Body, send: Send) -> Send:
        """Before the answer starts: drain what the client is still sending, or say the connection will close."""

        async def send_after_body(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.complete:
                if body.worth_draining():
                    await body.drain()
                if not body.complete:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return send_after_body
