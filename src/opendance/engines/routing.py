"""Model routes: which engine (or ordered engines, for failover) serves each public model name.

Engines are built lazily from the route configuration and started once, in the worker thread
that first needs them (a GPU engine loads its weights there, not in the API's request path).
Heavy engine modules are imported only when a route names them.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from opendance.engines.base import Engine, EngineError, EngineUnavailable, VideoPlan, VideoRequest
from opendance.settings import Route, Settings

EngineFactory = Callable[[dict[str, Any]], Engine]

#: engine kind -> "module:factory" (a callable taking the route's options dict).
ENGINE_FACTORIES: dict[str, str] = {
    "sandbox": "opendance.engines.sandbox:from_options",
    "diffusers": "opendance.engines.diffusers:from_options",
    "ark": "opendance.engines.upstream.ark:from_options",
    "evolink": "opendance.engines.upstream.evolink:from_options",
    "openai_videos": "opendance.engines.upstream.openai_videos:from_options",
    "lightx2v": "opendance.engines.upstream.lightx2v:from_options",
}


def build_engine(kind: str, options: dict[str, Any]) -> Engine:
    target = ENGINE_FACTORIES.get(kind)
    if target is None:
        raise ValueError(f"unknown engine kind '{kind}' (known: {', '.join(ENGINE_FACTORIES)})")
    module_name, _, attr = target.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module_name), attr)
    return factory(options)


def build_route(route: Route) -> Engine:
    engines = [build_engine(item.engine, item.options) for item in route.engines]
    if len(engines) == 1:
        return engines[0]
    from opendance.engines.failover import FailoverEngine

    return FailoverEngine(engines)


@dataclass(frozen=True)
class RouteProblem:
    """Why one engine of one route cannot serve, as one line for the operator."""

    model: str
    engine: str
    problem: str

    def line(self) -> str:
        return f"route {self.model!r} (engine {self.engine!r}): {self.problem}"


def describe_failure(exc: BaseException, prefix: str = "options.") -> str:
    """One line for a failure to build or check an engine (pydantic's errors are multi-line);
    `prefix` goes before each field's path."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            parts.append(f"{prefix}{where}: {error['msg']}" if where else error["msg"])
        return "; ".join(parts)
    if isinstance(exc, EngineError):
        return exc.message
    return " ".join(str(exc).split()) or type(exc).__name__


_BUILD_FAILURES = (ValueError, TypeError, ImportError, OSError, EngineError)


def check_routes(settings: Settings) -> list[RouteProblem]:
    """Every problem in the configured routes, found without loading a model or calling out."""
    problems: list[RouteProblem] = []
    for model, route in sorted(settings.routes.items()):
        for item in route.engines:
            try:
                build_engine(item.engine, item.options).check()
            except _BUILD_FAILURES as exc:
                problems.append(RouteProblem(model, item.engine, describe_failure(exc)))
    return problems


class EngineRouter:
    """Maps public model names to engine instances; the service's `Planner`."""

    def __init__(self, settings: Settings) -> None:
        self._routes = dict(settings.routes)
        self._engines: dict[str, Engine] = {}
        self._started: set[int] = set()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self.lanes = max(1, settings.workers)

    def models(self) -> list[str]:
        return sorted(self._routes)

    def has_model(self, model: str) -> bool:
        return model in self._routes

    def engine(self, model: str) -> Engine:
        """The model's engine, built on first use; `EngineUnavailable` when it cannot be."""
        with self._lock:
            engine = self._engines.get(model)
            if engine is None:
                try:
                    engine = build_route(self._routes[model])
                except EngineUnavailable:
                    raise
                except _BUILD_FAILURES as exc:
                    raise EngineUnavailable(
                        f"the model {model!r} cannot be served now: {describe_failure(exc)}"
                    ) from exc
                self._engines[model] = engine
            return engine

    def started_engine(self, model: str) -> Engine:
        """The model's engine, loaded and warmed up (once) before first use."""
        engine = self.engine(model)
        if id(engine) not in self._started:
            with self._start_lock:
                if id(engine) not in self._started:
                    engine.start()
                    self._started.add(id(engine))
        return engine

    def plan(
        self, model: str, request: VideoRequest, image_size: tuple[int, int] | None = None
    ) -> VideoPlan:
        return self.engine(model).plan(request, image_size)

    def estimate_seconds(self, model: str, plan: VideoPlan) -> float:
        return self.engine(model).estimate_seconds(plan)

    def concurrency(self, model: str) -> int:
        return self.lanes

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                if id(engine) in self._started:
                    engine.close()
            self._engines.clear()
            self._started.clear()
