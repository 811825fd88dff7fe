"""The upstream engines' error codes, and how an upstream's answers map onto them.

The codes are stable: a task's owner sees them (docs/upstreams.md has the full table). The
mapping is kept apart from the engine so every HTTP status and every ended task status has one
visible answer, and so the text an upstream sends is always cleaned the same way before it is
shown: one line, bounded, with our key and the upstream's ids redacted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from opendance.engines.base import EngineError

if TYPE_CHECKING:
    from opendance.engines.upstream.wire import TaskSnapshot

# Stable error codes shown to the task's owner (docs/upstreams.md has the full table).
UPSTREAM_REJECTED: Final = "upstream_rejected"
UPSTREAM_CONTENT_REJECTED: Final = "upstream_content_rejected"
UPSTREAM_AUTH_FAILED: Final = "upstream_auth_failed"
UPSTREAM_MODEL_NOT_FOUND: Final = "upstream_model_not_found"
UPSTREAM_QUOTA_EXHAUSTED: Final = "upstream_quota_exhausted"
UPSTREAM_RATE_LIMITED: Final = "upstream_rate_limited"
UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
UPSTREAM_AMBIGUOUS: Final = "upstream_ambiguous"
UPSTREAM_BAD_RESPONSE: Final = "upstream_bad_response"
UPSTREAM_BAD_STATUS: Final = "upstream_bad_status"
UPSTREAM_TASK_LOST: Final = "upstream_task_lost"
UPSTREAM_FAILED: Final = "upstream_failed"
UPSTREAM_CANCELLED: Final = "upstream_cancelled"
UPSTREAM_EXPIRED: Final = "upstream_expired"
UPSTREAM_TIMEOUT: Final = "upstream_timeout"
UPSTREAM_DOWNLOAD_FAILED: Final = "upstream_download_failed"
UPSTREAM_VIDEO_TOO_LARGE: Final = "upstream_video_too_large"
UPSTREAM_BAD_VIDEO: Final = "upstream_bad_video"
UPSTREAM_IMAGE_UNSUPPORTED: Final = "upstream_image_unsupported"
UPSTREAM_IMAGE_TOO_LARGE: Final = "upstream_image_too_large"
UPSTREAM_STATE_INVALID: Final = "upstream_state_invalid"

# Gateways that answer these after the request was sent cannot tell whether the origin acted.
_AMBIGUOUS_HTTP: Final = frozenset({502, 504, 520, 521, 522, 523, 524, 525, 526, 527})
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_MESSAGE: Final = 300


def sanitize(text: str, secrets: tuple[str, ...], limit: int = _MAX_MESSAGE) -> str:
    """Upstream text made safe to show: one line, bounded, without any of `secrets`."""
    cleaned = _CONTROL_CHARS.sub(" ", text).strip()
    for secret in secrets:
        if secret:
            cleaned = cleaned.replace(secret, "[redacted]")
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned


def is_ambiguous_status(status: int) -> bool:
    """Whether a create answered with this HTTP status may still have created the task."""
    return status in _AMBIGUOUS_HTTP


def create_error(
    status: int,
    code: str | None,
    detail: str,
    is_content_rejection: Callable[[str | None], bool],
) -> EngineError:
    """Our error for a create the upstream answered with a non-2xx `status`.

    `code` is the upstream's own error code, `detail` its message already sanitized.
    """
    suffix = f": {detail}" if detail else ""
    if status in _AMBIGUOUS_HTTP:
        return EngineError(
            UPSTREAM_AMBIGUOUS,
            f"the upstream gateway answered HTTP {status} after the create was sent; "
            "the task may exist there, so it is not sent again",
        )
    if status in (401, 403):
        return EngineError(
            UPSTREAM_AUTH_FAILED,
            f"the upstream refused our credentials (HTTP {status}); check the route's api_key",
        )
    if status == 402:
        return EngineError(
            UPSTREAM_QUOTA_EXHAUSTED,
            f"the upstream account has no quota left (HTTP 402){suffix}",
            retryable=True,
        )
    if status == 404:
        return EngineError(
            UPSTREAM_MODEL_NOT_FOUND,
            f"the upstream does not know this model or endpoint (HTTP 404){suffix}",
        )
    if status == 429:
        return EngineError(
            UPSTREAM_RATE_LIMITED, "the upstream is rate limiting us (HTTP 429)", retryable=True
        )
    if status >= 500 or status == 408:
        return EngineError(
            UPSTREAM_UNAVAILABLE,
            f"the upstream failed to take the task (HTTP {status})",
            retryable=True,
        )
    if 400 <= status < 500:
        our_code = UPSTREAM_CONTENT_REJECTED if is_content_rejection(code) else UPSTREAM_REJECTED
        return EngineError(our_code, f"the upstream refused the task (HTTP {status}){suffix}")
    return EngineError(
        UPSTREAM_BAD_RESPONSE,
        f"the upstream answered the create with HTTP {status}",
        retryable=True,
    )


def ended_error(
    snapshot: TaskSnapshot,
    failure_code: Callable[[str | None], str],
    clean: Callable[[str, int], str],
) -> EngineError:
    """Our error for a task that ended upstream without succeeding.

    `failure_code` maps the upstream's code of a `failed` task to ours; `clean(text, limit)`
    sanitizes upstream text (our key and this task's upstream id redacted).
    """
    status = snapshot.status
    if status == "failed":
        detail = clean(snapshot.error_message or "", _MAX_MESSAGE)
        code = clean(snapshot.error_code or "", 80)
        parts = [p for p in (code, detail) if p]
        reason = ": " + " - ".join(parts) if parts else ""
        return EngineError(failure_code(snapshot.error_code), f"the upstream model failed{reason}")
    if status == "cancelled":
        return EngineError(UPSTREAM_CANCELLED, "the task was cancelled upstream")
    if status == "expired":
        return EngineError(UPSTREAM_EXPIRED, "the upstream task expired before it finished")
    return EngineError(
        UPSTREAM_BAD_STATUS,
        f"the upstream reported an unknown task status {clean(status, 40)!r}",
    )
