"""Helpers of the face tests: the official SDK clients on a test server, a test picture, and
waiting for a task."""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
from byteplussdkarkruntime import Ark
from PIL import Image

from tests.helpers.servers import LiveServer

#: Whether the core records the face a task came through (callbacks then go out in its format).
#: Whether the worker reads `upload:` images (multipart uploads and data: URLs) from disk.


def openai_client(server: LiveServer, key: str) -> openai.OpenAI:
    """The official client with only the base URL and the key changed."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key)


def ark_client(server: LiveServer, key: str) -> Ark:
    """The official Ark runtime client with only the base URL and the key changed."""
    return Ark(base_url=f"{server.base_url}/api/v3", api_key=key)


def pattern(width: int, height: int) -> Image.Image:
    """A smooth, asymmetric picture: survives H.264 closely, and a wrong crop shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    rgb = np.stack([30 + 200 * u, 30 + 200 * v, 128 + 90 * np.sin(2 * np.pi * (u + 0.5 * v))], -1)
    distance = np.hypot(x - 0.3 * width, y - 0.35 * height)
    alpha = np.clip((0.18 * min(width, height) - distance) / 3, 0, 1)[..., None]
    rgb = rgb * (1 - alpha) + np.array([240, 40, 40], dtype=np.float32) * alpha
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def wait_task(
    server: LiveServer, key: str, task_id: str, statuses: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    """Poll the Seedance face until the task is in one of `statuses`."""
    return server.wait_for(key, task_id, lambda t: t["status"] in statuses, timeout)
