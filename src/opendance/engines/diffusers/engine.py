"""The `diffusers` engine: an open-weight video model, loaded once and kept on its GPU.

`start()` loads the pipeline the way a user would (`from_pretrained` on a hub id or a local
folder), places it, applies the speed settings and warms up the configured sizes, so the first
user's request runs at full speed. `generate()` runs one job at a time (a lock: one model, one
GPU), reports progress after every denoising step and stops at the next step when the task is
cancelled: the cancel raises out of the step callback, so the VAE decode never runs and the
tensors are freed before `generate` returns.

torch and diffusers are imported only inside `start()` and the calls after it, so the server
imports this module (and runs every other engine) without them. Reading, loading and placing the
pipeline live in `loading`; the speed settings and the warm-up in `speed`.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from opendance.engines.base import (
    Engine,
    EngineContext,
    EngineError,
    EngineFatal,
    EngineResult,
    EngineUnavailable,
    TaskCancelled,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.diffusers import loading, speed, tuning
from opendance.engines.diffusers.cfg import BatchedCfg
from opendance.engines.diffusers.family import (
    FamilyAdapter,
    PlannedShape,
    plan_video,
    rules_from_pipeline,
)
from opendance.engines.diffusers.loading import ADAPTERS, _require_heavy, detect_family
from opendance.engines.diffusers.options import DiffusersOptions
from opendance.engines.diffusers.video import _write_mp4, frames_to_yuv420

log = logging.getLogger(__name__)

#: CUDA errors after which the context is unusable (a sticky error): only a new process helps.
_FATAL_DEVICE_ERROR = re.compile(
    r"illegal memory access|device-side assert|unspecified launch failure|misaligned address|"
    r"launch timed out|uncorrectable ECC|CUDA driver (is )?shutting down|context is destroyed|"
    r"illegal instruction|hardware stack error",
    re.IGNORECASE,
)


def is_fatal_device_error(error: BaseException) -> bool:
    """A CUDA error the process cannot recover from (out of memory is not one)."""
    return isinstance(error, RuntimeError) and bool(_FATAL_DEVICE_ERROR.search(str(error)))


#: Share of the progress bar given to denoising; decoding and writing finish the rest.
DENOISE_SHARE = 0.95

# Starting guesses for the time estimate (transformer matmul FLOP/s reached, overheads included),
# replaced by what the engine measures on its jobs.
DEFAULT_RATE = {"cuda": 2.5e14, "cpu": 5e10}


class DiffusersEngine(Engine):
    """Runs one diffusers video pipeline (Wan 2.1, Wan 2.2 TI2V-5B or LTX-Video)."""

    kind = "diffusers"

    def __init__(
        self, options: DiffusersOptions | Mapping[str, Any], *, pipeline: Any = None
    ) -> None:
        """`pipeline`: an already-built pipeline to serve instead of loading `options.model`
        (the benchmark uses it to run the plain pipeline and the engine on the same weights)."""
        self.options = (
            options
            if isinstance(options, DiffusersOptions)
            else DiffusersOptions.model_validate(options)
        )
        self._given_pipeline = pipeline
        self._lock = threading.Lock()
        self._model_index: dict[str, Any] | None = None
        self._adapter: FamilyAdapter | None = None
        self._pipes: dict[str, Any] = {}
        self._device: Any = None
        self._batched_cfg: list[BatchedCfg] = []
        self._prompt_cache: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._rate: float | None = None
        #: The speed settings really in effect after `start()` (some may be skipped here).
        self.applied: dict[str, Any] = {}

    # -- what the model is and what it makes ------------------------------------------------

    @property
    def model_name(self) -> str:
        if self.options.reported_model:
            return self.options.reported_model
        return self.options.model.rstrip("/").rsplit("/", 1)[-1]

    @property
    def adapter(self) -> FamilyAdapter:
        if self._adapter is None:
            family: str = self.options.family
            if family == "auto":
                family = detect_family(self._read_model_index())
            self._adapter = ADAPTERS[family]()
        return self._adapter

    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        self._check_task(request.has_image)
        shape = self._shape(request, image_size)
        return VideoPlan(shape.width, shape.height, shape.fps, shape.frames, self.model_name)

    def _shape(self, request: VideoRequest, image_size: tuple[int, int] | None) -> PlannedShape:
        return plan_video(
            self.adapter.rules,
            request,
            image_size,
            max_quality=self.options.max_quality,
            max_frames=self.options.max_frames,
            size_override=self.options.size_override,
        )

    def _check_task(self, has_image: bool) -> None:
        adapter = self.adapter
        if self._pipes:
            can_t2v, can_i2v = "t2v" in self._pipes, "i2v" in self._pipes
        else:
            base = str(self._read_model_index().get("_class_name", adapter.t2v_class))
            can_t2v = base == adapter.t2v_class or adapter.derivable
            can_i2v = base == adapter.i2v_class or adapter.derivable
        adapter.check_request(has_image, can_t2v, can_i2v)

    def _read_model_index(self) -> dict[str, Any]:
        """The pipeline's `model_index.json`: from the loaded pipeline, the local folder, or the
        hub cache (a download only where the hub is reachable)."""
        if self._model_index is not None:
            return self._model_index
        if self._given_pipeline is not None:
            config = dict(self._given_pipeline.config)
            config["_class_name"] = type(self._given_pipeline).__name__
            self._model_index = config
            return config
        self._model_index = loading.read_model_index(self.model_reference())
        return self._model_index

    def estimate_seconds(self, plan: VideoPlan) -> float:
        """From the transformer's FLOPs for this shape at the rate measured on earlier jobs."""
        device = self._device.type if self._device is not None else "cuda"
        pipe = next(iter(self._pipes.values()), None)
        if pipe is None:
            return 60.0 if device == "cuda" else 30.0
        steps, guidance = self._steps_and_guidance()
        shape = PlannedShape(plan.width, plan.height, plan.fps, plan.frames)
        flops = self.adapter.flops_per_step(pipe.transformer.config, shape, guidance > 1) * steps
        rate = self._rate or DEFAULT_RATE.get(device, DEFAULT_RATE["cpu"])
        return flops / rate

    def _steps_and_guidance(self) -> tuple[int, float]:
        rules = self.adapter.rules
        steps = self.options.num_inference_steps or rules.default_steps
        guidance = self.options.guidance_scale
        return steps, rules.default_guidance if guidance is None else guidance

    def check(self) -> None:
        """torch and diffusers are installed, and a local model folder exists and holds a
        pipeline (a hub id is only downloaded at start)."""
        missing = [
            name for name in ("torch", "diffusers") if importlib.util.find_spec(name) is None
        ]
        if missing and self._given_pipeline is None:
            raise EngineUnavailable(
                f"the diffusers engine needs {' and '.join(missing)}: install opendance[gpu]"
            )
        model = self.model_reference()
        folder = Path(model).expanduser()
        looks_local = model.startswith(("/", ".", "~")) or folder.exists() or model.count("/") != 1
        if self._given_pipeline is not None or not looks_local:
            return
        if not folder.is_dir():
            raise EngineUnavailable(f"the model folder {model} does not exist")
        if not (folder / "model_index.json").is_file():
            raise EngineUnavailable(
                f"the model folder {model} holds no diffusers pipeline (no model_index.json)"
            )

    def model_reference(self) -> str:
        """What `model` names, for `from_pretrained`: a folder; a short name or hub id pulled
        with `opendance models pull` (its folder); else the hub id (downloaded at start)."""
        from opendance.engines.diffusers import hub
        from opendance.settings import Settings

        root = Path(self.options.models_dir) if self.options.models_dir else None
        return hub.resolve_reference(self.options.model, root or hub.models_dir(Settings()))

    # -- loading ----------------------------------------------------------------------------

    def start(self) -> None:
        torch, _ = _require_heavy()
        opts = self.options
        device = loading.resolve_device(torch, opts.device)
        dtype, vae_dtype = loading.resolve_dtypes(torch, opts, device)

        pipe = self._given_pipeline
        if pipe is None:
            pipe = loading.load_pipeline(self.model_reference(), dtype, vae_dtype)
        self._model_index = None
        self._given_pipeline = pipe
        self._read_model_index()
        self._device = device
        self.applied["loras"] = tuning.fuse_loras(pipe, opts.loras)
        self.applied["scheduler"] = tuning.set_scheduler(pipe, opts.scheduler, opts.flow_shift)
        self.applied["offload"] = loading.place(torch, pipe, device, opts.offload)
        pipe.set_progress_bar_config(disable=True)

        adapter = self.adapter
        self._adapter = adapter = adapter.with_rules(rules_from_pipeline(adapter.rules, pipe))
        self._pipes = loading.build_pipelines(pipe, adapter)
        self._batched_cfg = speed.apply_speed(pipe, device, opts, adapter, self.applied)
        log.info("%s ready on %s: %s", self.model_name, device, self.applied)
        if device.type == "cuda":
            # Conv algorithms tuned per shape: the VAE's 3-D convolutions run at fixed sizes.
            torch.backends.cudnn.benchmark = True
        speed.warm_up(
            opts.warmup,
            self._pipes,
            bool(self.applied.get("compile")),
            lambda request: self._shape(request, None),
            lambda job: self._run(job, None, steps=2),
        )

    # -- making videos ----------------------------------------------------------------------

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        if not self._pipes:
            raise EngineError("engine_not_started", "the diffusers engine has not been started")
        with self._lock:
            ctx.check_cancel()
            frames, seed, steps, seconds = self._run(job, ctx)
            path = _write_mp4(frames, ctx.work_dir / f"{job.task_id}.mp4", job.fps)
            height, width = frames[0].y.shape
            return EngineResult(
                path=path,
                width=int(width),
                height=int(height),
                fps=job.fps,
                frames=len(frames),
                model=self.model_name,
                usage={"seed": seed, "steps": steps, "inference_seconds": round(seconds, 3)},
            )

    def _run(
        self, job: VideoJob, ctx: EngineContext | None, *, steps: int | None = None
    ) -> tuple[Any, int, int, float]:
        """Denoise, decode and quantise one job; returns (frames, seed, steps, seconds)."""
        import torch

        adapter = self.adapter
        task = "i2v" if job.image is not None else "t2v"
        self._check_task(task == "i2v")
        pipe = self._pipes[task]
        default_steps, guidance = self._steps_and_guidance()
        steps = steps or default_steps
        seed = job.seed if job.seed is not None and job.seed >= 0 else secrets.randbelow(2**31)
        generator = torch.Generator(device=self._device).manual_seed(seed)

        started = time.perf_counter()
        with torch.no_grad():
            positive = self._embed(pipe, job.prompt)
            negative = None
            if guidance > 1:
                text = self.options.negative_prompt
                if text is None:
                    text = adapter.rules.default_negative_prompt
                negative = self._embed(pipe, text)
        kwargs = adapter.call_kwargs(pipe, job, steps, guidance)
        kwargs.update(adapter.embedding_kwargs(positive, negative))
        kwargs.update(
            generator=generator,
            output_type="pt",
            return_dict=False,
            callback_on_step_end=self._step_callback(ctx, steps),
        )

        failure: BaseException | None = None
        frames: Any = None
        try:
            with ExitStack() as stack:
                if negative is not None:
                    for batched in self._batched_cfg:
                        stack.enter_context(batched.active(positive[0], negative[0]))
                video = pipe(**kwargs)[0]
                frames = frames_to_yuv420(video)
                del video
        except TaskCancelled as exc:
            failure = TaskCancelled(str(exc))
        except torch.OutOfMemoryError as exc:
            failure = EngineError(
                "gpu_out_of_memory", f"{job.width}x{job.height}x{job.frames} does not fit: {exc}"
            )
        except Exception as exc:
            if is_fatal_device_error(exc):
                # The CUDA context is gone: no cleanup call would return; the runner ends us.
                raise EngineFatal(f"{type(exc).__name__}: {exc}") from None
            log.exception("generation of %s failed", job.task_id)
            failure = EngineError("generation_failed", f"{type(exc).__name__}: {exc}")
        # Raised here, outside the except blocks, as a new exception without the old traceback:
        # the pipeline's frames (and the GPU tensors they hold) are released before the worker
        # sees it.
        if failure is not None:
            self._reset_after_failure(pipe)
            raise failure
        seconds = time.perf_counter() - started
        if ctx is not None:
            self._calibrate(job, steps, guidance > 1, seconds)
        return frames, seed, steps, seconds

    def _step_callback(
        self, ctx: EngineContext | None, steps: int
    ) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
        device = self._device

        def on_step_end(
            pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if device.type == "cuda":
                import torch

                # Progress and cancel follow the GPU, not the CPU queueing steps ahead of it.
                torch.cuda.current_stream(device).synchronize()
            if ctx is not None:
                ctx.report_progress(DENOISE_SHARE * (step + 1) / steps)
            return {}

        return on_step_end

    def _embed(self, pipe: Any, text: str) -> tuple[Any, Any]:
        cached = self._prompt_cache.get(text)
        if cached is not None:
            self._prompt_cache.move_to_end(text)
            return cached
        transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        embedding = self.adapter.encode_prompt(
            pipe, text, self._device, transformer.dtype, mask=True
        )
        if self.options.prompt_cache_size:
            self._prompt_cache[text] = embedding
            while len(self._prompt_cache) > self.options.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        return embedding

    def _reset_after_failure(self, pipe: Any) -> None:
        """Put the pipeline back as a finished call leaves it (cache hooks reset, offloaded
        modules back on the CPU) and return the freed GPU memory to the allocator's pool."""
        pipe.maybe_free_model_hooks()
        gc.collect()
        if self._device is not None and self._device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _calibrate(self, job: VideoJob, steps: int, cfg: bool, seconds: float) -> None:
        """Fold a finished job into the effective rate (FLOP/s, overheads included)."""
        pipe = self._pipes["i2v" if job.image is not None else "t2v"]
        shape = PlannedShape(job.width, job.height, job.fps, job.frames)
        flops = self.adapter.flops_per_step(pipe.transformer.config, shape, cfg) * steps
        rate = flops / max(seconds, 1e-3)
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate

    def close(self) -> None:
        self._pipes = {}
        self._batched_cfg = []
        self._prompt_cache.clear()
        self._given_pipeline = None
        gc.collect()
        if self._device is not None and self._device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
