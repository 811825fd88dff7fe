"""Image uploads: `POST /v1/files` (multipart `file`) -> a reference to use in `image_urls`.

A client with a local image (the CLI's `--image photo.png`, the SDK's `upload`, the
playground) sends it here first and puts the returned id, `upload:<name>`, in `image_urls`.
The image is checked now (size, JPEG/PNG/WebP by its bytes, pixel count) with the same code
as the OpenAI face's `input_reference`, stored under `data_dir/uploads`, and read from disk by
the worker when the task starts, so it is never fetched over the network.

The upload belongs to the key that made it: only that key's tasks may use it, and only that
key reads its metadata (`GET /v1/files/{id}`) or deletes it; to any other key it does not exist.
Its bytes live in the store, so a worker on another host reads them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from opendance.faces.auth import CurrentKey
from opendance.faces.common import read_body, replay
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, ApiError, error_responses
from opendance.faces.images import ImageInbox, save_upload
from opendance.tasks.uploads import UploadRecord

router = APIRouter(tags=["Files"], responses=KEY_ERRORS)

#: Room for the multipart framing and the small fields around the file.
_FORM_OVERHEAD = 64 * 1024


@router.post(
    "/v1/files",
    summary="Upload an image to use as a first frame (`image_urls: [id]`)",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "id": "upload:0f1e2d3c4b5a69788796a5b4c3d2e1f0.png",
                        "object": "file",
                        "bytes": 48213,
                        "purpose": "image",
                        "filename": "cat.png",
                        "created_at": 1761313744,
                    }
                }
            }
        },
        **error_responses(
            {
                400: "Not an image this server takes (the rule is in the message)",
                413: "Larger than `image_max_bytes`",
            }
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "JPEG, PNG or WebP, at most image_max_bytes.",
                            },
                            "purpose": {"type": "string", "enum": ["image"]},
                        },
                    }
                }
            },
        }
    },
)
async def upload_file(request: Request, key: CurrentKey) -> dict[str, Any]:
    runtime = runtime_of(request)
    settings = runtime.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ApiError(
            400,
            "invalid_request",
            "Send the image as multipart/form-data with the file in the field 'file'.",
            param="file",
        )
    raw = await read_body(
        request, settings.image_max_bytes + _FORM_OVERHEAD, what="The upload", param="file"
    )
    try:
        form = await MultiPartParser(
            request.headers, replay(raw), max_files=1, max_fields=8, max_part_size=_FORM_OVERHEAD
        ).parse()
    except MultiPartException as error:
        raise ApiError(400, "invalid_request", f"Malformed form body: {error.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                400,
                "missing_parameter",
                "Missing the image file in the field 'file'.",
                param="file",
            )
        purpose = form.get("purpose")
        if purpose is not None and purpose != "image":
            raise ApiError(
                400, "invalid_parameter", "Invalid 'purpose': must be 'image'.", param="purpose"
            )
        data = await upload.read(settings.image_max_bytes + 1)
        inbox = ImageInbox(runtime.uploads, key.id, settings)
        record = await run_in_threadpool(
            partial(save_upload, inbox, data, param="file", filename=upload.filename)
        )
        return file_object(record)
    finally:
        await form.close()


def file_object(record: UploadRecord) -> dict[str, Any]:
    """An upload as the file object the API answers (OpenAI's shape, plus its sha256)."""
    return {
        "id": record.reference,
        "object": "file",
        "bytes": record.bytes,
        "purpose": "image",
        "filename": record.filename,
        "content_type": record.content_type,
        "sha256": record.sha256,
        "created_at": int(record.created_at),
        "expires_at": int(record.expires_at),
    }


_NOT_FOUND = error_responses({404: "No such upload for this key (deleted, expired, another's)"})


@router.get(
    "/v1/files/{file_id}", summary="An upload's metadata (its owner only)", responses=_NOT_FOUND
)
async def get_file(file_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    record = await run_in_threadpool(runtime.uploads.get, key.id, file_id)
    return file_object(record)


@router.delete(
    "/v1/files/{file_id}", summary="Delete an upload (its owner only)", responses=_NOT_FOUND
)
async def delete_file(file_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    record = await run_in_threadpool(runtime.uploads.delete, key.id, file_id)
    return {"id": record.reference, "object": "file", "deleted": True}
