"""``GET /``: the try-the-model page, a static HTML file with its script and stylesheet.

Served by the gateway itself so the page and the API share an origin (no CORS) and the page
works wherever the gateway runs, offline included. Kept out of the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gateway.errors import APIError

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# Everything the page loads comes from the gateway; blob: is the uploaded picture shown under the boxes.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    """Only the page's own files: a fixed list, so no path ever reaches the file system unchecked."""
    if name not in ASSETS:
        raise APIError(404, "not_found", f"No static file {name!r}.")
    return FileResponse(STATIC / name, media_type=f"{ASSETS[name]}; charset=utf-8", headers=SECURITY_HEADERS)
