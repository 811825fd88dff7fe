"""Tiny random-weight diffusers video pipelines, saved to a folder the way real weights ship.

The engine then loads them with `from_pretrained(folder)`, exactly as it loads a downloaded model,
so CI exercises the real loading, denoising, decoding and writing paths without any download.
The VAEs keep the real models' compression ratios (Wan 2.1: 8x spatial / 4x temporal, Wan 2.2
TI2V: 16x / 4x, LTX: 32x / 8x), so the size and frame-count rules are the real ones; everything
else is as small as the architectures allow.

The tokenizer is built here with the `tokenizers` library (byte-level, no merges): any prompt
maps to distinct ids, so different prompts give different embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT_DIM = 32
TOKENIZER_MAX_LENGTH = 512


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges (every byte is a token), T5-style specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(specials + sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TOKENIZER_MAX_LENGTH,
    )


def _umt5(d_model: int = TEXT_DIM, num_layers: int = 1) -> Any:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(build_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return UMT5EncoderModel(config).eval()


def _t5(d_model: int = TEXT_DIM) -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(build_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def wan21_components(
    *,
    transformer_config: dict[str, Any] | None = None,
    vae_config: dict[str, Any] | None = None,
    text_encoder: Any = None,
    shift: float = 3.0,
) -> dict[str, Any]:
    """Components of a Wan 2.1 text-to-video pipeline; the configs override the tiny defaults.

    The benchmark passes the real Wan2.1-T2V-1.3B transformer config and `vae_config={}` (the
    real Wan VAE is AutoencoderKLWan's default config).
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        **(
            vae_config
            if vae_config is not None
            else {
                "base_dim": 3,
                "z_dim": 16,
                "dim_mult": [1, 1, 1, 1],
                "num_res_blocks": 1,
                "temperal_downsample": [False, True, True],
            }
        )
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        **(
            transformer_config
            if transformer_config is not None
            else {
                "patch_size": (1, 2, 2),
                "num_attention_heads": 2,
                "attention_head_dim": 12,
                "in_channels": 16,
                "out_channels": 16,
                "text_dim": TEXT_DIM,
                "freq_dim": 256,
                "ffn_dim": 32,
                "num_layers": 2,
                "cross_attn_norm": True,
                "qk_norm": "rms_norm_across_heads",
                "rope_max_seq_len": 32,
            }
        )
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=shift),
        "text_encoder": text_encoder if text_encoder is not None else _umt5(),
        "tokenizer": build_tokenizer(),
    }


def build_wan21(folder: Path) -> Path:
    """Save a tiny Wan 2.1 T2V pipeline (WanPipeline) to `folder`."""
    from diffusers import WanPipeline

    WanPipeline(**wan21_components()).save_pretrained(folder)
    return folder


def build_wan21_i2v(folder: Path) -> Path:
    """Save a tiny Wan 2.1 I2V pipeline (WanImageToVideoPipeline, with a CLIP image encoder)."""
    import torch
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    components = wan21_components(
        transformer_config={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "in_channels": 36,
            "out_channels": 16,
            "text_dim": TEXT_DIM,
            "freq_dim": 256,
            "ffn_dim": 32,
            "num_layers": 2,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 32,
            "image_dim": 4,
        }
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=1,
        )
    ).eval()
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    WanImageToVideoPipeline(
        **components, image_encoder=image_encoder, image_processor=image_processor
    ).save_pretrained(folder)
    return folder


def build_wan22_ti2v(folder: Path) -> Path:
    """Save a tiny Wan 2.2 TI2V-5B-style pipeline: WanPipeline with `expand_timesteps`, 48-channel
    residual VAE with a 2x2 patch (16x spatial), as Wan2.2-TI2V-5B-Diffusers ships."""
    from diffusers import WanPipeline

    components = wan21_components(
        transformer_config={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "in_channels": 48,
            "out_channels": 48,
            "text_dim": TEXT_DIM,
            "freq_dim": 256,
            "ffn_dim": 32,
            "num_layers": 2,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 32,
        },
        vae_config={
            "base_dim": 3,
            "z_dim": 48,
            "in_channels": 12,
            "out_channels": 12,
            "is_residual": True,
            "patch_size": 2,
            "latents_mean": [0.0] * 48,
            "latents_std": [1.0] * 48,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "temperal_downsample": [False, True, True],
        },
        shift=5.0,
    )
    WanPipeline(**components, expand_timesteps=True).save_pretrained(folder)
    return folder


def build_ltx(folder: Path) -> Path:
    """Save a tiny LTX-Video pipeline (LTXPipeline) with the real 32x spatial / 8x temporal VAE."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=TEXT_DIM,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    LTXPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=_t5(),
        tokenizer=build_tokenizer(),
    ).save_pretrained(folder)
    return folder


BUILDERS = {
    "wan21": build_wan21,
    "wan21_i2v": build_wan21_i2v,
    "wan22_ti2v": build_wan22_ti2v,
    "ltx": build_ltx,
}

# Sizes the tiny pipelines run at. Not smaller: libx264 wrote different files for identical
# 32x32 frames from run to run (and once in about fifteen runs at 64x64; never seen at 128x96
# and up), and the same seed must give the same file.
TEST_SIZES = {
    "wan21": (128, 128),
    "wan21_i2v": (128, 128),
    "wan22_ti2v": (128, 128),
    "ltx": (128, 128),
}


def engine_options(name: str, folder: Path, **overrides: Any) -> dict[str, Any]:
    """Route options for the `diffusers` engine serving a tiny pipeline fast on a CPU.

    Nine frames (Wan: 4k+1, LTX: 8k+1) and three steps, no compile: a job takes well under a
    second. The HTTP end-to-end test can use these as the route's `options`.
    """
    options: dict[str, Any] = {
        "model": str(folder),
        "device": "cpu",
        "size_override": TEST_SIZES[name],
        "max_frames": 9,
        "num_inference_steps": 3,
        "compile": False,
        "reported_model": f"tiny-{name}",
    }
    options.update(overrides)
    return options
