"""Bearer-key authentication for every `/v1` endpoint."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from opendance.faces.deps import runtime_of
from opendance.faces.errors import ApiError
from opendance.tasks.models import KeyInfo

_bearer = HTTPBearer(auto_error=False, description="An opendance API key: `od_...`")


def authenticate_request(request: Request, token: str | None) -> KeyInfo:
    if not token:
        raise ApiError(
            401,
            "missing_api_key",
            "Send your API key as 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key: KeyInfo | None = runtime_of(request).accounts.authenticate(token)
    if key is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "The API key is not valid (unknown, revoked or mistyped).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.key = key
    return key


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def authenticate_async(request: Request, token: str | None) -> KeyInfo:
    """`authenticate_request` without a thread hop when the key was seen a moment ago."""
    if token:
        key: KeyInfo | None = runtime_of(request).accounts.cached(token)
        if key is not None:
            request.state.key = key
            return key
    return await run_in_threadpool(authenticate_request, request, token)


async def read_key(request: Request) -> tuple[KeyInfo, dict[str, str]]:
    """`require_key` without dependency injection: the key, and the rate-limit headers to send."""
    key = await authenticate_async(request, bearer_token(request))
    return key, runtime_of(request).limiter.check(key.id, "read")


async def require_key(
    request: Request,
    response: Response,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyInfo:
    """The calling key (401 if missing or wrong), counted against its read rate limit."""
    key, headers = await read_key(request)
    response.headers.update(headers)
    return key


CurrentKey = Annotated[KeyInfo, Depends(require_key)]

#: For routes that check the key in the handler (hot paths): the same OpenAPI security entry
#: that `CurrentKey` gives a route.
BEARER_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}
