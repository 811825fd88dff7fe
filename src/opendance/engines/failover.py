"""Failover across the ordered engines of one public model name.

The next engine is tried only when the current one fails with a retryable `EngineError` before
any upstream work started, i.e. before it saved a `{"phase": "submitted"}` state: one task must
never run twice upstream. The engine in use is part of the saved state, each engine's own state
namespaced under it, so a resumed attempt goes back to the same engine with its own record:

    {"engine_index": 1, "engines": {"0": {"phase": "not_submitted"}, "1": {"phase": ...}}}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from opendance.engines.base import (
    Engine,
    EngineContext,
    EngineError,
    EngineResult,
    VideoJob,
    VideoPlan,
    VideoRequest,
)

log = logging.getLogger(__name__)

FAILOVER_STATE_INVALID: Final = "upstream_state_invalid"


def _work_started(state: dict[str, Any] | None) -> bool:
    return state is not None and state.get("phase") == "submitted"


class _EngineSlot:
    """The context one engine of the list sees: its own resume state, saves namespaced."""

    def __init__(
        self,
        parent: EngineContext,
        index: int,
        states: dict[str, dict[str, Any]],
    ) -> None:
        self._parent = parent
        self._index = index
        self._states = states
        self._resume = states.get(str(index))
        self.work_started = _work_started(self._resume)

    @property
    def task_id(self) -> str:
        return self._parent.task_id

    @property
    def work_dir(self) -> Path:
        return self._parent.work_dir

    @property
    def resume_state(self) -> dict[str, Any] | None:
        return self._resume

    def save_state(self, state: dict[str, Any]) -> None:
        self._states[str(self._index)] = dict(state)
        if _work_started(state):
            self.work_started = True
        self._parent.save_state({"engine_index": self._index, "engines": dict(self._states)})

    def report_progress(self, fraction: float) -> None:
        self._parent.report_progress(fraction)

    def check_cancel(self) -> None:
        self._parent.check_cancel()

    def is_cancelled(self) -> bool:
        return self._parent.is_cancelled()


class FailoverEngine(Engine):
    """Tries its engines in order; plans and estimates as the first one does."""

    kind = "failover"

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("a failover route needs at least one engine")
        self.engines: tuple[Engine, ...] = tuple(engines)

    def __repr__(self) -> str:
        return f"FailoverEngine({list(self.engines)!r})"

    @property
    def model_name(self) -> str:
        # What the route advertises; each result reports the engine that really ran.
        return self.engines[0].model_name

    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        return self.engines[0].plan(request, image_size)

    def estimate_seconds(self, plan: VideoPlan) -> float:
        return self.engines[0].estimate_seconds(plan)

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def close(self) -> None:
        for engine in self.engines:
            try:
                engine.close()
            except Exception:
                log.exception("closing %r failed", engine)

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        first, states = self._resume(ctx.resume_state)
        for index in range(first, len(self.engines)):
            if index != first:
                ctx.save_state({"engine_index": index, "engines": dict(states)})
            slot = _EngineSlot(ctx, index, states)
            try:
                return self.engines[index].generate(job, slot)
            except EngineError as exc:
                last = index == len(self.engines) - 1
                if not exc.retryable or slot.work_started or last:
                    raise
                log.warning(
                    "task %s: engine %d (%s) failed before any work started (%s); trying the next",
                    ctx.task_id,
                    index,
                    self.engines[index].kind,
                    exc.code,
                )
        raise AssertionError("unreachable: the last engine's error is re-raised")

    def _resume(self, state: dict[str, Any] | None) -> tuple[int, dict[str, dict[str, Any]]]:
        """The engine to start with and every engine's saved state."""
        if not state:
            return 0, {}
        if "engine_index" not in state:
            # Saved while this model had a single engine: that engine is the first.
            return 0, {"0": dict(state)}
        index = state.get("engine_index")
        saved = state.get("engines") or {}
        if (
            not isinstance(index, int)
            or not 0 <= index < len(self.engines)
            or not isinstance(saved, dict)
            or not all(isinstance(value, dict) for value in saved.values())
        ):
            raise EngineError(
                FAILOVER_STATE_INVALID,
                "the saved engine record does not match this model's engines (was the route "
                "changed while the task ran?)",
            )
        return index, {str(key): dict(value) for key, value in saved.items()}
