"""What each routed model can make, asked of its engines once: for `GET /v1/models`.

The sizes are the engine's own plans (a model engine maps the contract's sizes to the nearest it
can make, so the listing says what a client will really get), and image-to-video support is
whatever the engine's plan accepts. Answers are kept: a route does not change while it runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from opendance.engines.base import EngineError, EngineUnavailable, VideoRequest
from opendance.engines.routing import EngineRouter
from opendance.media.sizes import IMAGE_ONLY_RATIOS, NAMED_RATIOS, QUALITIES
from opendance.settings import Settings

MIN_DURATION = 2
MAX_DURATION = 12
DEFAULT_DURATION = 5
#: The image a capability probe pretends to have (any landscape size will do).
_PROBE_IMAGE = (1280, 720)


@dataclass(frozen=True)
class ModelCard:
    """One routed model: its engines and what it makes for each quality and ratio."""

    name: str
    engines: tuple[str, ...]
    runs: str
    fps: int
    #: ratio -> quality -> (width, height); a combination the engine refuses is left out.
    sizes: dict[str, dict[str, tuple[int, int]]]
    text_to_video: bool
    image_to_video: bool


class ModelCatalog:
    def __init__(self, router: EngineRouter, settings: Settings) -> None:
        self._router = router
        self._routes = settings.routes
        self._cards: dict[str, ModelCard] = {}
        self._lock = threading.Lock()

    def models(self) -> list[str]:
        return self._router.models()

    def card(self, model: str) -> ModelCard:
        """The model's card (KeyError if it is not routed); built on first use."""
        with self._lock:
            card = self._cards.get(model)
            if card is None:
                card = self._describe(model)
                self._cards[model] = card
            return card

    def _describe(self, model: str) -> ModelCard:
        route = self._routes[model]
        engine = self._router.engine(model)
        sizes: dict[str, dict[str, tuple[int, int]]] = {}
        fps = 0
        for ratio in NAMED_RATIOS:
            for quality in QUALITIES:
                request = VideoRequest(
                    prompt="", duration=DEFAULT_DURATION, quality=quality, aspect_ratio=ratio
                )
                try:
                    plan = engine.plan(request, None)
                except EngineUnavailable:
                    raise
                except EngineError:
                    continue
                sizes.setdefault(ratio, {})[quality] = (plan.width, plan.height)
                fps = fps or plan.fps
        return ModelCard(
            name=model,
            engines=tuple(item.engine for item in route.engines),
            runs=engine.model_name,
            fps=fps,
            sizes=sizes,
            text_to_video=bool(sizes),
            image_to_video=_accepts_images(engine),
        )


def _accepts_images(engine: object) -> bool:
    plan = getattr(engine, "plan", None)
    if plan is None:
        return False
    request = VideoRequest(
        prompt="",
        duration=DEFAULT_DURATION,
        quality=QUALITIES[0],
        aspect_ratio=IMAGE_ONLY_RATIOS[-1],
        has_image=True,
    )
    try:
        plan(request, _PROBE_IMAGE)
    except EngineError:
        return False
    return True
