"""The Python SDK of opendance: `Client` and `AsyncClient`.

from opendance.client import Client

with Client() as client:  # OPENDANCE_KEY, OPENDANCE_BASE_URL (default http://127.0.0.1:8000)
    task = client.create("A cat playing piano", duration=5, quality="720p")
    task = client.wait(task, on_progress=lambda t: print(t.status, t.progress))
    client.download(task, "cat.mp4")
"""

from opendance.client._aio import AsyncClient, AsyncTaskList
from opendance.client._base import DEFAULT_BASE_URL, DEFAULT_MODEL
from opendance.client._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    OpenDanceError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TaskNotCompletedError,
    WaitTimeoutError,
)
from opendance.client._models import (
    TERMINAL_STATUSES,
    Credits,
    FileObject,
    Task,
    TaskError,
    TaskInfo,
    TaskPage,
    Usage,
)
from opendance.client._sync import Client, TaskList

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncTaskList",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Credits",
    "FileObject",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "NotFoundError",
    "OpenDanceError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "Task",
    "TaskError",
    "TaskInfo",
    "TaskList",
    "TaskNotCompletedError",
    "TaskPage",
    "Usage",
    "WaitTimeoutError",
]
