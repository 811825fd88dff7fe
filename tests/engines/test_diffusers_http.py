"""The diffusers engine behind the HTTP API, loading a saved tiny pipeline as users load weights."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from opendance.settings import Route, RouteEngine
from tests.helpers import pipelines
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
MODEL = "open-wan"


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipelines.build_wan21(tmp_path_factory.mktemp("wan21") / "pipeline")


def gpu_server(server_factory: ServerFactory, folder: Path, **options: Any) -> LiveServer:
    route = Route(
        engines=[
            RouteEngine(
                engine="diffusers",
                options=pipelines.engine_options("wan21", folder, **options),
            )
        ]
    )
    return server_factory(routes={MODEL: route}, lease_seconds=30)


def frames_of(server: LiveServer, url: str, path: Path) -> list[np.ndarray]:
    path.write_bytes(server.client.get(url).content)
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_a_task_runs_on_the_diffusers_engine(
    server_factory: ServerFactory, wan_folder: Path, tmp_path: Path
) -> None:
    server = gpu_server(server_factory, wan_folder, num_inference_steps=8)
    token = server.new_key()
    created = server.create(
        token, model=MODEL, prompt="a red fox", duration=2, quality="480p", seed=7
    )
    assert created.status_code == 200, created.text
    task_id = created.json()["id"]
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = server.get(token, task_id).json()
        seen.append(task["progress"])
        if task["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.01)
    assert task["status"] == "completed", task
    assert seen == sorted(seen)
    assert len({p for p in seen if 0 < p < 100}) >= 2, seen  # it rose step by step
    assert task["model"] == "tiny-wan21"
    info = task["task_info"]
    assert info["resolution"] == "128x128" and info["fps"] == 16 and info["frames"] == 9
    frames = frames_of(server, task["results"][0], tmp_path / "a.mp4")
    assert len(frames) == info["frames"]
    assert frames[0].shape == (128, 128, 3)

    again = server.create(
        token, model=MODEL, prompt="a red fox", duration=2, quality="480p", seed=7
    )
    other = server.create(
        token, model=MODEL, prompt="a red fox", duration=2, quality="480p", seed=8
    )
    same = server.wait_done(token, again.json()["id"], timeout=120)
    different = server.wait_done(token, other.json()["id"], timeout=120)
    same_frames = frames_of(server, same["results"][0], tmp_path / "b.mp4")
    other_frames = frames_of(server, different["results"][0], tmp_path / "c.mp4")
    # Identical frames in, so identical video out (up to the H.264 encoder, which may round
    # a pixel differently at these tiny sizes); another seed is a different video.
    same_seed = max(difference(a, b) for a, b in zip(frames, same_frames, strict=True))
    other_seed = max(difference(a, b) for a, b in zip(frames, other_frames, strict=True))
    assert same_seed < 0.25 and other_seed > 0.75, (same_seed, other_seed)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_cancel_stops_the_denoising_loop(server_factory: ServerFactory, wan_folder: Path) -> None:
    server = gpu_server(server_factory, wan_folder, num_inference_steps=200)
    token = server.new_key(credits=100)
    key_id = token.split("_")[1]
    task_id = server.create(
        token, model=MODEL, prompt="a slow one", duration=2, quality="480p"
    ).json()["id"]
    first = server.wait_for(token, task_id, lambda t: t["progress"] > 0, timeout=120)
    started = time.monotonic()
    while server.get(token, task_id).json()["progress"] == first["progress"]:
        time.sleep(0.005)  # one more step, to time a step
    step_seconds = time.monotonic() - started
    response = server.client.post(f"/v1/tasks/{task_id}/cancel", headers=server.auth(token))
    assert response.json()["status"] == "cancelled"
    cancelled_at = time.monotonic()
    while server.runtime.runner.active_tasks() and time.monotonic() - cancelled_at < 30:
        time.sleep(0.005)
    assert server.runtime.runner.active_tasks() == []
    # The engine let go within about one step (generous slack for a loaded CI machine).
    assert time.monotonic() - cancelled_at < 3 * step_seconds + 2.0
    assert server.get(token, task_id).json()["progress"] < 99
    assert not list(server.runtime.settings.results_dir.glob("*.mp4"))
    assert server.runtime.service.ledger_audit(key_id).balanced
    assert server.runtime.accounts.get(key_id).balance == 100
