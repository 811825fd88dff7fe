"""The Ark tasks API face: `/api/v3/contents/generations/tasks` as BytePlus's Ark SDK calls it.

A thin adapter over the one task service (same ids, store, ledger and lifecycle as the other
faces). The create body is Ark's: a `content` array (one text part, at most one first-frame
image) plus optional JSON fields, where the official SDK sends every optional key as `null`, so
`null` always means "not given". Text commands (`--rs 720p --dur 5` ...) are read from the text
and stripped from the prompt; where a JSON field and a command both set a value, the JSON field
wins. Errors use Ark's body and codes (`InvalidParameter`, `AuthenticationError`, ...).
"""

from opendance.faces.ark.objects import callback_body, task_object
from opendance.faces.ark.requests import PREFIX, ark_error_response, parse_commands, parse_create
from opendance.faces.ark.routes import router

__all__ = [
    "PREFIX",
    "ark_error_response",
    "callback_body",
    "parse_commands",
    "parse_create",
    "router",
    "task_object",
]
