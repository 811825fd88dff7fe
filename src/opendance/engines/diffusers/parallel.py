"""One video over N GPUs: context parallelism (Ulysses / ring attention) for a diffusers DiT.

The route option this serves (not yet in `options.py`): `devices: ["cuda:0", "cuda:1", ...]`,
optionally with `ulysses_degree` and `ring_degree` (their product must be the number of devices;
default: Ulysses over all of them). The functions here take those values as arguments.

Which implementation: diffusers' own (`ModelMixin.enable_parallelism` with a
`ContextParallelConfig`). `WanTransformer3DModel` (and LTX-Video's transformer) declare a
`_cp_plan`: the hooks split the token sequence at `blocks.0` (and the RoPE tables), each
attention exchanges heads by all-to-all (Ulysses) or K/V chunks (ring), and `proj_out`
all-gathers the sequence, so every rank ends each step with the whole noise prediction and the
scheduler steps identically everywhere. It needs no extra package (cache-dit 1.5.3 on PyPI
would add one for what diffusers already does for Wan) and its Ulysses path runs on the gloo
backend on CPU, which is how the tests check it against one process. Two limits, handled here:

* On a CPU-only torch, `enable_parallelism` computes its device as `rank % device_count()` with
  `device_count() == 0`; `enable_context_parallel` lends it a count of 1 for that call (the
  device it records is not used by the context-parallel hooks or attention).
* Ring attention needs an attention backend that returns the log-sum-exp (`_native_cudnn`,
  `_native_flash`, `flash`, `sage`, ...; CUDA and bf16/fp16): diffusers' `native` (SDPA)
  backend does not, so ring is for GPUs only and is refused early on `native`.

Process layout (one route, N devices)::

    worker process (holds the route's job queue)
      launch(devices, serve_rank, load, jobs, results)   torch.multiprocessing, start "spawn"
        rank r (one process per device, r = 0..N-1): env RANK=r, LOCAL_RANK=r, WORLD_SIZE=N,
          MASTER_ADDR=127.0.0.1, MASTER_PORT=<free port>, and for CUDA CUDA_VISIBLE_DEVICES
          set to devices[r] alone (so the rank's device is cuda:0 and diffusers' own
          `rank % device_count()` agrees); init_group(...) with NCCL on CUDA, gloo on CPU
          every rank: loads the same pipeline onto its device, enable_context_parallel(...)
          rank 0: takes a job (plain data) from `jobs`, broadcasts it to the others
          every rank: run_parallel_denoise(...) on the same job (same seed, same latents)
          rank 0: decodes with the VAE and writes the MP4, puts the path on `results`
          ranks 1..N-1: stop at the latents (their VAE is never run); `None` ends every rank

Every rank must enter every collective in the same order: a job that fails on one rank leaves
the others waiting until the process group's timeout, so the worker must treat a failure or a
dead rank as fatal to the whole group and launch it again. torch is imported inside the functions,
so the server imports this module without it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

#: Attention backends whose forward returns the log-sum-exp ring attention merges with.
RING_BACKENDS = frozenset(
    {"_native_cudnn", "_native_flash", "flash", "flash_hub", "_flash_3_hub", "sage", "sage_hub"}
)


@dataclass(frozen=True)
class DenoiseJob:
    """One video, as plain data: rank 0 broadcasts it, every rank runs the same pipeline call.

    `output`: the MP4 rank 0 writes; `None` returns the final latents instead (tests, benches).
    """

    prompt: str
    negative_prompt: str | None = None
    width: int = 832
    height: int = 480
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    seed: int = 0
    fps: int = 16
    output: str | None = None


def degrees(
    devices: Sequence[str], ulysses_degree: int | None = None, ring_degree: int | None = None
) -> tuple[int, int]:
    """(ulysses, ring) for a route's devices: default Ulysses over all; the product must be N."""
    count = len(devices)
    kinds = {device.partition(":")[0] for device in devices}
    if count < 2 or len(kinds) != 1 or not kinds <= {"cpu", "cuda"}:
        raise ValueError(f"context parallelism needs 2+ devices, all cuda:N or all cpu: {devices}")
    if kinds == {"cuda"} and len(set(devices)) != count:
        raise ValueError(f"each rank needs its own GPU, got {devices}")
    if any(degree is not None and degree < 1 for degree in (ulysses_degree, ring_degree)):
        raise ValueError("ulysses_degree and ring_degree must be 1 or more")
    ring = ring_degree or (1 if ulysses_degree is None else count // ulysses_degree)
    ulysses = ulysses_degree or count // ring
    if ulysses * ring != count:
        raise ValueError(f"ulysses_degree x ring_degree must be {count}, got {ulysses} x {ring}")
    return ulysses, ring


def backend_for(devices: Sequence[str]) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if devices[0].startswith("cuda") else "gloo"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (rank 0's store binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def init_group(
    rank: int,
    world_size: int,
    backend: str,
    init_method: str = "env://",
    timeout_s: float = 600.0,
) -> None:
    """Join the default process group; on NCCL, first bind this process to its (only) GPU."""
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(0)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


@contextmanager
def _device_count_for_cpu() -> Any:
    """diffusers picks `rank % torch.accelerator.device_count()`; a CPU-only torch counts 0."""
    import torch

    original = torch.accelerator.device_count
    if original() == 0:
        torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def enable_context_parallel(
    transformer: Any,
    *,
    ulysses_degree: int = 1,
    ring_degree: int = 1,
    attention_backend: str | None = None,
) -> None:
    """Apply the transformer's own `_cp_plan` over the default process group (all ranks call it).

    `attention_backend`: set on the transformer first (e.g. `_native_cudnn` for ring); `None`
    keeps the one it has. Ulysses needs the head count divisible by `ulysses_degree`; the token
    count (latent frames x latent height x width / patch) must divide by the world size.
    """
    import diffusers

    config_class: Any = diffusers.ContextParallelConfig
    if getattr(transformer, "_cp_plan", None) is None:
        raise ValueError(f"{type(transformer).__name__} declares no context-parallel plan")
    heads = int(transformer.config.num_attention_heads)
    if heads % ulysses_degree:
        raise ValueError(f"{heads} attention heads do not split over {ulysses_degree} ranks")
    if attention_backend is not None:
        transformer.set_attention_backend(attention_backend)
    if ring_degree > 1:
        backend = _attention_backend(transformer)
        if backend not in RING_BACKENDS:
            raise ValueError(
                f"ring attention needs an attention backend that returns the log-sum-exp "
                f"({', '.join(sorted(RING_BACKENDS))}), not {backend!r}"
            )
    config = config_class(ulysses_degree=ulysses_degree, ring_degree=ring_degree)
    with _device_count_for_cpu():
        transformer.enable_parallelism(config=config)


def _attention_backend(transformer: Any) -> str:
    """The backend the transformer's attention processors run (the active default if unset)."""
    from diffusers.models import attention_dispatch

    registry: Any = attention_dispatch._AttentionBackendRegistry
    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return str(getattr(backend, "value", backend))
    active, _ = registry.get_active_backend()
    return str(active.value)


def broadcast_job(job: DenoiseJob | None) -> DenoiseJob | None:
    """Rank 0's job (or `None`: stop) on every rank; the others pass anything."""
    import torch.distributed as dist

    box: list[DenoiseJob | None] = [job]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_parallel_denoise(pipe: Any, job: DenoiseJob, *, rank: int) -> Any:
    """The pipeline call every rank makes for `job`; the transformer's hooks do the splitting.

    Every rank seeds the same generator, so they draw the same initial latents. Rank 0 returns
    the decoded video (`output_type="pt"`) when the job has an `output`; otherwise, and on every
    other rank, the final latents (the VAE is not run there).
    """
    import torch

    decode = rank == 0 and job.output is not None
    generator = torch.Generator(device=pipe.device).manual_seed(job.seed)
    with torch.inference_mode():
        result = pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            num_frames=job.num_frames,
            num_inference_steps=job.num_inference_steps,
            guidance_scale=job.guidance_scale,
            generator=generator,
            output_type="pt" if decode else "latent",
        )
    return result.frames


def write_video(video: Any, job: DenoiseJob) -> Path:
    """Rank 0: the decoded video as the MP4 the job names (the engine's own writer)."""
    from opendance.engines.diffusers.video import _write_mp4, frames_to_yuv420

    assert job.output is not None
    return _write_mp4(frames_to_yuv420(video), Path(job.output), job.fps)


def serve_rank(
    rank: int,
    device: str,
    load: Callable[[str], Any],
    jobs: Any,
    results: Any,
    ulysses_degree: int,
    ring_degree: int,
    attention_backend: str | None = None,
) -> None:
    """One rank's life: load, enable context parallelism, then run jobs until rank 0 gets `None`.

    `load(device)` returns the pipeline on `device`; `jobs` / `results` are queues of the
    worker's spawn context, read and written by rank 0 only. A result is the MP4's path, or the
    latents as a numpy array for a job without `output`.
    """
    pipe = load(device)
    enable_context_parallel(
        pipe.transformer,
        ulysses_degree=ulysses_degree,
        ring_degree=ring_degree,
        attention_backend=attention_backend,
    )
    while (job := broadcast_job(jobs.get() if rank == 0 else None)) is not None:
        out = run_parallel_denoise(pipe, job, rank=rank)
        if rank == 0:
            results.put(str(write_video(out, job)) if job.output else out.float().cpu().numpy())


def _pin_device(device: str) -> str:
    """Make `device` this process's only GPU (before CUDA starts); its name from now on."""
    if not device.startswith("cuda"):
        return "cpu"
    index = int(device.partition(":")[2] or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[index] if visible else str(index)
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    return "cuda:0"


def _rank_entry(
    rank: int,
    target: Callable[..., None],
    devices: tuple[str, ...],
    port: int,
    args: tuple[Any, ...],
) -> None:
    """The spawned process: torch.distributed.run's environment, the group, then `target`."""
    import torch.distributed as dist

    world, host = str(len(devices)), "127.0.0.1"
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=world, MASTER_ADDR=host)
    os.environ["MASTER_PORT"] = str(port)
    device = _pin_device(devices[rank])  # importing torch starts no CUDA: still in time
    init_group(rank, len(devices), backend_for(devices))
    try:
        target(rank, device, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(
    devices: Sequence[str], target: Callable[..., None], *args: Any, join: bool = True
) -> Any:
    """Start one spawned process per device, each calling `target(rank, device, *args)`.

    `target` and `args` must pickle (module-level functions, spawn-context queues). With
    `join=False` returns torch's ProcessContext (`join()` it, or `processes` to watch).
    """
    import torch.multiprocessing

    multiprocessing: Any = torch.multiprocessing  # its stubs do not export start_processes
    return multiprocessing.start_processes(
        _rank_entry,
        args=(target, tuple(devices), free_port(), args),
        nprocs=len(devices),
        join=join,
        start_method="spawn",
    )
