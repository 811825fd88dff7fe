"""The settings of one diffusers engine, as written in a model route's `options`.

Every speed setting is its own switch so each one's effect can be measured alone (bench/engine.py)
and turned off where it misbehaves. Unset model-specific values (steps, guidance, negative
prompt, largest quality, longest clip) come from the model family's defaults.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Family = Literal["wan21", "wan22_ti2v", "ltx"]
QualityName = Literal["480p", "720p", "1080p"]


class WarmupSize(BaseModel):
    """One request shape to compile and warm up at start, so no user's request pays for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: QualityName = "480p"
    aspect_ratio: str = "16:9"
    duration: int = Field(default=5, ge=1)
    image: bool = False


class LoraWeights(BaseModel):
    """A LoRA adapter fused into the weights at load (few-step distillation, a style)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="A folder or .safetensors file of a diffusers LoRA, or a hub id")
    weight_name: str | None = Field(default=None, description="The file inside a folder or repo")
    scale: float = Field(default=1.0, ge=0, le=4)


class DiffusersOptions(BaseModel):
    """Options of the `diffusers` engine (one loaded model, kept resident on one device)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="A short name (`wan2.1-t2v-1.3b`), a hub id, or a folder holding a pipeline."
    )
    models_dir: str | None = Field(
        default=None, description="Where `opendance models pull` put models; default data_dir."
    )
    family: Family | Literal["auto"] = "auto"
    reported_model: str | None = Field(
        default=None, description="Name reported in the task's `model`; default: the folder name."
    )
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    vae_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="auto: float32, as the model cards load the VAE."
    )
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    negative_prompt: str | None = None
    loras: list[LoraWeights] = Field(
        default_factory=list,
        description="Fused into the weights at load, so a step costs what it did without them.",
    )
    scheduler: Literal["default", "unipc", "euler", "dpm"] = Field(
        default="default", description="The sampler: the model's own, or a flow-matching one."
    )
    flow_shift: float | None = Field(
        default=None,
        gt=0,
        description="The scheduler's timestep shift (Wan: 3 at 480p, 5 at 720p).",
    )

    batch_cfg: bool = Field(
        default=True, description="Run the guided and unguided passes as one batch-2 call."
    )
    compile: bool | None = Field(
        default=None, description="Regional torch.compile of the transformer; auto: on CUDA."
    )
    warmup: list[WarmupSize] | None = Field(
        default=None,
        description="Shapes run once at start; default: the largest 16:9 clip when compiling.",
    )
    attention_backend: str = "auto"
    fp8: bool = False
    cache: Literal["none", "first_block"] = "none"
    cache_threshold: float = Field(default=0.05, gt=0)
    vae_tiling: bool = False
    offload: Literal["none", "model", "sequential", "text_encoder"] = "none"

    max_quality: QualityName | None = None
    max_frames: int | None = Field(default=None, ge=1)
    size_override: tuple[int, int] | None = Field(
        default=None, description="Exact width x height for every job (tests, fixed deployments)."
    )
    prompt_cache_size: int = Field(default=16, ge=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("size_override")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and (value[0] <= 0 or value[1] <= 0):
            raise ValueError("size_override must be two positive numbers")
        return value
