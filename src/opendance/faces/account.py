"""The calling key's account: `GET /v1/credits` (balance and price group)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opendance.faces.auth import CurrentKey
from opendance.faces.errors import KEY_ERRORS

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
    summary = request.app.state.runtime.accounts.get(key.id)
    return {
        "object": "credits",
        "balance": summary.balance,
        "group": summary.group,
        "key_id": summary.id,
    }
