"""The calling key's account: `GET /v1/credits` (balance and price group) and `GET /v1/usage`
(its ledger, entry by entry, so a team can reconcile without the CLI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from opendance.faces.auth import CurrentKey
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, error_responses
from opendance.tasks.ledger import Entry

router = APIRouter(tags=["Account"], responses=KEY_ERRORS)


@router.get(
    "/v1/credits",
    summary="The calling key's credit balance",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "object": "credits",
                        "balance": 992,
                        "group": "default",
                        "key_id": "a1b2c3d4",
                    }
                }
            }
        },
    },
)
def get_credits(key: CurrentKey, request: Request) -> dict[str, Any]:
    """The balance counts credits reserved by running tasks as spent (they come back on refund)."""
    summary = runtime_of(request).accounts.get(key.id)
    return {
        "object": "credits",
        "balance": summary.balance,
        "group": summary.group,
        "key_id": summary.id,
    }


def entry_object(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "ledger_entry",
        "type": entry.kind,
        "task_id": entry.task_id,
        "credits": entry.credits,
        "balance_change": entry.balance_change,
        "balance_after": entry.balance_after,
        "note": entry.note,
        "created_at": int(entry.created_at),
    }


_USAGE_EXAMPLE: dict[str, Any] = {
    "object": "list",
    "data": [
        {
            "id": 3,
            "object": "ledger_entry",
            "type": "refund",
            "task_id": "task-unified-1761313744-vux2jw0k",
            "credits": 8,
            "balance_change": 8,
            "balance_after": 1000,
            "note": None,
            "created_at": 1761313790,
        }
    ],
    "has_more": True,
    "first_id": 3,
    "last_id": 3,
    "balance": 1000,
}


@router.get(
    "/v1/usage",
    summary="The calling key's ledger: every grant, reserve, settle and refund",
    responses={
        200: {"content": {"application/json": {"example": _USAGE_EXAMPLE}}},
        **error_responses({400: "A query parameter is out of range"}),
    },
)
async def get_usage(
    key: CurrentKey,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        int | None, Query(ge=0, description="Id of the last entry of the previous page")
    ] = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    task_id: Annotated[str | None, Query(description="Only this task's entries")] = None,
) -> dict[str, Any]:
    """Entries in the order they were written (newest first by default), with each one's
    effect on the balance: over all of a key's entries, `balance_change` adds up to
    `balance`. A task has one `reserve`, then one `settle` (completed) or `refund`."""
    accounts = runtime_of(request).accounts
    entries, has_more, balance = await run_in_threadpool(
        accounts.ledger_page,
        key.id,
        limit=limit,
        after=after,
        newest_first=order == "desc",
        task_id=task_id,
    )
    data = [entry_object(entry) for entry in entries]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "balance": balance,
    }
