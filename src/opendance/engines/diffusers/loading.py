"""Loading a diffusers pipeline: which family it is, reading it, and placing it on its device.

The engine serves whatever `from_pretrained` gives for a hub id or a local folder; this module
reads the pipeline's `model_index.json` to pick the family adapter, loads the weights in the
configured dtypes, moves them to the device (or sets up CPU offload), and builds the text- and
image-to-video pipelines that share one set of modules.

torch and diffusers are imported only inside the functions that need them (`_require_heavy` says
when they are missing), so importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opendance.engines.base import EngineError, EngineUnavailable
from opendance.engines.diffusers.family import FamilyAdapter
from opendance.engines.diffusers.ltx import LTXAdapter
from opendance.engines.diffusers.options import DiffusersOptions
from opendance.engines.diffusers.wan import Wan21Adapter, Wan22TI2VAdapter

log = logging.getLogger(__name__)

ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "wan21": Wan21Adapter,
    "wan22_ti2v": Wan22TI2VAdapter,
    "ltx": LTXAdapter,
}

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def detect_family(model_index: Mapping[str, Any]) -> str:
    """The family of a pipeline from its `model_index.json`."""
    class_name = str(model_index.get("_class_name", ""))
    if class_name in ("WanPipeline", "WanImageToVideoPipeline"):
        return "wan22_ti2v" if model_index.get("expand_timesteps") else "wan21"
    if class_name in ("LTXPipeline", "LTXImageToVideoPipeline"):
        return "ltx"
    raise EngineError(
        "unsupported_model",
        f"no adapter for the pipeline class {class_name or '(none)'}; set `family` or use a "
        "Wan 2.1, Wan 2.2 TI2V or LTX-Video model",
    )


def _require_heavy() -> tuple[Any, Any]:
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise EngineUnavailable(
            f"the diffusers engine needs torch and diffusers ({exc}): install opendance[gpu]"
        ) from exc
    return torch, diffusers


def read_model_index(model: str) -> dict[str, Any]:
    """The `model_index.json` of a local folder, or of a hub id from the hub cache (a download
    only where the hub is reachable)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / "model_index.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "model_index.json"))
        except Exception as exc:
            raise EngineUnavailable(f"cannot read model_index.json of {model}: {exc}") from exc
    try:
        index: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineUnavailable(f"cannot read {path}: {exc}") from exc
    return index


def resolve_device(torch: Any, requested: str) -> Any:
    """The torch device for the `device` option (`auto`: CUDA when there is a GPU)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("engine_unavailable", "device cuda requested but no CUDA GPU found")
    return torch.device(requested)


def resolve_dtypes(torch: Any, options: DiffusersOptions, device: Any) -> tuple[Any, Any]:
    """`(dtype, vae_dtype)`: `auto` is bfloat16 on CUDA (float32 on CPU), and a float32 VAE."""
    dtype = getattr(torch, _DTYPES[options.dtype]) if options.dtype != "auto" else None
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae_dtype = torch.float32 if options.vae_dtype == "auto" else getattr(torch, options.vae_dtype)
    return dtype, vae_dtype


def load_pipeline(model: str, dtype: Any, vae_dtype: Any) -> Any:
    """`DiffusionPipeline.from_pretrained` with the VAE in its own dtype."""
    import diffusers

    pipeline_class: Any = diffusers.DiffusionPipeline
    dtypes = {"default": dtype, "vae": vae_dtype}
    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (0, 42) else "torch_dtype"
    log.info("loading %s (%s, VAE %s)", model, dtype, vae_dtype)
    try:
        return pipeline_class.from_pretrained(model, **{key: dtypes})
    except (OSError, ValueError) as exc:
        raise EngineError("model_load_failed", f"cannot load {model}: {exc}") from exc


def place(torch: Any, pipe: Any, device: Any, offload: str) -> str:
    """Move the pipeline to `device`, or set up the requested CPU offload; returns the offload
    really in effect (none off CUDA)."""
    if device.type != "cuda" or offload == "none":
        if offload != "none":
            log.info("offload=%s ignored on %s", offload, device)
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        import importlib

        hooks: Any = importlib.import_module("diffusers.hooks")
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name != "text_encoder":
                component.to(device)
        hooks.apply_group_offloading(
            pipe.text_encoder,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
        )
    return offload if device.type == "cuda" else "none"


def build_pipelines(pipe: Any, adapter: FamilyAdapter) -> dict[str, Any]:
    """The text- and image-to-video pipelines this model can run, sharing its modules."""
    base = type(pipe).__name__
    if base == adapter.t2v_class:
        pipes = {"t2v": pipe}
        if adapter.derivable:
            pipes["i2v"] = _derive(pipe, adapter.i2v_class, adapter)
    elif base == adapter.i2v_class:
        pipes = {"i2v": pipe}
        if adapter.derivable:
            pipes["t2v"] = _derive(pipe, adapter.t2v_class, adapter)
    else:
        raise EngineError("unsupported_model", f"{base} is not a {adapter.name} pipeline class")
    return pipes


def _derive(pipe: Any, class_name: str, adapter: FamilyAdapter) -> Any:
    """Build another pipeline class on the same modules. Unlike `from_pipe`, this never
    casts the shared modules (from_pipe casts every module to one dtype)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {name: module for name, module in pipe.components.items() if name in accepted}
    for name, value in adapter.derived_config(dict(pipe.config)).items():
        if name in accepted:
            kwargs[name] = value
    derived = cls(**kwargs)
    derived.set_progress_bar_config(disable=True)
    return derived
