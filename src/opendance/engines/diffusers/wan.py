"""Wan 2.1 (T2V 1.3B/14B, I2V 14B) and Wan 2.2 TI2V-5B through diffusers' Wan pipelines.

Wan 2.1 makes 16 fps clips of 4k+1 frames (81 = 5 s) at 832x480 or 1280x720, sides multiples of
16 (VAE 8x, patch 2). A Wan 2.1 checkpoint is either text-to-video (WanPipeline) or image-to-video
(WanImageToVideoPipeline, with a CLIP image encoder), never both.

Wan 2.2 TI2V-5B ships as a WanPipeline with `expand_timesteps`; the same weights make image-to-
video through WanImageToVideoPipeline (the first frame's latent is kept, per-token timesteps).
It makes 24 fps clips of 4k+1 frames (121 = 5 s) at 1280x704 / 704x1280, sides multiples of 32
(VAE 16x, patch 2), and is trained for 720p only.
"""

from __future__ import annotations

from typing import Any

from opendance.engines.diffusers.family import FamilyAdapter, FamilyRules

# The negative prompt of the official Wan repositories (wan/configs/shared_config.py).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

WAN21_RULES = FamilyRules(
    fps=16,
    frame_step=4,
    spatial_multiple=16,
    native_sizes={"480p": (832, 480), "720p": (1280, 720)},
    max_quality="720p",
    max_frames=81,
    default_steps=50,
    default_guidance=5.0,
    default_negative_prompt=WAN_NEGATIVE_PROMPT,
)

WAN22_TI2V_RULES = FamilyRules(
    fps=24,
    frame_step=4,
    spatial_multiple=32,
    native_sizes={"720p": (1280, 704)},
    max_quality="720p",
    max_frames=121,
    default_steps=50,
    default_guidance=5.0,
    default_negative_prompt=WAN_NEGATIVE_PROMPT,
)


class Wan21Adapter(FamilyAdapter):
    name = "wan21"
    rules = WAN21_RULES
    t2v_class = "WanPipeline"
    i2v_class = "WanImageToVideoPipeline"
    #: A Wan 2.1 T2V transformer has no image-conditioning channels, and the reverse.
    derivable = False
    max_sequence_length = 512

    def encode_prompt(
        self, pipe: Any, prompt: str, device: Any, dtype: Any, *, mask: bool
    ) -> tuple[Any, Any]:
        embeds, _ = pipe.encode_prompt(
            prompt=prompt,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
            device=device,
            dtype=dtype,
        )
        return embeds, None

    def embedding_kwargs(
        self, positive: tuple[Any, Any], negative: tuple[Any, Any] | None
    ) -> dict[str, Any]:
        return {
            "prompt_embeds": positive[0],
            "negative_prompt_embeds": negative[0] if negative is not None else None,
        }


class Wan22TI2VAdapter(Wan21Adapter):
    name = "wan22_ti2v"
    rules = WAN22_TI2V_RULES
    derivable = True

    def derived_config(self, base_config: dict[str, Any]) -> dict[str, Any]:
        return {
            "expand_timesteps": bool(base_config.get("expand_timesteps", True)),
            "boundary_ratio": base_config.get("boundary_ratio"),
        }
