"""Hostile clients for the tests, the soak and the container test: files and connections that break servers."""

from __future__ import annotations

import socket
import struct
import time
import zlib


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG declaring ``width`` x ``height`` pixels with a few bytes of data: a decompression bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def slow_upload_head(host: str, prefix: bytes = b"", path: str = "/predict", declared: int = 5_000_000) -> bytes:
    """The start of a multipart upload that announces ``declared`` bytes: headers, the file part's head, ``prefix``."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
        "Content-Type: multipart/form-data; boundary=slow\r\n\r\n--slow\r\n"
        'Content-Disposition: form-data; name="file"; filename="slow.jpg"\r\n\r\n'
    ).encode() + prefix


def trickle(host: str, port: int, head: bytes, drip: bytes, every_s: float, rounds: int) -> bytes | None:
    """A slow client: send ``head``, then ``drip`` every ``every_s`` for up to ``rounds`` rounds.

    Returns what the server sent before it closed the connection, or None if it never did.
    """
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(every_s)
        reply = b""
        for _ in range(rounds):
            try:
                sock.sendall(drip)
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return reply
            if not data:
                return reply
            reply += data
    return None


def greedy(
    url: str, data: bytes, per_s: float, seconds: float, headers: dict, source: str
) -> tuple[list[int], dict | None]:
    """A client posting ``data`` to ``url`` at ``per_s`` requests a second for ``seconds`` from ``source``.

    Returns the statuses it got, and its first 429's body and ``Retry-After``. Run it in a
    process of its own, so its work does not slow the client measured beside it.
    """
    import httpx  # here, not at the top: the other clients need only the standard library

    statuses, refusal = [], None
    until = time.monotonic() + seconds
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=60) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            response = client.post(url, files={"file": ("greedy.jpg", data)}, headers=headers)
            statuses.append(response.status_code)
            if response.status_code == 429 and refusal is None:
                refusal = {"body": response.json(), "retry_after": response.headers.get("Retry-After")}
            time.sleep(max(0.0, 1 / per_s - (time.monotonic() - started)))
    return statuses, refusal
