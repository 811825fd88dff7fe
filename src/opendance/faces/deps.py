"""The faces' typed way to the runtime: `RuntimeDep` in a route's signature, `runtime_of` where
a helper already holds the request. mypy then checks every call a face makes into the core."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from opendance.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    """The runtime the app was built with (`create_app` puts it on the app's state)."""
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]
