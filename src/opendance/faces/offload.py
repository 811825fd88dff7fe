"""Where a request handler runs blocking database work: off the event loop, on the right threads.

The database names an executor for its hot paths (SQLite: one thread for creates, two for task
reads; see `Database`); without one, the framework's thread pool. The request's context
(its request id, for the log lines) goes along either way.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")


async def run_on(
    executor: Executor | None, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`function(*args, **kwargs)` on `executor` (or the framework's pool), awaited."""
    if executor is None:
        return await run_in_threadpool(function, *args, **kwargs)
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
