"""The fast tier and recovery of the diffusers engine, on tiny random-weight pipelines (CPU):
a fused LoRA, guidance off, a chosen scheduler and shift, one progress report per step, an
out-of-memory error that fails one task only, and a fatal device error that ends the worker."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from opendance.engines.base import FATAL_EXIT_CODE
from opendance.engines.diffusers.engine import DiffusersEngine
from opendance.settings import DEFAULT_MODEL, Route, RouteEngine
from tests.engines.test_diffusers_engine import (
    RecordingContext,
    count_calls,
    decode,
    job_for,
    request,
)
from tests.helpers import pipelines
from tests.helpers.processes import ServerProcess
from tests.helpers.servers import LiveServer

pytest.importorskip("diffusers")
ServerFactory = Callable[..., LiveServer]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipelines.build_wan21(tmp_path_factory.mktemp("wan21"))


@pytest.fixture(scope="module")
def lora(wan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA on the transformer's attention projections, saved as diffusers saves one."""
    pytest.importorskip("peft")
    import torch
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = WanPipeline.from_pretrained(wan)
    torch.manual_seed(1)
    pipe.transformer.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )  # fmt: skip
    )
    folder = tmp_path_factory.mktemp("lora")
    WanPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer)
    )
    return folder


@pytest.fixture
def make(wan: Path) -> Iterator[Callable[..., DiffusersEngine]]:
    engines: list[DiffusersEngine] = []

    def build(**overrides: Any) -> DiffusersEngine:
        engine = DiffusersEngine(pipelines.engine_options("wan21", wan, **overrides))
        engine.start()
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


def frames_of(engine: DiffusersEngine, tmp_path: Path) -> np.ndarray:
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = engine.generate(job_for(engine, request(seed=3)), RecordingContext(tmp_path))
    return decode(result.path)[0]


def test_a_fused_lora_changes_the_video_and_costs_no_extra_call(
    make: Callable[..., DiffusersEngine], lora: Path, tmp_path: Path
) -> None:
    plain = make(num_inference_steps=4, guidance_scale=1.0)
    fused = make(num_inference_steps=4, guidance_scale=1.0, loras=[{"path": str(lora)}])
    assert fused.applied["loras"] == [str(lora)]
    transformer = fused._pipes["t2v"].transformer
    assert not any("lora" in name for name, _ in transformer.named_modules()), "adapters unloaded"
    plain_calls = count_calls(plain._pipes["t2v"].transformer)
    fused_calls = count_calls(transformer)
    a = frames_of(plain, tmp_path / "a")
    b = frames_of(fused, tmp_path / "b")
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5, "the LoRA changed the video"
    assert plain_calls[0] == fused_calls[0] == 4, "one transformer call per step, LoRA or not"


def test_guidance_off_is_one_transformer_call_per_step(
    make: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make(num_inference_steps=4, guidance_scale=1.0, batch_cfg=False)
    calls = count_calls(engine._pipes["t2v"].transformer)
    frames_of(engine, tmp_path)
    assert calls[0] == 4
    guided = make(num_inference_steps=4, guidance_scale=5.0, batch_cfg=False)
    guided_calls = count_calls(guided._pipes["t2v"].transformer)
    frames_of(guided, tmp_path / "g")
    assert guided_calls[0] == 8, "with guidance: two passes a step"


def test_four_steps_give_four_progress_reports(
    make: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make(num_inference_steps=4, guidance_scale=1.0)
    ctx = RecordingContext(tmp_path)
    engine.generate(job_for(engine, request()), ctx)
    assert len(ctx.progress) == 4
    assert ctx.progress == sorted(ctx.progress)


@pytest.mark.parametrize(
    ("scheduler", "shift", "expected", "key"),
    [
        ("unipc", 5.0, "UniPCMultistepScheduler", "flow_shift"),
        ("euler", 7.0, "FlowMatchEulerDiscreteScheduler", "shift"),
        ("default", 2.0, "FlowMatchEulerDiscreteScheduler", "shift"),
    ],
)
def test_the_scheduler_and_its_shift_are_route_options(
    make: Callable[..., DiffusersEngine],
    tmp_path: Path,
    scheduler: str,
    shift: float,
    expected: str,
    key: str,
) -> None:
    engine = make(scheduler=scheduler, flow_shift=shift)
    pipe = engine._pipes["t2v"]
    assert type(pipe.scheduler).__name__ == expected == engine.applied["scheduler"]
    assert pipe.scheduler.config[key] == shift
    assert frames_of(engine, tmp_path).shape[0] == 9


def _inject(monkeypatch: pytest.MonkeyPatch, error: BaseException, at_step: int) -> list[int]:
    """Raise `error` from the step callback at `at_step` (0-based), on the first job only."""
    hits: list[int] = []
    original = DiffusersEngine._step_callback

    def patched(self: DiffusersEngine, ctx: Any, steps: int) -> Any:
        inner = original(self, ctx, steps)

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: Any) -> Any:
            if step == at_step and not hits:
                hits.append(step)
                raise error
            return inner(pipe, step, timestep, tensors)

        return on_step_end

    monkeypatch.setattr(DiffusersEngine, "_step_callback", patched)
    return hits


def test_out_of_memory_fails_that_task_with_a_refund_and_the_next_one_runs(
    server_factory: ServerFactory, wan: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    hits = _inject(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried 9 GiB"), 1)
    options = pipelines.engine_options("wan21", wan, num_inference_steps=4)
    server = server_factory(
        routes={DEFAULT_MODEL: Route(engines=[RouteEngine(engine="diffusers", options=options)])},
        workers=1,
    )
    key = server.new_key(credits=100)
    first = server.create(key, prompt="too big", duration=2, quality="480p").json()
    failed = server.wait_done(key, first["id"], timeout=120)
    assert hits == [1]
    assert failed["status"] == "failed" and failed["error"]["code"] == "gpu_out_of_memory"
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] == 100
    second = server.create(key, prompt="fits", duration=2, quality="480p").json()
    done = server.wait_done(key, second["id"], timeout=120)
    assert done["status"] == "completed", done


SITECUSTOMIZE = '''
"""Test-only: the first job's step 2 meets a fatal CUDA error (a marker file remembers it)."""
import os
from pathlib import Path

marker = Path(os.environ["OPENDANCE_TEST_FATAL_MARKER"])
if not marker.exists():
    from opendance.engines.diffusers.engine import DiffusersEngine

    original = DiffusersEngine._step_callback

    def patched(self, ctx, steps):
        inner = original(self, ctx, steps)

        def on_step_end(pipe, step, timestep, tensors):
            if step == 1 and not marker.exists():
                marker.write_text("hit")
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return inner(pipe, step, timestep, tensors)

        return on_step_end

    DiffusersEngine._step_callback = patched
'''


@pytest.mark.slow
def test_a_fatal_device_error_ends_the_worker_and_the_task_runs_again(
    wan: Path, tmp_path: Path
) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "fatal-happened"
    options = pipelines.engine_options("wan21", wan, num_inference_steps=4)
    process = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", workers="1", max_attempts="3",
        routes=json.dumps({DEFAULT_MODEL: {"engines": [{"engine": "diffusers",
                                                         "options": options}]}}),
    )  # fmt: skip
    process.env["PYTHONPATH"] = os.pathsep.join(
        [str(inject), str(REPO / "src"), process.env.get("PYTHONPATH", "")]
    )
    process.env["OPENDANCE_TEST_FATAL_MARKER"] = str(marker)
    process.start()
    try:
        key = process.create_key(100)
        headers = {"Authorization": f"Bearer {key}"}
        task_id = httpx.post(
            f"{process.base_url}/v1/videos/generations", headers=headers,
            json={"model": DEFAULT_MODEL, "prompt": "a crash", "duration": 2, "quality": "480p"},
        ).json()["id"]  # fmt: skip
        assert process.proc is not None
        code = process.proc.wait(timeout=120)
        assert code == FATAL_EXIT_CODE
        assert marker.exists()
        assert "device is lost" in process.log.read_text()
        ((status, attempts),) = process.sql(
            "SELECT status, attempts FROM tasks WHERE id = :id", id=task_id
        )
        assert (status, attempts) == ("pending", 1), "back in the queue, the attempt counted"
        process.start()  # the supervisor's restart
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            task = httpx.get(f"{process.base_url}/v1/tasks/{task_id}", headers=headers).json()
            if task["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        assert task["status"] == "completed", task
        balance = httpx.get(f"{process.base_url}/v1/credits", headers=headers).json()["balance"]
        assert balance == 100 - task["usage"]["credits_reserved"]
    finally:
        process.stop()
