"""Run the gateway: ``python -m gateway.serve --host 127.0.0.1 --port 8000``.

Uvicorn itself, with one addition it lacks: a deadline for a request's headers. Headers are
parsed by h11 inside uvicorn before the app sees anything, so no ASGI layer can time them;
without this, a client that trickles a header line every few seconds holds its connection
and file descriptor forever. The body's deadline is the app's (``gateway.guard``).
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.settings import Settings


class HeaderDeadlineProtocol(H11Protocol):
    """h11 connection that is closed when a request's headers are not complete within ``header_timeout_s``.

    The clock starts when the connection opens and again when an answer completes (the next
    request's headers on a kept-alive connection); a request whose headers arrived in time
    is left alone.
    """

    header_timeout_s = Settings.model_fields["header_timeout_s"].default
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

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
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow, self.cycle)

    def _headers_too_slow(self, cycle_when_armed: object) -> None:
        if self.cycle is cycle_when_armed and not self.transport.is_closing():
            self.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    HeaderDeadlineProtocol.header_timeout_s = Settings().header_timeout_s
    uvicorn.run(
        "gateway.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        http=HeaderDeadlineProtocol,
        access_log=False,
    )


if __name__ == "__main__":
    main()
