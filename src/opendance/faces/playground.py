"""The playground at `/`: a page to type a prompt, watch the task run and play the video.

Plain HTML, CSS and JavaScript shipped in `opendance/static/` (no build step, no third-party
script). The page talks to the same `/v1` API as every client, with the key the person types
(kept in the browser's localStorage), and follows running tasks with the SSE endpoint through
`fetch` streaming (EventSource cannot send an Authorization header, and a key in a query string
would end up in access logs).

The page holds an API key, so it is served with a strict Content-Security-Policy: its own
scripts and styles only, no inline code, no framing.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from fastapi import APIRouter
from fastapi.responses import Response

from opendance.faces.errors import ApiError

router = APIRouter(tags=["Playground"], include_in_schema=False)

#: name under /static/ -> media type. Only these files are served.
ASSETS: Final[dict[str, str]] = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}

CSP: Final[str] = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' http: https: blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> bytes:
    return resources.files("opendance").joinpath("static", name).read_bytes()


@router.get("/", response_class=Response)
def playground() -> Response:
    return Response(
        asset("playground.html"), media_type="text/html; charset=utf-8", headers=_HEADERS
    )


@router.get("/favicon.ico", response_class=Response)
def favicon() -> Response:
    """Browsers ask for /favicon.ico on every page (the API docs name it too); a PNG serves."""
    return Response(
        asset("favicon.png"),
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("/static/{name}", response_class=Response)
def static_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", "No such file.")
    return Response(asset(name), media_type=media_type, headers=_HEADERS)
