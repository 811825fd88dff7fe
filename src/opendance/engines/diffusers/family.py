"""What a model family can make, and how a request maps onto it.

A family adapter knows its model's rules (side multiples, frame-count rule, native fps, the sizes
it was trained at) and how to call its diffusers pipelines. `plan_video` turns a request into the
nearest thing the model really makes; the task reports that, not what was asked.
No torch here: plans are made (and unit-tested) without the heavy dependencies.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

from opendance.engines.base import EngineError, VideoJob, VideoRequest
from opendance.media.sizes import QUALITIES, ratio_value


@dataclass(frozen=True)
class FamilyRules:
    """The shape rules of one model family.

    `native_sizes` maps each quality to the landscape size the model was trained at; other
    aspect ratios keep that pixel count. Frame counts are `frame_step * k + 1`.
    """

    fps: int
    frame_step: int
    spatial_multiple: int
    native_sizes: dict[str, tuple[int, int]]
    max_quality: str
    max_frames: int
    default_steps: int
    default_guidance: float
    default_negative_prompt: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedShape:
    width: int
    height: int
    fps: int
    frames: int


def snap(value: float, multiple: int) -> int:
    """Nearest positive multiple of `multiple`."""
    return max(multiple, round(value / multiple) * multiple)


def size_for_ratio(rules: FamilyRules, quality: str, ratio: float) -> tuple[int, int]:
    """The model's size for an aspect ratio at a quality: the native one for 16:9 and 9:16,
    else the native pixel count at that ratio, both sides on the model's multiple."""
    native_w, native_h = rules.native_sizes[quality]
    if math.isclose(ratio, 16 / 9, rel_tol=0.01):
        return native_w, native_h
    if math.isclose(ratio, 9 / 16, rel_tol=0.01):
        return native_h, native_w
    area = native_w * native_h
    m = rules.spatial_multiple
    return snap(math.sqrt(area * ratio), m), snap(math.sqrt(area / ratio), m)


def frames_for(rules: FamilyRules, duration: int, cap: int | None = None) -> int:
    """Frames for a duration at the model's fps, on its `step * k + 1` rule, at most `cap`."""
    step = rules.frame_step
    frames = step * max(1, round(duration * rules.fps / step)) + 1
    limit = min(cap, rules.max_frames) if cap is not None else rules.max_frames
    if frames > limit:
        frames = (limit - 1) // step * step + 1
    return max(1, frames)


def capped_quality(rules: FamilyRules, quality: str, max_quality: str | None) -> str:
    """The model's quality nearest the request, never above its (or the route's) ceiling.

    A model trained at one quality only (Wan 2.2 TI2V-5B: 720p) makes that for every request.
    """
    ceiling = QUALITIES.index(max_quality or rules.max_quality)
    known = [q for q in QUALITIES if q in rules.native_sizes and QUALITIES.index(q) <= ceiling]
    if not known:
        known = [q for q in QUALITIES if q in rules.native_sizes][:1]
    wanted = QUALITIES.index(quality) if quality in QUALITIES else 0
    return min(known, key=lambda q: (abs(QUALITIES.index(q) - wanted), QUALITIES.index(q)))


def request_ratio(request: VideoRequest, image_size: tuple[int, int] | None) -> float:
    """The aspect ratio to make: the named one, or the image's own for keep_ratio/adaptive."""
    if ":" in request.aspect_ratio:
        return ratio_value(request.aspect_ratio)
    if image_size is not None and image_size[0] > 0 and image_size[1] > 0:
        return image_size[0] / image_size[1]
    return 16 / 9


def plan_video(
    rules: FamilyRules,
    request: VideoRequest,
    image_size: tuple[int, int] | None = None,
    *,
    max_quality: str | None = None,
    max_frames: int | None = None,
    size_override: tuple[int, int] | None = None,
) -> PlannedShape:
    """Map a request to the size, fps and frame count this model family really makes."""
    if size_override is not None:
        m = rules.spatial_multiple
        width = max(m, size_override[0] // m * m)
        height = max(m, size_override[1] // m * m)
    else:
        quality = capped_quality(rules, request.quality, max_quality)
        width, height = size_for_ratio(rules, quality, request_ratio(request, image_size))
    return PlannedShape(width, height, rules.fps, frames_for(rules, request.duration, max_frames))


def rules_from_pipeline(rules: FamilyRules, pipe: Any) -> FamilyRules:
    """The rules with the side multiple and frame step read off a loaded pipeline.

    For the published models these equal the family defaults; reading them keeps fine-tunes with
    another VAE or patch size correct.
    """
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(
        pipe, "vae_spatial_compression_ratio", None
    )
    temporal = getattr(pipe, "vae_scale_factor_temporal", None) or getattr(
        pipe, "vae_temporal_compression_ratio", None
    )
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", 1)
    patch_hw = int(patch[-1]) if isinstance(patch, list | tuple) else int(patch or 1)
    if spatial:
        rules = replace(rules, spatial_multiple=int(spatial) * patch_hw)
    if temporal:
        rules = replace(rules, frame_step=int(temporal))
    return rules


class FamilyAdapter(ABC):
    """How one model family's pipelines are called. Subclasses live in wan.py and ltx.py."""

    name: str
    rules: FamilyRules
    #: diffusers pipeline class names, text-to-video and image-to-video.
    t2v_class: str
    i2v_class: str
    #: Whether the other task's pipeline can be built from the same weights.
    derivable: bool = False
    max_sequence_length: int = 512

    def __init__(self, rules: FamilyRules | None = None) -> None:
        if rules is not None:
            self.rules = rules

    def with_rules(self, rules: FamilyRules) -> FamilyAdapter:
        return type(self)(rules)

    def derived_config(self, base_config: dict[str, Any]) -> dict[str, Any]:
        """Pipeline config values to carry over when building the other task's pipeline."""
        return {}

    def check_request(self, has_image: bool, can_t2v: bool, can_i2v: bool) -> None:
        """Raise EngineError when the loaded model cannot make this kind of video."""
        if has_image and not can_i2v:
            raise EngineError(
                "image_to_video_unsupported",
                "this model makes videos from text only; route image requests to an "
                "image-to-video model",
            )
        if not has_image and not can_t2v:
            raise EngineError(
                "image_required",
                "this model makes videos from an image; send a first-frame image",
            )

    @abstractmethod
    def encode_prompt(
        self, pipe: Any, prompt: str, device: Any, dtype: Any, *, mask: bool
    ) -> tuple[Any, Any]:
        """One prompt's embeddings (and attention mask, or None) in the transformer's dtype."""

    @abstractmethod
    def embedding_kwargs(
        self, positive: tuple[Any, Any], negative: tuple[Any, Any] | None
    ) -> dict[str, Any]:
        """Pipeline call arguments carrying precomputed prompt embeddings."""

    def call_kwargs(self, pipe: Any, job: VideoJob, steps: int, guidance: float) -> dict[str, Any]:
        """Everything else the pipeline call needs for this job."""
        kwargs: dict[str, Any] = {
            "height": job.height,
            "width": job.width,
            "num_frames": job.frames,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
        }
        if job.image is not None:
            kwargs["image"] = job.image
        return kwargs

    def flops_per_step(self, transformer_config: Any, shape: PlannedShape, cfg: bool) -> float:
        """Matmul FLOPs of one denoising step (both guidance passes), for time estimates."""
        tokens = self.tokens(shape, transformer_config)
        heads = int(getattr(transformer_config, "num_attention_heads", 12))
        head_dim = int(getattr(transformer_config, "attention_head_dim", 128))
        dim = heads * head_dim
        ffn = int(getattr(transformer_config, "ffn_dim", 4 * dim) or 4 * dim)
        layers = int(getattr(transformer_config, "num_layers", 30))
        text = 512
        block = 12 * tokens * dim**2 + 4 * tokens**2 * dim + 4 * tokens * text * dim
        block += 4 * tokens * dim * ffn
        return float(block * layers * (2 if cfg else 1))

    def tokens(self, shape: PlannedShape, transformer_config: Any) -> int:
        """Transformer sequence length for a shape."""
        patch = getattr(transformer_config, "patch_size", 1)
        p = int(patch[-1]) if isinstance(patch, list | tuple) else int(patch or 1)
        stride = self.rules.spatial_multiple // p
        latent_frames = (shape.frames - 1) // self.rules.frame_step + 1
        return latent_frames * (shape.height // stride // p) * (shape.width // stride // p)
