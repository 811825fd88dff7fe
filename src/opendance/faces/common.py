"""What every face needs, in one place, so the faces agree and never import each other:
body reading with the size cap, the callback URL check, model resolution, the create guard
(rate limit, `Idempotency-Key`), running blocking work off the event loop, and result removal.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from dataclasses import asdict, fields, replace
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from typing import Any, ParamSpec, TypeVar

import httpx
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from opendance.faces.deps import runtime_of
from opendance.faces.errors import ApiError
from opendance.media.addresses import check_url, parse_host_literal
from opendance.media.storage import ResultStore
from opendance.settings import DEFAULT_MODEL, Settings
from opendance.tasks.models import CreateTask, KeyInfo, TaskView

P = ParamSpec("P")
T = TypeVar("T")

# -- reading a create ---------------------------------------------------------------------


def body_limit(settings: Settings) -> int:
    """The largest create body: one image (base64 grows it by a third) plus small fields."""
    return settings.image_max_bytes * 4 // 3 + 64 * 1024


async def read_body(
    request: Request, limit: int, *, what: str = "The request body", param: str | None = None
) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = ApiError(413, "request_too_large", f"{what} is over {limit} bytes.", param=param)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object, or the 400 that says what it is not."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return data


async def replay(data: bytes) -> AsyncGenerator[bytes, None]:
    """A body already read, as the stream a form parser wants."""
    yield data


def _is_loopback_http(url: str) -> bool:
    """A plain `http://` URL to this machine: `localhost`, 127.0.0.0/8 or ::1."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    if parsed.scheme != "http":
        return False
    host = parsed.host.lower().rstrip(".")
    if host == "localhost":
        return True
    address = parse_host_literal(host)
    if isinstance(address, IPv4Address):
        return address.packed[0] == 127
    return isinstance(address, IPv6Address) and address == IPv6Address("::1")


def check_callback_url(url: str | None, settings: Settings) -> str | None:
    """The callback URL, checked (https, no internal address); None if not given.

    With `allow_loopback_for_tests` (local development), plain http to loopback is taken too,
    so a developer can point callbacks at a receiver on their machine without certificates.
    """
    if url is None:
        return None
    schemes = {"https"}
    if settings.allow_loopback_for_tests and _is_loopback_http(url):
        schemes.add("http")
    problem = check_url(
        url,
        schemes=schemes,
        field="callback_url",
        allow_loopback=settings.allow_loopback_for_tests,
    )
    if problem:
        raise ApiError(
            400, "invalid_parameter", f"Invalid 'callback_url': {problem}.", param="callback_url"
        )
    return url


# -- models --------------------------------------------------------------------------------


def default_model(models: list[str]) -> str | None:
    """The default route: the Seedance model name when routed, else the first configured one."""
    if DEFAULT_MODEL in models:
        return DEFAULT_MODEL
    return models[0] if models else None


def resolve_model(requested: str | None, models: list[str], *, aliases: tuple[str, ...]) -> str:
    """A configured route name as it is; a foreign name (`sora-2`...) to the default route."""
    if requested is not None and requested in models:
        return requested
    fallback = default_model(models)
    if fallback is not None and (requested is None or requested.lower().startswith(aliases)):
        return fallback
    raise ApiError(
        400,
        "unknown_model",
        f"Unknown model '{requested}'. Use one of: {', '.join(models)} "
        f"(or a name starting with {' / '.join(aliases)} for the default).",
        param="model",
    )


def with_face(create: CreateTask, face: str) -> CreateTask:
    """Tag a request with the face it came through, once the core records faces (callbacks)."""
    if any(field.name == "face" for field in fields(create)):
        changes: dict[str, Any] = {"face": face}
        return replace(create, **changes)
    return create


# -- running blocking work -----------------------------------------------------------------


async def run_on(
    executor: Executor | None, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`function(*args, **kwargs)` on `executor` (or the framework's pool), awaited."""
    if executor is None:
        return await run_in_threadpool(function, *args, **kwargs)
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


# -- the create guard ----------------------------------------------------------------------


def idempotency_key_of(request: Request) -> str | None:
    """The `Idempotency-Key` header, checked: 1 to 255 printable characters."""
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable characters.",
            param="Idempotency-Key",
        )
    return value


def request_fingerprint(create: CreateTask) -> str:
    """A hash of what a create asks for (for faces whose raw body is not at hand)."""
    return hashlib.sha256(json.dumps(asdict(create), sort_keys=True).encode()).hexdigest()


async def guarded_create(
    request: Request, key: KeyInfo, create: CreateTask, fingerprint: str | None = None
) -> tuple[TaskView, dict[str, str]]:
    """Create a task under the key's create limit and the request's Idempotency-Key.

    Returns the task and the headers to send (rate-limit headers, `Idempotent-Replayed`).
    """
    runtime = runtime_of(request)
    headers: dict[str, str] = dict(runtime.limiter.check(key.id, "create"))
    view, replayed = await run_on(
        runtime.db.create_executor,
        partial(
            runtime.service.create_task_once,
            key,
            create,
            idempotency_key=idempotency_key_of(request),
            request_hash=fingerprint or request_fingerprint(create),
        ),
    )
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return view, headers


# -- results -------------------------------------------------------------------------------


def remove_result(results: ResultStore, relative: str) -> None:
    """Delete a result file and its previews, wherever they are stored."""
    results.delete(relative)
