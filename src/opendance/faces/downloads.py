"""Result downloads under signed, expiring URLs (no API key: the signature is the credential).

Wherever the result is stored: a local file is served by path (ranges by Starlette); an object
in a bucket is streamed through (`result_urls = "proxy"`, the client's `Range` passed on) or
answered with a redirect to a short presigned URL (`"redirect"`).
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from opendance.faces.deps import runtime_of
from opendance.faces.errors import ApiError, error_responses
from opendance.media import previews
from opendance.media.blobs import ObjectMissing, StorageError
from opendance.runtime import Runtime

router = APIRouter(tags=["Files"])

Variant = Literal["video", "thumbnail", "spritesheet"]
#: How long a redirect's presigned URL lives: enough to start the download, no more.
REDIRECT_SECONDS = 300


def _gone(message: str = "This result is no longer available.") -> ApiError:
    return ApiError(410, "file_expired", message)


async def serve_result(
    runtime: Runtime,
    relative: str,
    request: Request,
    *,
    filename: str,
    variant: Variant = "video",
    missing: ApiError | None = None,
    disposition: Literal["inline", "attachment"] = "inline",
) -> Response:
    """The result (or a preview of it) as a response, from wherever it is stored."""
    results = runtime.results
    media_type = "video/mp4" if variant == "video" else previews.MEDIA_TYPES[variant]
    if results.is_local:
        path = results.path_of(relative)
        if not path.exists():
            raise missing or _gone()
        if variant != "video":
            path = await run_in_threadpool(previews.ensure_preview, path, variant)
        return FileResponse(
            path,
            media_type=media_type,
            filename=filename,
            content_disposition_type=disposition,
            headers={"Cache-Control": "private, max-age=3600"},
        )
    if results.url_mode == "redirect":
        url = results.presigned(relative, int(time.time()) + REDIRECT_SECONDS, variant)
        return RedirectResponse(url, status_code=307)
    try:
        body = await run_in_threadpool(
            results.open, relative, variant, request.headers.get("range")
        )
    except ObjectMissing:
        raise missing or _gone() from None
    except StorageError as exc:
        raise ApiError(
            503, "storage_unavailable", f"The result store cannot be read now ({exc})."
        ) from None
    headers = {
        **body.headers,
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'{disposition}; filename="{filename}"',
    }
    return StreamingResponse(
        body.chunks, status_code=body.status, media_type=media_type, headers=headers
    )


@router.get(
    "/v1/files/{expires}/{signature}/{task_id}.mp4",
    summary="Download a result video (signed URL from a task's `results`)",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}},
        **error_responses(
            {
                400: "`expires` is not a whole number",
                403: "Bad signature",
                410: "The URL or the file expired",
            }
        ),
    },
)
async def download_result(expires: int, signature: str, task_id: str, request: Request) -> Response:
    runtime = runtime_of(request)
    now = runtime.clock.now()
    if expires < now:
        raise _gone("This result URL has expired.")
    if not runtime.results.verify(task_id, expires, signature, now):
        raise ApiError(403, "invalid_signature", "This result URL is not valid.")
    view = await run_in_threadpool(runtime.service.get_task_unscoped, task_id)
    if view is None or not view.result_file:
        raise _gone()
    return await serve_result(runtime, view.result_file, request, filename=f"{task_id}.mp4")
