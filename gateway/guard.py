"""Upload hardening as pure ASGI middleware: a body deadline, a cap on concurrent uploads, readable early answers.

Uvicorn has no time limit for a request body, so a client that announces 5 MB and sends a
byte every few seconds would hold its connection (and a file descriptor) forever. Here every
``receive`` of the body runs against one deadline; past it the request is answered 408 and
the connection closed. Uploads past ``max_concurrent_uploads`` are answered 503 at once.

An answer given before the body was read (413 on the declared size, 401, 503) is otherwise
followed by closing a socket with unread data, which the kernel turns into a reset: clients
that write the whole body before reading (Python's urllib) then see "connection reset"
instead of the answer. So, as nginx's lingering close does, the rest of a declared body is
read and discarded first, within a size and a time bound.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError, error_response
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings


def _header(scope: Scope, name: bytes) -> bytes:
    return next((value for key, value in scope["headers"] if key == name), b"")


def has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return (length.isdigit() and int(length) > 0) or bool(_header(scope, b"transfer-encoding"))


class _Body:
    """One request's body stream, read against the deadline; knows how much of it is still unread."""

    def __init__(self, scope: Scope, receive: Receive, settings: Settings):
        self._receive = receive
        self._settings = settings
        self._deadline = asyncio.get_running_loop().time() + settings.body_timeout_s
        length = _header(scope, b"content-length")
        self.declared = int(length) if length.isdigit() else None
        self.awaits_continue = _header(scope, b"expect").lower() == b"100-continue"
        self.received = 0
        self.started = False
        self.complete = False
        self.timed_out = False

    async def receive(self) -> Message:
        """The app's ``receive``: 408 once the whole body has taken longer than the deadline."""
        if self.complete:
            return await self._receive()
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            return self._count(await asyncio.wait_for(self._receive(), max(remaining, 0)))
        except TimeoutError:
            self.timed_out = True
            raise APIError(
                408,
                "body_timeout",
                f"The request body did not arrive within {self._settings.body_timeout_s:g} s; send it faster.",
            ) from None

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
        a chunked body has no end we could promise to reach; a slow client had its time.
        """
        if self.complete or self.timed_out or self.declared is None:
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
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        body = _Body(scope, receive, self.settings)
        send = self._answer_after_body(body, send)
        if self.active >= self.settings.max_concurrent_uploads:
            self.metrics.cut_uploads.labels("busy").inc()
            busy = error_response(
                503,
                "busy",
                f"The gateway is receiving {self.active} uploads, its limit; retry shortly.",
                {"Retry-After": str(self.settings.retry_after_s)},
            )
            await busy(scope, body.receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, body.receive, send)
        finally:
            self.active -= 1
            if body.timed_out:
                self.metrics.cut_uploads.labels("body_timeout").inc()

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
