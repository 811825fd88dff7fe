"""The speed settings applied to a loaded transformer: attention backend, FP8, step cache, compile.

Each one is optional and independent; one that cannot be applied on this machine (no FA3 build,
no torchao, a GPU without FP8) is skipped with a log line rather than failing the engine.
The order matters: quantize before compiling, hook the cache before compiling. `apply_speed`
applies them all (with VAE tiling and batched guidance) in that order, and `warm_up` runs the
configured shapes once at start, so compiling and tuning happen before the first user's request.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from opendance.engines.base import VideoJob, VideoRequest
from opendance.engines.diffusers.cfg import BatchedCfg
from opendance.engines.diffusers.family import FamilyAdapter, PlannedShape
from opendance.engines.diffusers.options import DiffusersOptions, WarmupSize
from opendance.engines.diffusers.wan import Wan21Adapter

log = logging.getLogger(__name__)

# Fastest first. `_flash_3` needs a local FlashAttention-3 build (`flash_attn_interface`);
# `_flash_3_hub` downloads one through `kernels` (servers without internet cannot). Measured on
# an H100 with torch 2.11 at Wan 480p's 32760 tokens, PyTorch's own SDPA (`native`) ran at 598
# TFLOP/s, ahead of `_native_cudnn` (558) and `_native_flash` (372): it is the fallback.
AUTO_BACKENDS_CUDA = ("_flash_3", "_flash_3_hub", "native")


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _probe_attention(backend: str, device: Any, dtype: Any, heads: int, head_dim: int) -> None:
    """Run one small attention call through diffusers' dispatcher; raises if it does not work."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    q = torch.randn(1, 256, heads, head_dim, device=device, dtype=dtype)
    out = dispatch_attention_fn(q, q, q, backend=AttentionBackendName(backend))
    if not torch.isfinite(out).all():
        raise RuntimeError(f"attention backend {backend} returned non-finite values")


def set_attention_backend(transformers: list[Any], requested: str, device: Any) -> str:
    """Set the requested backend, or for `auto` the fastest one that works here; returns it."""
    if not transformers:
        return "native"
    first = transformers[0]
    heads = int(getattr(first.config, "num_attention_heads", 2))
    head_dim = int(getattr(first.config, "attention_head_dim", 64))
    dtype = first.dtype
    if requested != "auto":
        candidates: tuple[str, ...] = (requested,)
    elif device.type == "cuda":
        candidates = tuple(
            name
            for name in AUTO_BACKENDS_CUDA
            if (name != "_flash_3" or _importable("flash_attn_interface"))
            and (name != "_flash_3_hub" or _importable("kernels"))
        )
    else:
        candidates = ("native",)
    for name in candidates:
        try:
            for transformer in transformers:
                transformer.set_attention_backend(name)
            _probe_attention(name, device, dtype, heads, head_dim)
        except Exception as exc:
            if requested != "auto":
                raise
            log.info("attention backend %s unavailable here: %s", name, exc)
            continue
        log.info("attention backend: %s", name)
        return name
    for transformer in transformers:
        transformer.reset_attention_backend()
    return "native"


def quantize_fp8(transformer: Any, device: Any) -> bool:
    """FP8 weights and activations (torchao, per-row scales) for the Linear layers of the
    repeated blocks; embeddings and the output projection stay in bf16. Returns whether applied."""
    import torch

    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        log.warning("fp8 skipped: it needs a CUDA GPU of compute capability 8.9 or newer")
        return False
    try:
        torchao: Any = importlib.import_module("torchao.quantization")
    except ImportError as exc:
        log.warning("fp8 skipped: torchao is not installed (%s)", exc)
        return False

    def in_blocks(module: Any, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and "blocks." in fqn

    torchao.quantize_(
        transformer,
        torchao.Float8DynamicActivationFloat8WeightConfig(granularity=torchao.PerRow()),
        filter_fn=in_blocks,
    )
    return True


def enable_first_block_cache(transformer: Any, threshold: float) -> None:
    """Skip the remaining blocks when the first block's residual barely changed (lossy)."""
    diffusers: Any = importlib.import_module("diffusers")
    transformer.enable_cache(diffusers.FirstBlockCacheConfig(threshold=threshold))


def compile_blocks(transformer: Any, *, fullgraph: bool) -> None:
    """Regional compilation: each repeated block compiled once, shapes specialised (no dynamic
    shapes), so every warmed-up size runs its own tuned graph."""
    import torch

    # Each warm-up size is one more graph of the same block code; allow a few sizes.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    transformer.compile_repeated_blocks(fullgraph=fullgraph, dynamic=False)


def apply_speed(
    pipe: Any,
    device: Any,
    opts: DiffusersOptions,
    adapter: FamilyAdapter,
    applied: dict[str, Any],
) -> list[BatchedCfg]:
    """Apply every speed setting to the pipeline's transformers, recording in `applied` what
    really took effect; returns the batched-guidance patches to activate per generation."""
    transformers = [
        module
        for module in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
        if module is not None
    ]
    applied["attention_backend"] = set_attention_backend(
        transformers, opts.attention_backend, device
    )
    applied["fp8"] = bool(opts.fp8) and all(
        quantize_fp8(transformer, device) for transformer in transformers
    )
    if opts.cache == "first_block":
        for transformer in transformers:
            enable_first_block_cache(transformer, opts.cache_threshold)
    applied["cache"] = opts.cache
    compile_transformers = opts.compile if opts.compile is not None else device.type == "cuda"
    if compile_transformers:
        for transformer in transformers:
            compile_blocks(transformer, fullgraph=opts.cache == "none")
    applied["compile"] = compile_transformers
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    applied["vae_tiling"] = opts.vae_tiling
    # LTX pipelines batch guidance themselves; Wan's run the two passes in turn.
    batched_cfg = (
        [BatchedCfg(transformer) for transformer in transformers]
        if opts.batch_cfg and isinstance(adapter, Wan21Adapter)
        else []
    )
    applied["batch_cfg"] = bool(batched_cfg)
    return batched_cfg


def warm_up(
    sizes: list[WarmupSize] | None,
    pipes: Mapping[str, Any],
    compiled: bool,
    shape_of: Callable[[VideoRequest], PlannedShape],
    run: Callable[[VideoJob], object],
) -> None:
    """Run each warm-up shape once (`run` uses two steps: compiles, tunes convolutions).

    Without configured `sizes`, a compiled model warms up its largest 16:9 clip and an
    uncompiled one nothing.
    """
    if sizes is None:
        sizes = [WarmupSize(quality="1080p", image="t2v" not in pipes)]
        if not compiled:
            sizes = []
    for size in sizes:
        if size.image and "i2v" not in pipes:
            continue
        request = VideoRequest(
            prompt="warm-up",
            duration=size.duration,
            quality=size.quality,
            aspect_ratio=size.aspect_ratio,
            seed=0,
            has_image=size.image,
        )
        shape = shape_of(request)
        job = _job_for(request, shape, "warm-up")
        started = time.perf_counter()
        run(job)
        log.info(
            "warmed up %dx%dx%d in %.1f s",
            shape.width,
            shape.height,
            shape.frames,
            time.perf_counter() - started,
        )


def _job_for(request: VideoRequest, shape: PlannedShape, task_id: str) -> VideoJob:
    image = None
    if request.has_image:
        from PIL import Image

        image = Image.new("RGB", (shape.width, shape.height), (128, 128, 128))
    return VideoJob(
        task_id=task_id,
        prompt=request.prompt,
        width=shape.width,
        height=shape.height,
        fps=shape.fps,
        frames=shape.frames,
        duration=request.duration,
        quality=request.quality,
        aspect_ratio=request.aspect_ratio,
        seed=request.seed,
        image=image,
    )
