"""docs/gpu.md works as written: its routes are valid settings, and its quality-tier route,
pointed at a tiny saved pipeline on the CPU, serves the page's curl request."""

from __future__ import annotations

import json
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendance.engines.routing import check_routes
from opendance.settings import Settings
from tests.helpers import pipelines
from tests.helpers.processes import ServerProcess

pytest.importorskip("diffusers")
DOC = Path(__file__).resolve().parents[2] / "docs" / "gpu.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_route_on_the_page_is_a_valid_configuration(tmp_path: Path) -> None:
    routes = _blocks("toml")
    assert len(routes) >= 2, "a quality tier and a fast tier"
    for text in routes:
        config = tomllib.loads(text)
        settings = Settings(data_dir=tmp_path, routes=config["routes"])
        (route,) = settings.routes.values()
        assert route.engines[0].engine == "diffusers"
        # Hub ids are only downloaded at start: nothing to refuse without loading.
        assert check_routes(settings) == []


@pytest.mark.slow
def test_the_quality_tier_route_serves_the_pages_curl(tmp_path: Path) -> None:
    config = tomllib.loads(_blocks("toml")[0])
    (route,) = config["routes"].values()
    options: dict[str, Any] = route["engines"][0]["options"]
    # The same route on a tiny random-weight pipeline, made small enough for a CPU.
    options.update(
        model=str(pipelines.build_wan21(tmp_path / "tiny")),
        device="cpu",
        num_inference_steps=2,
        size_override=[128, 128],
        max_frames=9,
    )
    path = tmp_path / "opendance.json"
    path.write_text(json.dumps(config))
    (curl,) = [block for block in _blocks("sh") if "curl" in block and "-d '" in block]
    body = json.loads(re.search(r"-d '(\{.*?\})'", curl, flags=re.S).group(1))  # type: ignore[union-attr]
    process = ServerProcess(tmp_path / "data", tmp_path / "server.log", workers="1")
    process.start("-c", str(path))
    try:
        headers = {"Authorization": f"Bearer {process.create_key(100)}"}
        created = httpx.post(
            f"{process.base_url}/v1/videos/generations", headers=headers, json=body
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            task = httpx.get(f"{process.base_url}/v1/tasks/{task_id}", headers=headers).json()
            if task["status"] in ("completed", "failed"):
                break
            time.sleep(0.3)
        assert task["status"] == "completed", task
        assert httpx.get(task["results"][0]).headers["content-type"] == "video/mp4"
    finally:
        process.stop()
