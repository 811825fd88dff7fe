"""The JSON error shape of the contract, and the mapping from service errors to HTTP statuses.

`{"error": {"code": ..., "message": ..., "type": ..., "param": ...}}` for every error,
including FastAPI's own (404 route, 405 method, validation), so clients parse one shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from opendance.tasks import errors as service_errors

log = logging.getLogger(__name__)

#: HTTP status -> error `type`.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_credits_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    410: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_busy_error",
}

#: Service error class -> HTTP status.
SERVICE_STATUS: dict[type[service_errors.ServiceError], int] = {
    service_errors.InvalidRequest: 400,
    service_errors.UnknownModel: 400,
    service_errors.InsufficientCredits: 402,
    service_errors.TaskNotFound: 404,
    service_errors.KeyNotFound: 404,
    service_errors.TaskNotCancellable: 409,
    service_errors.ServiceUnavailable: 503,
    service_errors.IdempotencyKeyReused: 422,
    service_errors.TooManyActiveTasks: 429,
}


class ApiError(Exception):
    """An error response in the contract's shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "type": ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
        }
    }


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.code, error.message, error.param),
        status_code=error.status,
        headers=error.headers,
    )


def from_service_error(error: service_errors.ServiceError) -> ApiError:
    status = 500
    for cls in type(error).__mro__:
        if cls in SERVICE_STATUS:
            status = SERVICE_STATUS[cls]
            break
    headers = {"Retry-After": "5"} if status in (429, 503) else None
    return ApiError(status, error.code, error.message, param=error.param, headers=headers)


_HTTP_CODES = {
    404: ("not_found", "No such endpoint."),
    405: ("method_not_allowed", "This endpoint does not support that method."),
    413: ("request_too_large", "The request body is too large."),
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(service_errors.ServiceError)
    async def _service_error(_request: Request, error: service_errors.ServiceError) -> JSONResponse:
        return error_response(from_service_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code, message = _HTTP_CODES.get(error.status_code, ("http_error", str(error.detail)))
        return error_response(ApiError(error.status_code, code, message))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = loc[0] if loc else None
        message = first.get("msg", "Invalid request.")
        return error_response(
            ApiError(400, "invalid_parameter", f"{param}: {message}", param=param)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return error_response(ApiError(500, "internal_error", "Internal server error."))
