"""What goes over the wire to a task API and back, in the terms every upstream engine shares.

An engine describes its upstream's format (paths, bodies, status names); these are the pieces
that format is built from and read into: the API client (the one place our key goes), the query
answer as a `TaskSnapshot`, JSON and error bodies read defensively, task ids checked before they
go into a URL or our state, `Retry-After`, and the first-frame image sent inline so the upstream
never fetches a URL of a client's choosing.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import httpx

from opendance.engines.base import EngineError
from opendance.engines.upstream.errors import UPSTREAM_IMAGE_TOO_LARGE
from opendance.engines.upstream.options import UpstreamOptions

if TYPE_CHECKING:
    from PIL.Image import Image

# An upstream task id goes into URL paths and our state: accept only plain ids.
_UPSTREAM_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
CLIENT_REQUEST_ID_HEADER: Final = "X-Client-Request-Id"


@dataclass(frozen=True)
class TaskSnapshot:
    """One query answer, in our terms. `status` is the engine's mapping (unknown names pass
    through unchanged so the poller can reject them)."""

    status: str
    progress: float | None = None
    video_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class MalformedAnswer(ValueError):
    """An answer that is not the documented JSON shape."""


def api_client(options: UpstreamOptions) -> httpx.Client:
    """A client for the upstream's API: its base URL, our key as the bearer token, no redirects.

    The only place the key is put on the wire; the video download uses a client without it.
    """
    return httpx.Client(
        base_url=options.base_url,
        headers={
            "Authorization": f"Bearer {options.api_key.get_secret_value()}",
            "Accept": "application/json",
        },
        timeout=httpx.Timeout(
            options.request_timeout_seconds, connect=options.connect_timeout_seconds
        ),
        follow_redirects=False,
    )


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def error_fields(body: Any) -> tuple[str | None, str | None]:
    """`(code, message)` from an error body: Ark, evolink and the OpenAI-style servers wrap them
    in `error`; FastAPI servers (SGLang, LightX2V) answer `{"detail": "..."}`."""
    if not isinstance(body, dict):
        return None, None
    if isinstance(body.get("detail"), str) and "error" not in body:
        return None, body["detail"]
    inner = body.get("error", body)
    if not isinstance(inner, dict):
        return None, inner if isinstance(inner, str) else None
    code = inner.get("code")
    message = inner.get("message")
    return (
        str(code) if code is not None else None,
        message if isinstance(message, str) else None,
    )


def valid_upstream_id(value: Any) -> str | None:
    """The id if it is a plain task id we can safely put in a URL path and in state."""
    if isinstance(value, str) and _UPSTREAM_ID.fullmatch(value):
        return value
    return None


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), or None."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def png_bytes(image: Image, max_bytes: int) -> tuple[bytes, str]:
    """The image encoded for an upstream: PNG, or JPEG when the PNG would pass `max_bytes`;
    `(bytes, mime type)`."""
    picture = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    mime = "image/png"
    if buffer.tell() > max_bytes:
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=92)
        mime = "image/jpeg"
    if buffer.tell() > max_bytes:
        raise EngineError(
            UPSTREAM_IMAGE_TOO_LARGE,
            f"the input image is larger than the upstream accepts ({max_bytes} bytes)",
        )
    return buffer.getvalue(), mime


def png_data_url(image: Image, max_bytes: int) -> str:
    """The image as a `data:` URL: PNG, or JPEG when the PNG would be larger than `max_bytes`.

    Sending the bytes we already fetched and checked means the upstream never reaches out to
    a URL of the client's choosing.
    """
    data, mime = png_bytes(image, max_bytes)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def quote_id(upstream_id: str) -> str:
    """An upstream id as one URL path segment."""
    return quote(upstream_id, safe="")
