"""LTX-Video through diffusers' LTXPipeline and LTXImageToVideoPipeline (same weights).

LTX makes clips of 8k+1 frames (121 = 5 s at 24 fps, up to 257), sides multiples of 32 (VAE
32x spatial, 8x temporal). Its pipelines already batch the guided and unguided passes.
Checkpoints from 0.9.1 on have a timestep-conditioned VAE decoder; it is decoded at the
model card's decode timestep and noise scale.
"""

from __future__ import annotations

from typing import Any

from opendance.engines.base import VideoJob
from opendance.engines.diffusers.family import FamilyAdapter, FamilyRules

LTX_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"

LTX_RULES = FamilyRules(
    fps=24,
    frame_step=8,
    spatial_multiple=32,
    native_sizes={"480p": (832, 480), "720p": (1280, 704)},
    max_quality="720p",
    max_frames=257,
    default_steps=50,
    default_guidance=3.0,
    default_negative_prompt=LTX_NEGATIVE_PROMPT,
)


class LTXAdapter(FamilyAdapter):
    name = "ltx"
    rules = LTX_RULES
    t2v_class = "LTXPipeline"
    i2v_class = "LTXImageToVideoPipeline"
    derivable = True
    max_sequence_length = 128

    def encode_prompt(
        self, pipe: Any, prompt: str, device: Any, dtype: Any, *, mask: bool
    ) -> tuple[Any, Any]:
        embeds, attention_mask, _, _ = pipe.encode_prompt(
            prompt=prompt,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
            device=device,
            dtype=dtype,
        )
        return embeds, attention_mask

    def embedding_kwargs(
        self, positive: tuple[Any, Any], negative: tuple[Any, Any] | None
    ) -> dict[str, Any]:
        kwargs = {"prompt_embeds": positive[0], "prompt_attention_mask": positive[1]}
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative[0]
            kwargs["negative_prompt_attention_mask"] = negative[1]
        return kwargs

    def call_kwargs(self, pipe: Any, job: VideoJob, steps: int, guidance: float) -> dict[str, Any]:
        kwargs = super().call_kwargs(pipe, job, steps, guidance)
        kwargs["frame_rate"] = job.fps
        if getattr(pipe.vae.config, "timestep_conditioning", False):
            kwargs["decode_timestep"] = 0.05
            kwargs["decode_noise_scale"] = 0.025
        return kwargs
