"""Exceptions of the SDK, one class per kind of error the server answers."""

from __future__ import annotations

from typing import Any

import httpx


class OpenDanceError(Exception):
    """Every error of the SDK. `status` is the HTTP status (None when no response came back);
    `code`, `param` and `type` are the server's `error` fields; `body` the parsed body."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        body: Any = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.type = type
        self.body = body
        self.headers = headers if headers is not None else httpx.Headers()

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"(HTTP {self.status}" + (f", {self.code})" if self.code else ")"))
        return " ".join(parts)


class APIError(OpenDanceError):
    """The server answered with an error status."""


class InvalidRequestError(APIError):
    """400 (and 405, 413, 422): the request broke a rule; `param` names the field."""


class AuthenticationError(APIError):
    """401: the API key is missing, unknown, revoked or mistyped."""


class InsufficientCreditsError(APIError):
    """402: the key's balance does not cover the price; nothing was created."""


class PermissionDeniedError(APIError):
    """403: e.g. a result URL whose signature does not match."""


class NotFoundError(APIError):
    """404 (and 410): no such task for this key, or the result file expired."""


class ConflictError(APIError):
    """409: e.g. cancelling a task that already ended."""


class RateLimitError(APIError):
    """429: too many requests or tasks at once (retried first, honouring `Retry-After`)."""


class ServerError(APIError):
    """5xx: 503 when the server cannot take work now (retried first), 500 for a server bug."""


class APIConnectionError(OpenDanceError):
    """The server could not be reached, or the connection broke before an answer."""


class APITimeoutError(APIConnectionError):
    """No answer in time. A create that timed out after it was sent is not retried: it may
    have been created, so list the tasks before sending it again."""


class TaskNotCompletedError(OpenDanceError):
    """`download` of a task that has no video (not completed, failed, cancelled or expired)."""


class WaitTimeoutError(OpenDanceError, TimeoutError):
    """`wait` ran out of time; the task goes on on the server (`task` is its last state)."""

    def __init__(self, message: str, *, task: Any = None) -> None:
        super().__init__(message)
        self.task = task


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: InvalidRequestError,
    409: ConflictError,
    410: NotFoundError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def error_class(status: int) -> type[APIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else APIError


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response (the body is read if it was streamed)."""
    try:
        response.read()
        body: Any = response.json()
    except (ValueError, httpx.HTTPError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or response.reason_phrase)
        code, param, kind = error.get("code"), error.get("param"), error.get("type")
    else:
        message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        code = param = kind = None
    return error_class(response.status_code)(
        message,
        status=response.status_code,
        code=str(code) if code is not None else None,
        param=str(param) if param is not None else None,
        type=str(kind) if kind is not None else None,
        body=body,
        headers=response.headers,
    )
