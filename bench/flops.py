"""FLOPs of one Wan2.1-T2V-1.3B video (832x480, 81 frames) per speed tier, counted on meta.

    PYTHONPATH=src .venv/bin/python bench/flops.py [--json PATH]

The full-size modules are built on `torch.device("meta")` (shapes only, no memory, no weights)
from the configs bench/engine.py benchmarks, and run once each under
`torch.utils.flop_counter.FlopCounterMode`, which counts the matmul and convolution FLOPs of the
aten ops they dispatch (2 FLOPs per multiply-add; norms, softmax, RoPE, the scheduler and other
elementwise work are not counted):

- transformer: `WanTransformer3DModel` (30 layers, 12 heads x 128, FFN 8960), one forward of a
  batch-1 latent (1, 16, 21, 60, 104) with 512 x 4096 text embeddings and a timestep. On meta,
  PyTorch's SDPA takes its math path (QK^T and PV as two bmm), so attention is counted too;
- text encoder: a UMT5-XXL-size `UMT5EncoderModel` on one 512-token prompt. The attention mask
  is left out on meta (transformers' mask code asks `mask.all()`, a data-dependent read a meta
  tensor cannot answer); an additive mask costs no matmul FLOPs, so the count is the same;
- VAE: `AutoencoderKLWan` (the Wan 2.1 VAE) decoding the 21 latent frames to 81 x 480 x 832.

Tiers (the speed tiers of docs/bench/engine.md):
(a) plain diffusers `WanPipeline` defaults: 50 steps, guidance 5, i.e. two transformer passes
    per step (cond and uncond; one batch-2 pass costs the same), prompt and negative prompt
    both encoded;
(b) the engine, lossless: the same FLOPs, since its gains are kernels (attention backend,
    regional compile) and batching (batched CFG), not fewer operations; it encodes only the
    prompt (the negative prompt's embedding is cached);
(c) the fast tier: 4 steps, guidance 1 (one pass per step, no negative prompt), a step-distill
    LoRA fused into the weights (a fused LoRA adds no FLOPs).

The lower bounds divide the FLOPs by the dense BF16 tensor peak (989 TFLOP/s for both the H100
SXM and the H200: same chip, the H200 has more and faster memory) and by 40 % of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, FRAMES = 832, 480, 81
TEXT_TOKENS = 512
PEAK_BF16 = {"H100 SXM": 989e12, "H200": 989e12}
PEAK_TF32 = 494.7e12  # dense TF32, H100 SXM / H200: what the fp32 VAE's convolutions get.
MFU = 0.40

# (name, steps, transformer passes per step, text-encoder passes per request, note)
TIERS = [
    ("(a) plain diffusers: 50 steps, guidance 5", 50, 2, 2, "prompt + negative encoded"),
    (
        "(b) engine lossless: 50 steps, guidance 5",
        50,
        2,
        1,
        "same FLOPs as (a); negative prompt cached",
    ),
    ("(c) fast tier: 4 steps, guidance 1, LoRA fused", 4, 1, 1, "fused LoRA: no extra FLOPs"),
]


def _engine_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The full-size configs bench/engine.py benchmarks (one source of truth)."""
    spec = importlib.util.spec_from_file_location(
        "bench_engine", Path(__file__).with_name("engine.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.WAN21_T2V_1_3B), dict(module.UMT5_XXL)


def count(fn: Any) -> tuple[float, dict[str, float], dict[str, float], float]:
    """(total FLOPs, FLOPs per aten op, FLOPs per module, seconds) of one call of `fn`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False, depth=None)
    started = time.perf_counter()
    with mode, torch.no_grad():
        fn()
    seconds = time.perf_counter() - started
    counts = mode.get_flop_counts()
    per_op = {str(op): float(n) for op, n in counts.get("Global", {}).items()}
    per_module = {
        name: float(sum(ops.values())) for name, ops in counts.items() if name != "Global"
    }
    return float(mode.get_total_flops()), per_op, per_module, seconds


def transformer_parts(per_module: dict[str, float], layers: int) -> dict[str, float]:
    """One pass's FLOPs split into self-attention, cross-attention, FFN and the rest."""
    root = "WanTransformer3DModel"
    parts = {"self-attention (attn1)": 0.0, "cross-attention (attn2)": 0.0, "FFN": 0.0}
    names = {"attn1": "self-attention (attn1)", "attn2": "cross-attention (attn2)", "ffn": "FFN"}
    for index in range(layers):
        for sub, label in names.items():
            parts[label] += per_module.get(f"{root}.blocks.{index}.{sub}", 0.0)
    parts["embeddings, patchify, output"] = per_module.get(root, 0.0) - sum(parts.values())
    return parts


def measure() -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import UMT5Config, UMT5EncoderModel
    from transformers.utils import logging as hf_logging

    from opendance.engines.diffusers.family import PlannedShape
    from opendance.engines.diffusers.wan import Wan21Adapter

    hf_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformer_config, text_config = _engine_configs()
    meta = torch.device("meta")
    bf16 = torch.bfloat16
    with meta:
        transformer = WanTransformer3DModel(**transformer_config).eval()
        transformer.to(bf16)
        text_encoder = UMT5EncoderModel(UMT5Config(**text_config)).eval()
        text_encoder.to(bf16)
        vae = AutoencoderKLWan().eval()

    latent_frames = (FRAMES - 1) // 4 + 1
    latent_shape = (1, 16, latent_frames, HEIGHT // 8, WIDTH // 8)
    latents = torch.empty(latent_shape, device=meta, dtype=bf16)
    timestep = torch.empty(1, device=meta)
    text = torch.empty(1, TEXT_TOKENS, transformer_config["text_dim"], device=meta, dtype=bf16)
    ids = torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device=meta)
    decoded: list[tuple[int, ...]] = []

    def transformer_pass() -> None:
        out = transformer(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False
        )[0]
        assert tuple(out.shape) == latent_shape, out.shape

    def text_pass() -> None:
        out = text_encoder(ids).last_hidden_state
        assert tuple(out.shape) == (1, TEXT_TOKENS, text_config["d_model"]), out.shape

    def vae_decode() -> None:
        out = vae.decode(latents.float(), return_dict=False)[0]
        decoded.append(tuple(out.shape))

    t_flops, t_ops, t_modules, t_s = count(transformer_pass)
    e_flops, e_ops, _, e_s = count(text_pass)
    v_flops, v_ops, _, v_s = count(vae_decode)

    adapter = Wan21Adapter()
    shape = PlannedShape(WIDTH, HEIGHT, adapter.rules.fps, FRAMES)
    analytic_pass = adapter.flops_per_step(transformer.config, shape, cfg=False)
    analytic_step_cfg = adapter.flops_per_step(transformer.config, shape, cfg=True)
    tokens = adapter.tokens(shape, transformer.config)

    tiers = []
    for name, steps, passes_per_step, text_passes, note in TIERS:
        passes = steps * passes_per_step
        total = passes * t_flops + text_passes * e_flops + v_flops
        tiers.append(
            {
                "tier": name,
                "steps": steps,
                "transformer_passes": passes,
                "text_encoder_passes": text_passes,
                "transformer_flops_per_pass": t_flops,
                "transformer_flops": passes * t_flops,
                "total_flops": total,
                "lower_bound_s": {gpu: total / peak for gpu, peak in PEAK_BF16.items()},
                "at_40pct_mfu_s": {gpu: total / (MFU * peak) for gpu, peak in PEAK_BF16.items()},
                "analytic_transformer_flops": steps * (analytic_pass * passes_per_step),
                "note": note,
            }
        )
    return {
        "video": {"width": WIDTH, "height": HEIGHT, "frames": FRAMES, "tokens": tokens},
        "latent_shape": list(latent_shape),
        "decoded_shape": list(decoded[0]),
        "transformer": {
            "flops_per_pass": t_flops,
            "per_op": t_ops,
            "parts": transformer_parts(t_modules, transformer_config["num_layers"]),
            "count_seconds": t_s,
        },
        "text_encoder": {"flops_per_prompt": e_flops, "per_op": e_ops, "count_seconds": e_s},
        "vae_decode": {"flops": v_flops, "per_op": v_ops, "count_seconds": v_s},
        "family_flops_per_step": {
            "per_pass": analytic_pass,
            "per_cfg_step": analytic_step_cfg,
            "ratio_counted_over_analytic": t_flops / analytic_pass,
        },
        "tiers": tiers,
        "peaks": {"bf16": PEAK_BF16, "tf32": PEAK_TF32, "mfu": MFU},
    }


def tflop(value: float) -> str:
    """TFLOP with one decimal, or three below 1 TFLOP (the small parts stay visible)."""
    return f"{value / 1e12:,.1f}" if value >= 1e12 else f"{value / 1e12:.3f}"


def markdown(report: dict[str, Any]) -> str:
    t = report["transformer"]
    e = report["text_encoder"]
    v = report["vae_decode"]
    f = report["family_flops_per_step"]
    gpus = list(PEAK_BF16)
    lines = [
        f"Wan2.1-T2V-1.3B, {WIDTH}x{HEIGHT}, {FRAMES} frames: latent "
        f"{'x'.join(map(str, report['latent_shape']))}, {report['video']['tokens']:,} tokens, "
        f"{TEXT_TOKENS} text tokens; FLOPs counted on the meta device.",
        "",
        "| tier | transformer passes | transformer TFLOP / pass | total TFLOP (transformer + "
        "text encoder + VAE) | "
        + " | ".join(f"lower bound {g} @ 989 TFLOP/s (s)" for g in gpus)
        + f" | @ {MFU:.0%} MFU (s) |",
        "|---|---|---|---|" + "---|" * len(gpus) + "---|",
    ]
    for row in report["tiers"]:
        passes = row["transformer_passes"]
        per_step = passes // row["steps"]
        lines.append(
            f"| {row['tier']} | {passes} ({row['steps']} x {per_step}) | "
            f"{tflop(row['transformer_flops_per_pass'])} | {tflop(row['total_flops'])} "
            f"({tflop(row['transformer_flops'])} + {row['text_encoder_passes']} x "
            f"{tflop(e['flops_per_prompt'])} + {tflop(v['flops'])}) | "
            + " | ".join(f"{row['lower_bound_s'][g]:.2f}" for g in gpus)
            + f" | {row['at_40pct_mfu_s'][gpus[0]]:.2f} |"
        )
    lines += [
        "",
        "Notes: " + "; ".join(f"{row['tier'][:3]} {row['note']}" for row in report["tiers"]) + ".",
        f"H100 SXM and H200 share the dense BF16 peak (989 TFLOP/s), so their bounds are equal. "
        f"The VAE runs in float32 by default (TF32 convolutions, dense peak "
        f"{PEAK_TF32 / 1e12:.0f} TFLOP/s): its own bound is then "
        f"{v['flops'] / PEAK_TF32:.2f} s rather than {v['flops'] / 989e12:.2f} s in bf16.",
        "",
        "| component (one call) | TFLOP | by op | @ 989 TFLOP/s (s) | counted in (s, CPU) |",
        "|---|---|---|---|---|",
    ]
    for label, flops, ops, seconds in [
        ("transformer pass (batch 1)", t["flops_per_pass"], t["per_op"], t["count_seconds"]),
        (
            "UMT5-XXL text encoder, 512 tokens",
            e["flops_per_prompt"],
            e["per_op"],
            e["count_seconds"],
        ),
        (
            f"VAE decode, 21 latent frames -> {FRAMES} x {HEIGHT} x {WIDTH}",
            v["flops"],
            v["per_op"],
            v["count_seconds"],
        ),
    ]:
        by_op = ", ".join(f"{op.removeprefix('aten.')} {tflop(n)}" for op, n in ops.items())
        lines.append(
            f"| {label} | {tflop(flops)} | {by_op} | {flops / 989e12:.3f} | {seconds:.1f} |"
        )
    lines += ["", "| transformer pass, by part | TFLOP | share |", "|---|---|---|"]
    for part, flops in t["parts"].items():
        lines.append(f"| {part} | {tflop(flops)} | {flops / t['flops_per_pass']:.1%} |")
    lines += [
        "",
        "Engine's own estimate, `FamilyAdapter.flops_per_step` (src/opendance/engines/diffusers/"
        f"family.py): {tflop(f['per_pass'])} TFLOP per pass, {tflop(f['per_cfg_step'])} per "
        f"guided step; counted / estimated = **{f['ratio_counted_over_analytic']:.4f}** "
        "(the estimate leaves out the text K/V projections, the text and time embedders, "
        "patchify and the output projection; it counts the transformer only, so a whole "
        "request's FLOPs are larger by the text encoder and the VAE decode: "
        + ", ".join(
            f"{row['tier'][:3]} {row['total_flops'] / row['analytic_transformer_flops']:.3f}x"
            for row in report["tiers"]
        )
        + ").",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the counts here as JSON")
    args = parser.parse_args()
    started = time.perf_counter()
    report = measure()
    print(markdown(report), end="")
    print(f"\n(counted in {time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
