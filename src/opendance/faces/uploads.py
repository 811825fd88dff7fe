"""Image uploads: `POST /v1/files` (multipart `file`) -> a reference to use in `image_urls`.

A client with a local image (the CLI's `--image photo.png`, the SDK's `upload`, the
playground) sends it here first and puts the returned id, `upload:<name>`, in `image_urls`.
The image is checked now (size, JPEG/PNG/WebP by its bytes, pixel count) with the same code
as the OpenAI face's `input_reference`, stored under `data_dir/uploads`, and read from disk by
the worker when the task starts, so it is never fetched over the network.

The name is 128 random bits: the reference is a capability, like a signed URL, and is not
bound to the key that uploaded it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from opendance.faces.auth import CurrentKey
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, ApiError, error_responses
from opendance.faces.images import save_upload
from opendance.media.uploads import uploads_dir

router = APIRouter(tags=["Files"], responses=KEY_ERRORS)

#: Room for the multipart framing and the small fields around the file.
_FORM_OVERHEAD = 64 * 1024


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = ApiError(
        413, "request_too_large", f"The upload is over {limit} bytes.", param="file"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


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
    raw = await read_capped(request, settings.image_max_bytes + _FORM_OVERHEAD)
    try:
        form = await MultiPartParser(
            request.headers, _once(raw), max_files=1, max_fields=8, max_part_size=_FORM_OVERHEAD
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
        reference = await run_in_threadpool(
            save_upload,
            uploads_dir(settings),
            data,
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
            param="file",
        )
        return {
            "id": reference,
            "object": "file",
            "bytes": len(data),
            "purpose": "image",
            "filename": upload.filename,
            "created_at": int(runtime.clock.now()),
        }
    finally:
        await form.close()
