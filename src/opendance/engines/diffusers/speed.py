"""The speed settings applied to a loaded transformer: attention backend, FP8, step cache, compile.

Each one is optional and independent; one that cannot be applied on this machine (no FA3 build,
no torchao, a GPU without FP8) is skipped with a log line rather than failing the engine.
The order matters: quantize before compiling, hook the cache before compiling.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

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
