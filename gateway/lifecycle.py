"""Shutting down without losing a request: SIGTERM drains before it stops.

On SIGTERM the gateway turns not-ready at once (``/health`` answers 503 ``draining``) while it
goes on answering every request that reaches it, each with ``Connection: close`` so a balancer's
kept-alive connections end cleanly instead of being cut. After ``GATEWAY_SHUTDOWN_DRAIN_S`` (long
enough for the balancer's health check to see the 503) it stops accepting connections and
exits once its in-flight requests have finished, at most ``GATEWAY_SHUTDOWN_TIMEOUT_S`` later
(uvicorn's graceful shutdown, see ``gateway.serve``).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Lifecycle:
    """Whether the process is draining, and since when (monotonic seconds)."""

    def __init__(self) -> None:
        self.draining_since: float | None = None

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def drain(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()


class CloseWhenDraining:
    """Pure ASGI middleware: while draining, every answer ends its connection (``Connection: close``)."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle):
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.lifecycle.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
