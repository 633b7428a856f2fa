"""Run the gateway: ``python -m gateway.serve --host 127.0.0.1 --port 8000``.

Uvicorn itself, with one addition it lacks: a deadline for a request's headers. Headers are
parsed by h11 inside uvicorn before the app sees anything, so no ASGI layer can time them;
without this, a client that trickles a header line every few seconds holds its connection
and file descriptor forever. The body's deadline is the app's (``gateway.guard``). And a
shutdown that drains: on SIGTERM the gateway reports not-ready and keeps serving for
``GATEWAY_SHUTDOWN_DRAIN_S`` before uvicorn's graceful shutdown (``gateway.lifecycle``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
from types import FrameType

import uvicorn
from pydantic import ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.lifecycle import Lifecycle
from gateway.main import create_app
from gateway.settings import Settings
from gateway.state import StateError, open_store
from serving.yolo_contract import error_body

REFUSED_LINGER_S = 1.0  # how long a refused connection's request is read and discarded before closing


def _busy_response(settings: Settings) -> bytes:
    """The whole 503 a connection past the cap gets, written before its request is read."""
    body = json.dumps(
        error_body(
            "too_many_connections",
            f"The gateway holds {settings.max_client_connections} connections, its limit; retry shortly.",
        )
    ).encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"retry-after: {settings.retry_after_s}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeaderDeadlineProtocol(H11Protocol):
    """h11 connection with a header deadline, refused with 503 past ``max_client_connections``.

    The header clock starts when the connection opens and again when an answer completes (the
    next request's headers on a kept-alive connection); a request whose headers arrived in
    time is left alone. Each open connection holds a file descriptor, so their number is
    capped before they can exhaust the process's limit.
    """

    settings = Settings.model_construct()  # defaults until main() reads the environment
    busy_response = b""
    _header_timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_client_connections:
            # Answer, then keep discarding the request for a moment: closing on unread bytes
            # would reset the connection and lose the answer.
            self._refused = True
            transport.write(self.busy_response)
            self.loop.call_later(REFUSED_LINGER_S, transport.close)
            return
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def on_response_complete(self) -> None:
        self._arm_header_deadline()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.settings.header_timeout_s, self._headers_too_slow, self.cycle)

    def _headers_too_slow(self, cycle_when_armed: object) -> None:
        if self.cycle is cycle_when_armed and not self.transport.is_closing():
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """Uvicorn's server, except that the first SIGTERM (or SIGINT) drains before uvicorn stops.

    Draining marks ``lifecycle`` at once (``/health`` 503, ``Connection: close`` on answers) and
    keeps serving for ``drain_s``; then uvicorn's own graceful shutdown stops accepting
    connections and waits for the in-flight requests, bounded by its ``timeout_graceful_shutdown``.
    A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_s = drain_s
        self.drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.lifecycle.draining
        self.lifecycle.drain()
        if not (first and self.drain_s > 0):
            super().handle_exit(sig, frame)
            return
        name = signal.Signals(sig).name
        print(f"gateway: {name}, draining for {self.drain_s:g} s before shutting down", file=sys.stderr, flush=True)
        self._captured_signals.append(sig)  # re-raised once uvicorn has shut down, as for its own signals
        self.drain_timer = threading.Timer(self.drain_s, self._stop)
        self.drain_timer.daemon = True
        self.drain_timer.start()

    def _stop(self) -> None:
        self.should_exit = True


def _settings_or_exit() -> Settings:
    """The environment's settings, checked where a mistake would otherwise surface on a request: one line each."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"GATEWAY_{'.'.join(map(str, error['loc'])).upper().removeprefix('GATEWAY_')}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"error: {problems}")
    try:
        open_store(settings.state_store).close()
    except StateError as exc:
        sys.exit(f"error: {exc} (set GATEWAY_STATE_STORE to a writable file or a redis:// URL)")
    if settings.spool_dir is not None:
        try:
            settings.spool_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=settings.spool_dir).close()
        except OSError as exc:
            sys.exit(f"error: cannot spool uploads in {settings.spool_dir}: {exc.strerror} (set GATEWAY_SPOOL_DIR)")
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = _settings_or_exit()
    HeaderDeadlineProtocol.settings = settings
    HeaderDeadlineProtocol.busy_response = _busy_response(settings)
    lifecycle = Lifecycle()
    config = uvicorn.Config(
        create_app(settings, lifecycle),
        host=args.host,
        port=args.port,
        http=HeaderDeadlineProtocol,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
    )
    DrainingServer(config, lifecycle, settings.shutdown_drain_s).run()


if __name__ == "__main__":
    main()
