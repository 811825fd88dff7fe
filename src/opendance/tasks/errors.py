"""Errors of the task service. Faces map them to their own wire format and HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a stable `code` and a message safe to show to the key's owner."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    code = "invalid_parameter"


class UnknownModel(ServiceError):
    code = "unknown_model"


class InsufficientCredits(ServiceError):
    code = "insufficient_credits"


class TaskNotFound(ServiceError):
    code = "task_not_found"


class TaskNotCancellable(ServiceError):
    code = "task_not_cancellable"


class ServiceUnavailable(ServiceError):
    code = "server_busy"


class KeyRevoked(ServiceError):
    """The key was revoked (found by the create's own transaction, whatever a cache said)."""

    code = "invalid_api_key"


class KeyNotFound(ServiceError):
    code = "key_not_found"


class IdempotencyKeyReused(ServiceError):
    code = "idempotency_key_reused"


class TooManyActiveTasks(ServiceError):
    code = "too_many_active_tasks"


class RateLimited(ServiceError):
    """Past the key's request rate; `headers` are the rate-limit headers (with Retry-After)."""

    code = "rate_limited"

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class UploadNotFound(ServiceError):
    code = "file_not_found"
