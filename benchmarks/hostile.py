"""Hostile clients for the tests, the soak and the container test: files and connections that break servers."""

from __future__ import annotations

import socket
import struct
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
