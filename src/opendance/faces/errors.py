"""The JSON error shape of the contract, and the mapping from service errors to HTTP statuses.

`{"error": {"code": ..., "message": ..., "type": ..., "param": ...}}` for every error,
including FastAPI's own (404 route, 405 method, validation), so clients parse one shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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
    service_errors.KeyRevoked: 401,
    service_errors.TaskNotFound: 404,
    service_errors.KeyNotFound: 404,
    service_errors.UploadNotFound: 404,
    service_errors.TaskNotCancellable: 409,
    service_errors.ServiceUnavailable: 503,
    service_errors.IdempotencyKeyReused: 422,
    service_errors.TooManyActiveTasks: 429,
    service_errors.RateLimited: 429,
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    type: str
    param: str | None


class ErrorBody(BaseModel):
    """Every error on every face: `{"error": {"code", "message", "type", "param"}}`."""

    error: ErrorDetail


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: each error status, its description and the error body's schema."""
    return {
        status: {"model": ErrorBody, "description": text or HTTPStatus(status).phrase}
        for status, text in descriptions.items()
    }


#: What every route behind an API key may answer, besides its own errors.
KEY_ERRORS = error_responses(
    {401: "Missing or invalid API key", 429: "Rate limit reached (see `Retry-After`)"}
)


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
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(error, service_errors.RateLimited):
        headers = dict(error.headers)
    return ApiError(status, error.code, error.message, param=error.param, headers=headers)


_HTTP_CODES = {
    404: ("not_found", "No such endpoint."),
    405: ("method_not_allowed", "This endpoint does not support that method."),
    413: ("request_too_large", "The request body is too large."),
}


def allowed_methods(request: Request) -> str:
    """Every method of every route at this path: Starlette's `Allow` names the first route's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(service_errors.ServiceError)
    async def _service_error(_request: Request, error: service_errors.ServiceError) -> JSONResponse:
        return error_response(from_service_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code, message = _HTTP_CODES.get(error.status_code, ("http_error", str(error.detail)))
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = allowed_methods(request)  # RFC 9110: every method of the path
        return error_response(ApiError(error.status_code, code, message, headers=headers))

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


def as_api_error(error: Exception) -> ApiError | None:
    """The ApiError a face should answer for `error`, or None for an unexpected exception."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, service_errors.ServiceError):
        return from_service_error(error)
    if isinstance(error, RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = loc[0] if loc else None
        message = str(first.get("msg", "Invalid request."))
        return ApiError(400, "invalid_parameter", f"Invalid '{param}': {message}.", param=param)
    if isinstance(error, StarletteHTTPException):
        return ApiError(error.status_code, "invalid_request", str(error.detail))
    return None


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def route_class_answering_with(render: Callable[[ApiError], Response]) -> type[APIRoute]:
    """A route class whose routes answer every error (auth, validation, service) with `render`.

    The OpenAI and Ark faces use it so their clients parse errors in the shape they expect.
    """

    class FaceRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as error:
                    api_error = as_api_error(error)
                    if api_error is None:
                        raise
                    return render(api_error)

            return route

    return FaceRoute
