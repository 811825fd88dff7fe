"""The OpenAI videos API face: `/v1/videos` as the official `openai` SDK's `client.videos` uses it.

A thin adapter over the one task service: a video is a task (same id, same store, same ledger),
so a video made here can be read through the Seedance and Ark faces and the other way round.
What it adds is the translation: `seconds` and `size` to the routed model's duration, quality
and aspect ratio; the task's status to the four OpenAI statuses; the OpenAI error body; the
`openai-poll-after-ms` header that paces the SDK's poller; thumbnail and spritesheet variants.

Uploaded first frames (a multipart `input_reference` file, or a base64 `data:` URL) are checked
here, stored under `data_dir/uploads` and recorded as `upload:<name>`, which the worker reads
from disk instead of fetching. The same helpers serve the Ark face's `data:` image URLs.
"""

from opendance.faces.openai.objects import callback_body, video_object, webhook_event
from opendance.faces.openai.requests import map_size, openai_error_response, owns_path
from opendance.faces.openai.routes import router

__all__ = [
    "callback_body",
    "map_size",
    "openai_error_response",
    "owns_path",
    "router",
    "video_object",
    "webhook_event",
]
