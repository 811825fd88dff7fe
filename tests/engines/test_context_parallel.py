"""Context parallelism (parallel.py) on CPU: two gloo ranks against one plain process.

The same tiny random-weight Wan 2.1 pipeline (tests/helpers/pipelines.py, seeded, so every
process builds the same weights) runs the same job (fixed seed, so the same initial latents;
2 steps with classifier-free guidance, so 4 transformer calls) once in this process and once
over two spawned ranks with diffusers' Ulysses plan. The ranks go through the route's real
path: rank 0 takes the jobs from a queue and broadcasts them, both ranks denoise, rank 0 writes
the MP4. A hook on the first attention records the tokens each process saw, so the test also
proves that the sequence was split and not merely run twice.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opendance.engines.diffusers import parallel
from opendance.engines.diffusers.parallel import DenoiseJob

#: 5 frames at 64x64: latents (1, 16, 2, 8, 8), 2 x 4 x 4 = 32 tokens after the 1x2x2 patch.
TOKENS = 32
JOB = DenoiseJob(
    prompt="a red fox in the snow",
    negative_prompt="blurry",
    width=64,
    height=64,
    num_frames=5,
    num_inference_steps=2,
    guidance_scale=5.0,
    seed=7,
)


def _load_tiny(record_dir: str, device: str) -> Any:
    """The tiny Wan 2.1 pipeline on `device`, recording the tokens its first attention sees."""
    from diffusers import WanPipeline

    from tests.helpers.pipelines import wan21_components

    pipe = WanPipeline(**wan21_components()).to(device)
    pipe.set_progress_bar_config(disable=True)
    name = Path(record_dir) / f"tokens-{os.environ.get('RANK', 'single')}"

    def record(module: Any, args: Any, output: Any) -> None:
        with name.open("a") as file:
            file.write(f"{output.shape[1]}\n")

    pipe.transformer.blocks[0].attn1.register_forward_hook(record)
    return pipe


def _tokens(record_dir: Path, who: str) -> set[int]:
    return {int(line) for line in (record_dir / f"tokens-{who}").read_text().split()}


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_degrees_default_to_ulysses_over_all_devices() -> None:
    assert parallel.degrees(["cuda:0", "cuda:1"]) == (2, 1)
    assert parallel.degrees(["cuda:0", "cuda:1", "cuda:2", "cuda:3"], ring_degree=2) == (2, 2)
    assert parallel.degrees(["cpu", "cpu"]) == (2, 1)
    assert parallel.backend_for(["cuda:0", "cuda:1"]) == "nccl"
    assert parallel.backend_for(["cpu", "cpu"]) == "gloo"
    for devices, ulysses in ((["cuda:0"], None), (["cuda:0", "cuda:0"], None), (["cpu"] * 4, 3)):
        with pytest.raises(ValueError):
            parallel.degrees(devices, ulysses_degree=ulysses)


def test_ring_attention_is_refused_on_the_native_backend() -> None:
    """SDPA returns no log-sum-exp, so ring would fail mid-step; it is refused before any hook."""
    from tests.helpers.pipelines import wan21_components

    transformer = wan21_components()["transformer"]
    with pytest.raises(ValueError, match="log-sum-exp"):
        parallel.enable_context_parallel(transformer, ring_degree=2)
    with pytest.raises(ValueError, match="heads"):
        parallel.enable_context_parallel(transformer, ulysses_degree=4)
    assert transformer._parallel_config is None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    single_dir, ranks_dir = tmp_path / "single", tmp_path / "ranks"
    single_dir.mkdir()
    ranks_dir.mkdir()
    as_mp4 = dataclasses.replace(JOB, output=str(tmp_path / "ranks.mp4"))
    single_mp4 = dataclasses.replace(JOB, output=str(tmp_path / "single.mp4"))

    pipe = _load_tiny(str(single_dir), "cpu")
    expected = parallel.run_parallel_denoise(pipe, JOB, rank=0)
    video = parallel.run_parallel_denoise(pipe, single_mp4, rank=0)
    reference_mp4 = parallel.write_video(video, single_mp4)
    del pipe

    context = mp.get_context("spawn")
    jobs, results = context.Queue(), context.Queue()
    for job in (JOB, as_mp4, None):
        jobs.put(job)
    ranks = parallel.launch(
        ["cpu", "cpu"],
        parallel.serve_rank,
        functools.partial(_load_tiny, str(ranks_dir)),
        jobs,
        results,
        2,  # ulysses_degree
        1,  # ring_degree
        join=False,
    )
    try:
        latents = results.get(timeout=150)
        written = results.get(timeout=60)
    finally:
        if not ranks.join(timeout=60):
            for process in ranks.processes:
                process.kill()

    torch.testing.assert_close(torch.from_numpy(latents), expected.float(), atol=1e-5, rtol=1e-5)
    # One process saw every token; each rank saw its half (the hook runs on both jobs' calls).
    assert _tokens(single_dir, "single") == {TOKENS}
    assert _tokens(ranks_dir, "0") == _tokens(ranks_dir, "1") == {TOKENS // 2}

    assert Path(written) == tmp_path / "ranks.mp4"
    got, want = _frames(Path(written)), _frames(reference_mp4)
    assert got.shape == want.shape == (JOB.num_frames, JOB.height, JOB.width, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
