"""Result downloads under signed, expiring URLs (no API key: the signature is the credential)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from opendance.faces.deps import runtime_of
from opendance.faces.errors import ApiError, error_responses

router = APIRouter(tags=["Files"])


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
def download_result(expires: int, signature: str, task_id: str, request: Request) -> FileResponse:
    runtime = runtime_of(request)
    now = runtime.clock.now()
    if expires < now:
        raise ApiError(410, "file_expired", "This result URL has expired.")
    if not runtime.results.verify(task_id, expires, signature, now):
        raise ApiError(403, "invalid_signature", "This result URL is not valid.")
    view = runtime.service.get_task_unscoped(task_id)
    if view is None or not view.result_file:
        raise ApiError(410, "file_expired", "This result is no longer available.")
    path = runtime.results.path_of(view.result_file)
    if not path.exists():
        raise ApiError(410, "file_expired", "This result is no longer available.")
    return FileResponse(
        path,
        media_type="video/mp4",
        filename=f"{task_id}.mp4",
        content_disposition_type="inline",
        headers={"Cache-Control": "private, max-age=3600"},
    )
