"""The Seedance task API face: `POST /v1/videos/generations`, `GET /v1/tasks/{id}`, cancel,
list, and the live event stream of a task (`GET /v1/tasks/{id}/events`)."""

from opendance.faces.seedance.events import router as events_router
from opendance.faces.seedance.objects import callback_body, task_object
from opendance.faces.seedance.requests import CreateVideoRequest
from opendance.faces.seedance.routes import router

__all__ = ["CreateVideoRequest", "callback_body", "events_router", "router", "task_object"]
