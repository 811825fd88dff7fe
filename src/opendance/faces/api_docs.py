"""ReDoc at `/redoc`, from the assets `fastapi-offline` ships (Swagger UI at `/docs` too).

ReDoc's sidebar shows a "powered by" logo from its CDN, and no option removes it; the page's
Content-Security-Policy keeps the browser from fetching it, so the docs make no request
off this server, with or without a network.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse

#: Where `FastAPIOffline` mounts its assets.
STATIC_URL: Final[str] = "/static-offline-docs"
REDOC_CSP: Final[str] = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}/favicon.ico",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = REDOC_CSP
    return page
