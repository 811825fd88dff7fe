"""What the fast tier changes in a loaded pipeline: LoRA adapters fused into the weights, and
the scheduler with its timestep shift.

A few-step distilled model usually ships as a LoRA over the base weights (lightx2v's Wan
distill LoRAs, CausVid): fused at load (`fuse_lora`, then the adapter layers unloaded), a step
costs exactly what it did without it. Guidance off (`guidance_scale` 1) is the engine's own
business: one transformer pass a step, no negative prompt encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from opendance.engines.base import EngineError
from opendance.engines.diffusers.options import LoraWeights

log = logging.getLogger(__name__)

#: scheduler option -> (diffusers class, the overrides that make it a flow-matching sampler).
SCHEDULERS: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "unipc": (
        "UniPCMultistepScheduler",
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True},
    ),
    "dpm": (
        "DPMSolverMultistepScheduler",
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True},
    ),
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
}


def fuse_loras(pipe: Any, loras: Sequence[LoraWeights]) -> list[str]:
    """Load each LoRA, fuse them all at their scales, drop the adapter layers; their names."""
    if not loras:
        return []
    names = [f"lora{index}" for index in range(len(loras))]
    try:
        for name, lora in zip(names, loras, strict=True):
            kwargs = {"weight_name": lora.weight_name} if lora.weight_name else {}
            pipe.load_lora_weights(lora.path, adapter_name=name, **kwargs)
        pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
    except (OSError, ValueError, ImportError) as exc:
        raise EngineError("model_load_failed", f"cannot fuse the LoRA adapters: {exc}") from exc
    log.info("fused %d LoRA adapter(s) into the weights", len(loras))
    return [lora.path for lora in loras]


def set_scheduler(pipe: Any, name: str, shift: float | None) -> str:
    """Swap in the named scheduler (from the model's own config) and/or set its shift; the
    class really in use."""
    import diffusers

    current = pipe.scheduler
    if name == "default":
        if shift is None:
            return type(current).__name__
        cls: Any = type(current)
        overrides: dict[str, Any] = {}
    else:
        class_name, overrides = SCHEDULERS[name]
        cls = getattr(diffusers, class_name)
        overrides = dict(overrides)
    if shift is not None:
        keys = set(cls.from_config(current.config).config)
        if "flow_shift" in keys:
            overrides["flow_shift"] = shift
        elif "shift" in keys:
            overrides["shift"] = shift
        else:
            raise EngineError("unsupported_option", f"{cls.__name__} has no timestep shift to set")
    pipe.scheduler = cls.from_config(current.config, **overrides)
    return str(cls.__name__)
