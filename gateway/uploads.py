"""Streaming multipart reader that enforces the upload limit while the bytes arrive.

Starlette's form parser spools a whole upload before the app sees it; here every chunk is
counted as it streams in, so an oversized upload is refused with 413 after at most one
limit's worth of bytes, never after reading it all. The image bytes are not decoded.

While a body arrives, each file part is held in memory up to ``buffer_bytes`` and spooled to
a temporary file in ``spool_dir`` past it, so many uploads arriving at once cost disk, not
memory. The bytes are read back only once the whole body is there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import APIError

# Room for multipart boundaries and part headers on top of the file bytes themselves.
OVERHEAD_BYTES = 16 * 1024
PER_FILE_OVERHEAD_BYTES = 1024


@dataclass
class UploadedFile:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class _Collector:
    """Parser callbacks: gather file parts, refusing what breaks the rules as soon as it is seen."""

    fields: frozenset[str]
    max_file_bytes: int
    max_files: int
    buffer_bytes: int
    spool_dir: Path | None
    parts: list[tuple[str, str | None, str | None, tempfile.SpooledTemporaryFile]] = field(default_factory=list)
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _header_name: bytes = b""
    _header_value: bytes = b""
    _spool: tempfile.SpooledTemporaryFile | None = None
    _size: int = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add_name(data[start:end]),
            "on_header_value": lambda data, start, end: self._add_value(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._spool, self._size = {}, None, 0

    def _add_name(self, data: bytes) -> None:
        self._header_name += data

    def _add_value(self, data: bytes) -> None:
        self._header_value += data

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name, self._header_value = b"", b""

    def _disposition(self) -> tuple[str, str | None]:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        return name, filename.decode("utf-8", "replace") if filename is not None else None

    def _headers_finished(self) -> None:
        name, _ = self._disposition()
        if name not in self.fields:
            expected = " or ".join(repr(f) for f in sorted(self.fields))
            raise APIError(400, "unknown_field", f"Unexpected form field {name!r}; send the image in field {expected}.")
        if len(self.parts) >= self.max_files:
            raise APIError(400, "too_many_files", f"At most {self.max_files} files are accepted per request.")
        # closed in close(), once the request is read or refused
        self._spool = tempfile.SpooledTemporaryFile(self.buffer_bytes, dir=self.spool_dir)  # noqa: SIM115

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._size > self.max_file_bytes:
            raise APIError(413, "file_too_large", f"Each file may be at most {self.max_file_bytes} bytes.")
        self._spool.write(data[start:end])

    def _part_end(self) -> None:
        name, filename = self._disposition()
        content_type = self._headers.get(b"content-type")
        self.parts.append((name, filename, content_type.decode("latin-1") if content_type else None, self._spool))
        self._spool = None

    def files(self) -> list[UploadedFile]:
        """The complete parts, read back from their spools."""
        files = []
        for name, filename, content_type, spool in self.parts:
            spool.seek(0)
            files.append(UploadedFile(name, filename, content_type, spool.read()))
        return files

    def close(self) -> None:
        for *_, spool in self.parts:
            spool.close()
        if self._spool is not None:
            self._spool.close()


async def read_files(
    request: Request,
    fields: frozenset[str],
    max_file_bytes: int,
    max_files: int,
    buffer_bytes: int = 256 * 1024,
    spool_dir: Path | None = None,
) -> list[UploadedFile]:
    """Read the multipart files of ``request``; 400/413 as soon as the stream breaks a rule."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise APIError(
            400,
            "expected_multipart",
            "Send the image as multipart/form-data in field 'file' (for example: curl -F file=@image.jpg URL).",
        )
    budget = max_files * (max_file_bytes + PER_FILE_OVERHEAD_BYTES) + OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > budget:
        raise APIError(
            413, "file_too_large", f"The upload is {declared} bytes; each file may be at most {max_file_bytes}."
        )
    collector = _Collector(fields, max_file_bytes, max_files, buffer_bytes, spool_dir)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > budget:
                raise APIError(413, "file_too_large", f"The upload exceeds {budget} bytes; stopped reading it.")
            parser.write(chunk)
        parser.finalize()
        files = collector.files()
    except FormParserError as exc:
        raise APIError(400, "malformed_multipart", f"The multipart body could not be parsed: {exc}") from exc
    except OSError as exc:
        raise APIError(
            503,
            "spool_unavailable",
            f"The gateway could not spool the upload ({exc.strerror}); retry shortly.",
            {"Retry-After": "5"},
        ) from exc
    finally:
        collector.close()
    if not files:
        raise APIError(400, "missing_file", "No file was uploaded; send the image in form field 'file'.")
    for upload in files:
        if not upload.data:
            raise APIError(400, "empty_file", f"The uploaded file {upload.filename or upload.field!r} is empty.")
    return files
