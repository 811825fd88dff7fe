"""`GET /v1/models`: the routed models and what each accepts, in the list shape of OpenAI-style
APIs (`{"object": "list", "data": [{"id", "object": "model", "created", "owned_by", ...}]}`), so
the `openai` SDK's `models.list()` reads it. The extra fields say what a create may ask for:
durations, qualities, the size each ratio and quality gives, image-to-video, and the price per
second for the caller's price group.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from opendance.engines.base import EngineUnavailable
from opendance.engines.catalog import (
    DEFAULT_DURATION,
    MAX_DURATION,
    MIN_DURATION,
    ModelCard,
)
from opendance.faces.auth import CurrentKey
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, ApiError, error_responses
from opendance.media.sizes import IMAGE_ONLY_RATIOS, QUALITIES
from opendance.runtime import Runtime
from opendance.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)
router = APIRouter(tags=["Models"], responses=KEY_ERRORS)

_EXAMPLE: dict[str, Any] = {
    "id": DEFAULT_MODEL,
    "object": "model",
    "created": 1761313744,
    "owned_by": "opendance",
    "engine": "sandbox",
    "engines": ["sandbox"],
    "runs": "opendance-sandbox",
    "durations": {"min": 2, "max": 12, "default": 5},
    "qualities": ["480p", "720p", "1080p"],
    "default_quality": "1080p",
    "aspect_ratios": {"16:9": {"480p": "864x480", "720p": "1248x704", "1080p": "1920x1088"}},
    "default_aspect_ratio": "16:9",
    "fps": 24,
    "text_to_video": True,
    "image_to_video": True,
    "image_aspect_ratios": ["keep_ratio", "adaptive"],
    "pricing": {
        "group": "default",
        "unit": "credits per second of video",
        "per_second": {"480p": 0.6, "720p": 1.0, "1080p": 1.6},
        "rounding": "each task's price is rounded up to whole credits",
    },
}


def model_object(
    card: ModelCard, created: int, group: str, per_second: dict[str, Any]
) -> dict[str, Any]:
    qualities = [q for q in QUALITIES if any(q in by_quality for by_quality in card.sizes.values())]
    return {
        "id": card.name,
        "object": "model",
        "created": created,
        "owned_by": "opendance",
        "engine": card.engines[0],
        "engines": list(card.engines),
        "runs": card.runs,
        "durations": {"min": MIN_DURATION, "max": MAX_DURATION, "default": DEFAULT_DURATION},
        "qualities": qualities,
        "default_quality": "1080p"
        if "1080p" in qualities
        else (qualities[-1] if qualities else None),
        "aspect_ratios": {
            ratio: {quality: f"{w}x{h}" for quality, (w, h) in by_quality.items()}
            for ratio, by_quality in card.sizes.items()
        },
        "default_aspect_ratio": "16:9",
        "fps": card.fps,
        "text_to_video": card.text_to_video,
        "image_to_video": card.image_to_video,
        "image_aspect_ratios": list(IMAGE_ONLY_RATIOS) if card.image_to_video else [],
        "pricing": {
            "group": group,
            "unit": "credits per second of video",
            "per_second": {q: float(rate) for q, rate in per_second.items() if q in qualities},
            "rounding": "each task's price is rounded up to whole credits",
        },
    }


def _objects(
    runtime: Runtime, group: str, names: list[str], *, strict: bool
) -> list[dict[str, Any]]:
    """The model objects; a model whose engine cannot be built now is left out of a list
    (`strict=False`) or answers 503 `engine_unavailable` when asked for by name."""
    created = int(runtime.started_at)
    objects = []
    for name in names:
        try:
            card = runtime.catalog.card(name)
        except EngineUnavailable as exc:
            if strict:
                raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "5"}) from exc
            log.warning("model %s left out of the list: %s", name, exc.message)
            continue
        objects.append(
            model_object(card, created, group, runtime.service.prices.per_second(name, group))
        )
    return objects


@router.get(
    "/v1/models",
    summary="The models this server routes, what each accepts and its prices for your key",
    responses={
        200: {"content": {"application/json": {"example": {"object": "list", "data": [_EXAMPLE]}}}}
    },
)
async def list_models(key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    names = runtime.catalog.models()
    data = await run_in_threadpool(partial(_objects, strict=False), runtime, key.group, names)
    return {"object": "list", "data": data}


@router.get(
    "/v1/models/{model_id}",
    summary="One model",
    responses={
        200: {"content": {"application/json": {"example": _EXAMPLE}}},
        **error_responses({404: "No such model", 503: "The model's engine cannot serve now"}),
    },
)
async def get_model(model_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    if model_id not in runtime.catalog.models():
        raise ApiError(404, "model_not_found", f"No model '{model_id}'.", param="model_id")
    (data,) = await run_in_threadpool(
        partial(_objects, strict=True), runtime, key.group, [model_id]
    )
    return data
