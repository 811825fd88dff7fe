"""The plain diffusers WanPipeline against opendance's diffusers engine, on one GPU, same weights.

    PYTHONPATH=src python bench/engine.py --steps 8 --out OUTDIR
    PYTHONPATH=src python bench/engine.py --full 50 --variants compile,cache,fp8 --out OUTDIR
    PYTHONPATH=src python bench/engine.py --variants compile --fast-tier --lora --out OUTDIR
    PYTHONPATH=src python bench/engine.py --tiny --width 128 --height 64 --frames 9 \
        --variants engine --fast-tier --fast-base engine --lora --out OUTDIR   # CPU smoke test

Architecture: Wan2.1-T2V-1.3B at its real full size, with random weights (no download needed:
the compute is the same). Transformer: WanTransformer3DModel, 30 layers, 12 heads x 128, FFN
8960, patch (1, 2, 2), 16 channels, text_dim 4096, freq_dim 256, loaded as `from_pretrained(...,
torch_dtype=bfloat16)` leaves it (bf16, with the `_keep_in_fp32_modules` in float32). VAE:
AutoencoderKLWan's default config (the Wan 2.1 VAE), float32 as the model card loads it. Text
encoder: a UMT5-XXL-sized UMT5EncoderModel (24 layers, d_model 4096, 64 heads, d_ff 10240, vocab
256384), bf16, with a byte-level tokenizer padded to 512 tokens as Wan's is. Scheduler:
UniPCMultistepScheduler with flow_shift 3.0, as Wan2.1-T2V-1.3B-Diffusers ships.

The plain pipeline is called as diffusers documents it (prompt, negative prompt, 832x480, 81
frames, guidance 5). The engine gets a WanPipeline over the same modules and applies its
settings cumulatively, one variant after the other, so each setting's effect is the difference
between consecutive rows. Per-step times come from step-callback timestamps taken after a CUDA
synchronize, the same for both. A 50-step video is extrapolated as
  before-first-step + 50 x median seconds/step + after-last-step (decode, frames out, MP4)
unless `--full` runs it for real.

Accuracy: one transformer forward on fixed random inputs, compared with a float32 copy of the
same transformer (relative L2 error); a setting is lossless when its error matches the plain
bf16 pipeline's.

`--fast-tier` adds the fast tier after the variants: the engine with the settings of
`--fast-base` (default `compile`, the lossless best) and `num_inference_steps=4`,
`guidance_scale=1.0` (one transformer pass a step, no negative prompt), each timed request to
MP4 for real (`--fast-runs` requests, a new prompt each, median reported), once per VAE dtype
in `--fast-vae`. With `--lora`, a random rank-`--lora-rank` LoRA made with peft
(`pip install peft`) on the transformer's attention projections (to_q, to_k, to_v, to_out.0)
is fused into the weights and its layers unloaded first, as a step-distill LoRA is served: a
fused LoRA costs no FLOPs. `--fast-tier` also times writing the plain pipeline's frames to MP4
(`diffusers.utils.encode_video`), so the plain row is request to MP4 too, and prints a tier
table: plain, engine lossless, fast tier.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The tiny random-weight models the tests build live in the test helpers (repository root).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = (
    "A golden retriever surfing a turquoise wave at sunset, cinematic slow motion, spray "
    "glittering in the backlight, shot on 35mm film with a shallow depth of field"
)
# The negative prompt of the diffusers Wan example.
NEGATIVE = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)

WAN21_T2V_1_3B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

UMT5_XXL = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "pad_token_id": 0,
    "eos_token_id": 1,
}

# Cumulative: each variant adds one setting to the previous one's (cache and fp8 both build on
# compile, not on each other).
VARIANTS: dict[str, dict[str, Any]] = {
    "engine": {"attention_backend": "native", "batch_cfg": False, "compile": False},
    "cudnn": {"attention_backend": "auto", "batch_cfg": False, "compile": False},
    "batch_cfg": {"attention_backend": "auto", "batch_cfg": True, "compile": False},
    "compile": {"attention_backend": "auto", "batch_cfg": True, "compile": True},
    "cache": {
        "attention_backend": "auto",
        "batch_cfg": True,
        "compile": True,
        "cache": "first_block",
        "cache_threshold": 0.2,
    },
    "fp8": {"attention_backend": "auto", "batch_cfg": True, "compile": True, "fp8": True},
}
LABELS = {
    "plain": "plain diffusers WanPipeline (bf16, SDPA, VAE fp32)",
    "engine": "engine, no speed settings (prompt cache only)",
    "cudnn": "+ attention backend auto",
    "batch_cfg": "+ batched CFG",
    "compile": "+ regional torch.compile (lossless best)",
    "cache": "compile + first-block cache 0.2 (lossy)",
    "fp8": "compile + FP8 weights/activations (torchao)",
    "fast": "fast tier: 4 steps, guidance 1",
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
FAST_STEPS = 4


DEVICE = "cuda"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def allocated() -> int:
    import torch

    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


class BenchContext:
    """An EngineContext recording when each step's progress arrives."""

    def __init__(self, work_dir: Path) -> None:
        self.task_id = "bench"
        self.work_dir = work_dir
        self.resume_state: dict[str, Any] | None = None
        self.times: list[float] = []

    def save_state(self, state: dict[str, Any]) -> None:
        self.resume_state = state

    def report_progress(self, fraction: float) -> None:
        self.times.append(time.perf_counter())

    def check_cancel(self) -> None:
        pass

    def is_cancelled(self) -> bool:
        return False


def keep_fp32(model: Any, dtype: Any) -> Any:
    """Cast like `from_pretrained(torch_dtype=dtype)`: the `_keep_in_fp32_modules` stay fp32."""
    import torch

    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(part in name.split(".") for part in keep):
            module.to(torch.float32)
    for name, param in model.named_parameters():
        if any(part in name.split(".") for part in keep):
            param.data = param.data.to(torch.float32)
    return model


def build_modules(device: Any, tiny: bool) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from tests.helpers import pipelines as tiny_pipelines
    from transformers import UMT5Config, UMT5EncoderModel

    transformer_config = dict(WAN21_T2V_1_3B)
    text_config = dict(UMT5_XXL)
    vae_config: dict[str, Any] = {}
    if tiny:
        transformer_config.update(
            num_attention_heads=2, attention_head_dim=16, num_layers=2, ffn_dim=32, text_dim=64
        )
        text_config.update(d_model=64, d_ff=32, num_layers=1, num_heads=2, vocab_size=300)
        vae_config = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}
    torch.manual_seed(0)
    with torch.device(device):
        transformer = keep_fp32(WanTransformer3DModel(**transformer_config), torch.bfloat16)
        vae = AutoencoderKLWan(**vae_config).to(torch.float32)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            text_encoder = UMT5EncoderModel(UMT5Config(**text_config)).eval()
        finally:
            torch.set_default_dtype(previous)
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tiny_pipelines.build_tokenizer(),
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=3.0,
        ),
    }


def step_stats(times: list[float], started: float, ended: float) -> dict[str, float]:
    intervals = [b - a for a, b in zip(times, times[1:], strict=False)]
    per_step = statistics.median(intervals[1:] or intervals)
    return {
        "s_per_step": per_step,
        "before_steps_s": times[0] - started - per_step,
        "after_steps_s": ended - times[-1],
        "wall_s": ended - started,
        "steps": len(times),
    }


def run_plain(pipe: Any, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    times: list[float] = []

    def on_step_end(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        sync()
        times.append(time.perf_counter())
        return {}

    def call(n: int) -> Any:
        return pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            guidance_scale=5.0,
            num_inference_steps=n,
            generator=torch.Generator(device=DEVICE).manual_seed(0),
            callback_on_step_end=on_step_end,
        ).frames

    call(2)
    times.clear()
    reset_peak()
    sync()
    started = time.perf_counter()
    frames = call(steps)
    sync()
    ended = time.perf_counter()
    result = step_stats(times, started, ended)
    result["peak_gib"] = peak_gib()
    result["frames_shape"] = list(frames.shape)
    if getattr(args, "fast_tier", False):
        result["mp4_s"] = plain_mp4_seconds(frames)
    return result


def plain_mp4_seconds(frames: Any) -> float:
    """Seconds to write the plain pipeline's frames (numpy, [0, 1]) as H.264 MP4 the way
    diffusers does it (`diffusers.utils.encode_video`, PyAV)."""
    from diffusers.utils import encode_video

    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        encode_video(frames[0], fps=16, output_path=str(Path(work) / "plain.mp4"))
        return time.perf_counter() - started


def run_engine(
    modules: dict[str, Any], options: dict[str, Any], steps: int, args: argparse.Namespace
) -> tuple[Any, dict[str, Any]]:
    from diffusers import WanPipeline

    from opendance.engines.diffusers import DiffusersEngine

    pipe = WanPipeline(**modules)
    engine = DiffusersEngine(
        {
            "model": "Wan2.1-T2V-1.3B (random weights, in memory)",
            "reported_model": "Wan2.1-T2V-1.3B",
            "device": DEVICE,
            "num_inference_steps": steps,
            "size_override": (args.width, args.height),
            "max_frames": args.frames,
            "warmup": [{"quality": "480p", "duration": 5}],
            "negative_prompt": NEGATIVE,
            **options,
        },
        pipeline=pipe,
    )
    started = time.perf_counter()
    engine.start()
    start_s = time.perf_counter() - started
    stats = generate_once(engine, args, PROMPT)
    stats["start_s"] = start_s
    stats["applied"] = dict(engine.applied)
    return engine, stats


def generate_once(engine: Any, args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    """One request through `engine.generate` (text encoding to MP4 written), timed."""
    from opendance.engines.base import VideoJob

    job = VideoJob(
        task_id="bench",
        prompt=prompt,
        width=args.width,
        height=args.height,
        fps=16,
        frames=args.frames,
        duration=5,
        quality="480p",
        aspect_ratio="16:9",
        seed=0,
    )
    with tempfile.TemporaryDirectory() as work:
        ctx = BenchContext(Path(work))
        reset_peak()
        sync()
        started = time.perf_counter()
        result = engine.generate(job, ctx)
        ended = time.perf_counter()
        mp4_bytes = result.path.stat().st_size
    stats = step_stats(ctx.times, started, ended)
    stats["peak_gib"] = peak_gib()
    stats["result"] = {
        "width": result.width,
        "height": result.height,
        "frames": result.frames,
        "mp4_bytes": mp4_bytes,
    }
    return stats


def fuse_random_lora(transformer: Any, rank: int) -> dict[str, Any]:
    """A random LoRA (peft) on the attention projections, fused into the weights and its
    adapter layers unloaded, as a step-distill LoRA is served; what was done."""
    import torch

    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise RuntimeError(f"--lora needs peft (pip install peft): {exc}") from exc

    before = {
        name: param.detach().float().norm().item()
        for name, param in transformer.named_parameters()
        if name.endswith("attn1.to_q.weight")
    }
    torch.manual_seed(2)
    started = time.perf_counter()
    transformer.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False),
        adapter_name="fast_tier",
    )
    adapted = sum(1 for name, _ in transformer.named_modules() if name.endswith("lora_A"))
    # peft's non-identity init (A and B random), B scaled by 0.01 to keep the delta small.
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.mul_(0.01)
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    seconds = time.perf_counter() - started
    left = sum(1 for name, _ in transformer.named_modules() if "lora" in name)
    after = {
        name: param.detach().float().norm().item()
        for name, param in transformer.named_parameters()
        if name in before
    }
    changed = sum(1 for name in before if abs(after[name] - before[name]) > 0)
    if left or not adapted or not changed:
        raise RuntimeError(f"LoRA not fused: {adapted} adapted, {left} left, {changed} changed")
    return {
        "rank": rank,
        "targets": LORA_TARGETS,
        "adapted_linears": adapted,
        "lora_modules_left": left,
        "attn1_to_q_weights_changed": f"{changed}/{len(before)}",
        "fuse_s": seconds,
    }


def run_fast_tier(
    modules: dict[str, Any],
    args: argparse.Namespace,
    inputs: dict[str, Any],
    reference: Any,
) -> list[dict[str, Any]]:
    """The fast tier: 4 steps, guidance 1 (and the fused LoRA, applied before), once per VAE
    dtype; each row the median of `--fast-runs` real requests."""
    import torch

    rows = []
    for vae_dtype in [v for v in args.fast_vae.split(",") if v]:
        options = {
            **VARIANTS[args.fast_base],
            "num_inference_steps": FAST_STEPS,
            "guidance_scale": 1.0,
            "vae_dtype": vae_dtype,
        }
        label = f"{LABELS['fast']}{', LoRA fused' if args.lora else ''}, VAE {vae_dtype}"
        row: dict[str, Any] = {"name": "fast", "label": label, "options": options}
        transformer = modules["transformer"]
        if getattr(transformer, "is_cache_enabled", False):
            transformer.disable_cache()
        fast_modules = dict(modules)
        if vae_dtype != "float32":
            fast_modules["vae"] = copy.deepcopy(modules["vae"]).to(getattr(torch, vae_dtype))
        try:
            engine, first = run_engine(fast_modules, options, FAST_STEPS, args)
            runs = [first]
            for index in range(1, args.fast_runs):
                runs.append(generate_once(engine, args, f"{PROMPT}, take {index + 1}"))
            median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            row.update(median)
            row["start_s"] = first["start_s"]
            row["applied"] = first["applied"]
            row["video_steps"] = FAST_STEPS
            row["walls_s"] = [r["wall_s"] for r in runs]
            row["peak_gib"] = max(r["peak_gib"] for r in runs)
            if not args.lora and options.get("cache", "none") == "none":
                row["forward_rel_err"] = forward_error(transformer, inputs, reference)
            engine.close()
        except Exception as exc:
            logging.exception("fast tier (VAE %s) failed", vae_dtype)
            row["error"] = repr(exc)[:300]
        del fast_modules
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def forward_error(transformer: Any, inputs: dict[str, Any], reference: Any) -> float:
    """Relative L2 error of one batch-2 forward (two copies of one sample, the shape batched
    CFG compiles for) against the float32 reference of that sample."""
    import torch

    batch = {key: torch.cat([value, value]) for key, value in inputs.items()}
    with torch.no_grad():
        out = transformer(**batch, return_dict=False)[0].float()
    reference = torch.cat([reference, reference])
    return float((out - reference).norm() / reference.norm())


def vae_bench(vae: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Decode time and peak memory of one 81-frame latent: fp32, fp32 tiled, bf16."""
    import torch

    latent_frames = (args.frames - 1) // 4 + 1
    latents = torch.randn(1, 16, latent_frames, args.height // 8, args.width // 8, device="cuda")
    rows = []
    for label, dtype, tiled in [
        ("VAE decode fp32", torch.float32, False),
        ("VAE decode fp32, tiled", torch.float32, True),
        ("VAE decode bf16", torch.bfloat16, False),
    ]:
        model = vae if dtype == torch.float32 else copy.deepcopy(vae).to(dtype)
        if tiled:
            model.enable_tiling()
        with torch.no_grad():
            model.decode(latents.to(dtype), return_dict=False)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            started = time.perf_counter()
            model.decode(latents.to(dtype), return_dict=False)
            torch.cuda.synchronize()
        rows.append(
            {
                "label": label,
                "seconds": time.perf_counter() - started,
                "extra_peak_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
            }
        )
        if tiled:
            model.disable_tiling()
        if model is not vae:
            del model
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def attention_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Self-attention alone at the video's sequence length, per diffusers attention backend."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)
    q, k, v = (
        torch.randn(2, tokens, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )
    flops = 4 * 2 * tokens**2 * 12 * 128
    rows = []
    for name in ["native", "_native_cudnn", "_native_flash", "_native_efficient"]:
        try:
            backend = AttentionBackendName(name)
            for _ in range(2):
                dispatch_attention_fn(q, k, v, backend=backend)
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(5):
                dispatch_attention_fn(q, k, v, backend=backend)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / 5
            rows.append({"backend": name, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12})
        except Exception as exc:
            rows.append({"backend": name, "error": repr(exc)[:200]})
    return rows


def cancel_check(engine: Any, args: argparse.Namespace) -> dict[str, float]:
    """GPU memory held before a job and after a job cancelled at its second step."""

    from opendance.engines.base import TaskCancelled, VideoJob

    class CancellingContext(BenchContext):
        def report_progress(self, fraction: float) -> None:
            super().report_progress(fraction)
            if len(self.times) >= 2:
                raise TaskCancelled("cancelled by the benchmark")

    job = VideoJob("cancel", PROMPT, args.width, args.height, 16, args.frames, 5, "480p", "16:9")
    gc.collect()
    sync()
    before = allocated()
    with tempfile.TemporaryDirectory() as work:
        ctx = CancellingContext(Path(work))
        started = time.perf_counter()
        with contextlib.suppress(TaskCancelled):
            engine.generate(job, ctx)
        stopped = time.perf_counter() - ctx.times[-1]
    sync()
    return {
        "allocated_before_gib": before / 2**30,
        "allocated_after_gib": allocated() / 2**30,
        "seconds_from_cancel_to_return": stopped,
        "steps_run": len(ctx.times),
        "wall_s": time.perf_counter() - started,
    }


def environment() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    info = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except ImportError:
        info["torchao"] = "not installed"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    except OSError:
        pass
    return info


def markdown(report: dict[str, Any]) -> str:
    steps = report["extrapolate_steps"]
    rows = report["rows"]
    plain = next((r for r in rows if r["name"] == "plain"), None)
    lines = [
        "| setting | s/step | before steps (s) | after steps (s) | "
        f"s/video ({steps} steps) | speedup | peak GiB | fwd rel. err vs fp32 | start (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = row.get("label") or LABELS.get(row["name"], row["name"])
        if "error" in row:
            lines.append(f"| {label} | failed: {row['error']} |")
            continue
        if "video_steps" in row:
            # The fast tier runs its few steps for real: its s/video is the request's wall time.
            video = row["wall_s"]
            label += f" ({row['video_steps']} steps, real)"
        else:
            video = row["before_steps_s"] + steps * row["s_per_step"] + row["after_steps_s"]
        row["s_per_video"] = video
        speedup = ""
        if plain is not None and "s_per_step" in plain:
            base = plain["before_steps_s"] + steps * plain["s_per_step"] + plain["after_steps_s"]
            speedup = f"{base / video:.2f}x"
        err = row.get("forward_rel_err")
        lines.append(
            f"| {label} | {row['s_per_step']:.3f} | "
            f"{row['before_steps_s']:.2f} | {row['after_steps_s']:.2f} | {video:.1f} | {speedup} | "
            f"{row['peak_gib']:.1f} | {'' if err is None else f'{err:.2e}'} | "
            f"{row.get('start_s', 0):.0f} |"
        )
    for full in report.get("full", []):
        lines.append("")
        lines.append(
            f"Full run, {full['steps']} steps, {LABELS.get(full['name'], full['name'])}: "
            f"{full['wall_s']:.1f} s wall, {full['s_per_step']:.3f} s/step, "
            f"peak {full['peak_gib']:.1f} GiB"
        )
    if report.get("lora"):
        lora = report["lora"]
        lines += [
            "",
            f"LoRA: random rank {lora['rank']} on {', '.join(lora['targets'])} "
            f"({lora['adapted_linears']} Linears), fused and unloaded in {lora['fuse_s']:.1f} s; "
            f"{lora['lora_modules_left']} LoRA modules left.",
        ]
    if report.get("lora_error"):
        lines += ["", f"LoRA: fusing failed ({report['lora_error']}); fast tier run without it."]
    if report.get("tiers"):
        lines += ["", *tier_table(report)]
    if report.get("vae"):
        lines += ["", "| VAE (81 frames 832x480) | seconds | extra peak GiB |", "|---|---|---|"]
        for row in report["vae"]:
            lines.append(f"| {row['label']} | {row['seconds']:.2f} | {row['extra_peak_gib']:.1f} |")
    if report.get("attention"):
        lines += [
            "",
            "| attention backend (batch 2, 32760 tokens, 12x128) | ms | TFLOP/s |",
            "|---|---|---|",
        ]
        for row in report["attention"]:
            if "error" in row:
                lines.append(f"| {row['backend']} | failed: {row['error']} | |")
            else:
                lines.append(f"| {row['backend']} | {row['ms']:.1f} | {row['tflops']:.0f} |")
    if report.get("cancel"):
        c = report["cancel"]
        lines += [
            "",
            f"Cancel at step 2: {c['steps_run']} steps ran, returned "
            f"{c['seconds_from_cancel_to_return']:.2f} s after the cancel; GPU memory allocated "
            f"{c['allocated_before_gib']:.2f} GiB before the job, "
            f"{c['allocated_after_gib']:.2f} GiB after.",
        ]
    if report.get("text_encode_s") is not None:
        lines += [
            "",
            f"UMT5-XXL-size text encoding, one 512-token prompt: {report['text_encode_s']:.3f} s",
        ]
    return "\n".join(lines) + "\n"


def tier_table(report: dict[str, Any]) -> list[str]:
    """Plain, engine lossless and fast tier, each request to MP4 written, with peak memory."""
    lines = [
        "| tier | steps x passes | request to MP4 (s) | how | peak GiB | vs plain | "
        "transformer TFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    base = None
    for tier in report["tiers"]:
        if "seconds" not in tier:
            lines.append(f"| {tier['tier']} | | not measured: {tier.get('why', '')} | | | | |")
            continue
        base = tier["seconds"] if base is None and tier["key"] == "plain" else base
        speedup = f"{base / tier['seconds']:.2f}x" if base else ""
        lines.append(
            f"| {tier['tier']} | {tier['steps']} x {tier['passes']} | {tier['seconds']:.2f} | "
            f"{tier['how']} | {tier['peak_gib']:.1f} | {speedup} | {tier['tflops']:.3g} |"
        )
    return lines


def tiers(report: dict[str, Any], args: argparse.Namespace, transformer: Any) -> list[dict]:
    """The tier table's rows from the measured rows: real runs where there are, else the
    extrapolation; the plain pipeline's MP4 write added to its time."""
    from opendance.engines.diffusers.family import PlannedShape
    from opendance.engines.diffusers.wan import Wan21Adapter

    steps = report["extrapolate_steps"]
    shape = PlannedShape(args.width, args.height, 16, args.frames)
    adapter = Wan21Adapter()
    rows = {row["name"]: row for row in report["rows"] if "error" not in row}
    full = {row["name"]: row for row in report.get("full", [])}
    lossless = args.full_variant if args.full_variant in rows else None
    if lossless is None:
        lossless = next((n for n in rows if n not in ("plain", "fast", "cache", "fp8")), None)
    out: list[dict[str, Any]] = []
    for key, label, cfg in [
        ("plain", "plain diffusers, guidance 5", True),
        (lossless, f"engine lossless ({lossless}), guidance 5", True),
    ]:
        row = rows.get(key) if key else None
        if row is None:
            out.append({"key": key, "tier": label, "why": "no row"})
            continue
        if key in full:
            seconds, how, per_step = full[key]["wall_s"], f"real, {full[key]['steps']} steps", None
            per_step = full[key]["s_per_step"]
            n = full[key]["steps"]
        else:
            n = steps
            per_step = row["s_per_step"]
            seconds = row["before_steps_s"] + n * per_step + row["after_steps_s"]
            how = f"extrapolated to {n} steps from {row['steps']}"
        if key == "plain":
            seconds += row.get("mp4_s", 0.0)
            how += f" + MP4 write {row.get('mp4_s', 0.0):.2f} s (encode_video)"
        flops = adapter.flops_per_step(transformer.config, shape, cfg)
        out.append(
            {
                "key": key,
                "tier": label,
                "steps": n,
                "passes": 2,
                "seconds": seconds,
                "how": how,
                "peak_gib": max(row["peak_gib"], full.get(key, {}).get("peak_gib", 0.0)),
                "tflops": flops / per_step / 1e12,
            }
        )
    for row in report["rows"]:
        if row["name"] != "fast":
            continue
        if "error" in row:
            out.append({"key": "fast", "tier": row["label"], "why": row["error"]})
            continue
        flops = adapter.flops_per_step(transformer.config, shape, False)
        walls = ", ".join(f"{w:.2f}" for w in row["walls_s"])
        out.append(
            {
                "key": "fast",
                "tier": row["label"],
                "steps": row["video_steps"],
                "passes": 1,
                "seconds": row["wall_s"],
                "how": f"real, median of {len(row['walls_s'])} requests ({walls})",
                "peak_gib": row["peak_gib"],
                "tflops": flops / row["s_per_step"] / 1e12,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--extrapolate-steps", type=int, default=50)
    parser.add_argument(
        "--full",
        type=int,
        default=0,
        help="also run plain and the last variant for this many steps, end to end",
    )
    parser.add_argument("--variants", default="engine,cudnn,batch_cfg,compile")
    parser.add_argument("--no-plain", action="store_true")
    parser.add_argument("--vae", action="store_true", help="time the VAE decode settings")
    parser.add_argument("--attention", action="store_true", help="time attention backends")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--full-variant", default="compile")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (smoke test)")
    parser.add_argument(
        "--fast-tier",
        action="store_true",
        help=f"also run the fast tier: {FAST_STEPS} steps, guidance 1, real request to MP4",
    )
    parser.add_argument(
        "--fast-base",
        default="compile",
        choices=sorted(VARIANTS),
        help="the variant whose speed settings the fast tier uses",
    )
    parser.add_argument(
        "--fast-vae",
        default="float32",
        help="comma-separated VAE dtypes to run the fast tier with (float32, bfloat16)",
    )
    parser.add_argument("--fast-runs", type=int, default=3, help="fast-tier requests timed")
    parser.add_argument(
        "--lora",
        action="store_true",
        help="fuse a random peft LoRA into the transformer before the fast tier (needs peft)",
    )
    parser.add_argument("--lora-rank", type=int, default=32)
    args = parser.parse_args()
    if args.lora and not args.fast_tier:
        parser.error("--lora applies to the fast tier: add --fast-tier")
    if args.lora and importlib.util.find_spec("peft") is None:
        parser.error("--lora needs peft: pip install peft")

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    global DEVICE
    DEVICE = "cpu" if args.tiny else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "environment": environment(),
        "extrapolate_steps": args.extrapolate_steps,
        "rows": [],
    }

    def save() -> None:
        (args.out / "engine.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "engine.md").write_text(markdown(report))

    started = time.perf_counter()
    modules = build_modules(torch.device(DEVICE), args.tiny)
    print(f"built modules in {time.perf_counter() - started:.1f} s", flush=True)

    from diffusers import WanPipeline

    transformer = modules["transformer"]
    latent_frames = (args.frames - 1) // 4 + 1
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    shape = (1, 16, latent_frames, args.height // 8, args.width // 8)
    inputs = {
        "hidden_states": torch.randn(shape, generator=gen, device=DEVICE).to(torch.bfloat16),
        "timestep": torch.tensor([500.0], device=DEVICE),
        "encoder_hidden_states": torch.randn(
            (1, 512, transformer.config.text_dim), generator=gen, device=DEVICE
        ).to(torch.bfloat16),
    }
    reference32 = copy.deepcopy(transformer).float()
    # TF32 (error ~3e-4) only for the reference, well under bf16's ~3e-3.
    torch.backends.cuda.matmul.allow_tf32 = True
    with torch.no_grad():
        reference = reference32(**{k: v.float() for k, v in inputs.items()}, return_dict=False)[
            0
        ].float()
    torch.backends.cuda.matmul.allow_tf32 = False
    del reference32
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()

    if args.attention and DEVICE == "cuda":
        report["attention"] = attention_bench(args)
        save()
        print(json.dumps(report["attention"]), flush=True)

    plain_pipe = WanPipeline(**modules)
    plain_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        plain_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device=DEVICE)
        sync()
        t0 = time.perf_counter()
        plain_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device=DEVICE)
        sync()
        report["text_encode_s"] = time.perf_counter() - t0

    if not args.no_plain:
        row: dict[str, Any] = {"name": "plain"}
        try:
            row.update(run_plain(plain_pipe, args.steps, args))
            row["forward_rel_err"] = forward_error(transformer, inputs, reference)
        except Exception as exc:
            row["error"] = repr(exc)[:300]
        report["rows"].append(row)
        save()
        print(json.dumps(row, default=str), flush=True)
        if args.full:
            full = {"name": "plain", **run_plain(plain_pipe, args.full, args)}
            report.setdefault("full", []).append(full)
            save()
            print(json.dumps(full, default=str), flush=True)

    engine = None
    for name in [v for v in args.variants.split(",") if v]:
        options = VARIANTS[name]
        row = {"name": name, "options": options}
        if getattr(transformer, "is_cache_enabled", False):
            transformer.disable_cache()
        try:
            engine, stats = run_engine(modules, options, args.steps, args)
            row.update(stats)
            if options.get("cache", "none") == "none":
                row["forward_rel_err"] = forward_error(transformer, inputs, reference)
        except Exception as exc:
            logging.exception("variant %s failed", name)
            row["error"] = repr(exc)[:300]
        report["rows"].append(row)
        save()
        print(json.dumps(row, default=str), flush=True)
        if engine is not None and name == args.full_variant and args.full:
            report["cancel"] = cancel_check(engine, args)
            engine, stats = run_engine(modules, options, args.full, args)
            report.setdefault("full", []).append({"name": name, **stats})
            save()
            print(json.dumps(report["full"][-1], default=str), flush=True)
    if engine is not None and "cancel" not in report:
        report["cancel"] = cancel_check(engine, args)
        save()

    if args.fast_tier:
        if args.lora:
            try:
                report["lora"] = fuse_random_lora(transformer, args.lora_rank)
            except Exception as exc:
                # The fast tier still runs, without the LoRA (its FLOPs are the same).
                logging.exception("LoRA fusing failed")
                report["lora_error"] = repr(exc)[:300]
                args.lora = False
            save()
            print(json.dumps(report.get("lora") or report["lora_error"]), flush=True)
        for row in run_fast_tier(modules, args, inputs, reference):
            report["rows"].append(row)
            save()
            print(json.dumps(row, default=str), flush=True)
        report["tiers"] = tiers(report, args, transformer)
        save()

    if args.vae:
        report["vae"] = vae_bench(modules["vae"], args)
        save()
    print(markdown(report), flush=True)
    print(json.dumps(report["environment"]), flush=True)


if __name__ == "__main__":
    main()
