"""The `diffusers` engine: open-weight text- and image-to-video models on the user's own GPU.

Importing this package needs neither torch nor diffusers; `DiffusersEngine.start()` does, and
raises EngineError("engine_unavailable") without them (install `opendance[gpu]`).
"""

from opendance.engines.diffusers.engine import DiffusersEngine
from opendance.engines.diffusers.options import DiffusersOptions, WarmupSize

__all__ = ["DiffusersEngine", "DiffusersOptions", "WarmupSize", "from_options"]


def from_options(options: dict[str, object]) -> DiffusersEngine:
    """The route factory: a route's `options` are `DiffusersOptions`."""
    return DiffusersEngine(options)
