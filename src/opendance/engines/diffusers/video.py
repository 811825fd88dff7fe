"""Frames out of a pipeline into the MP4 the task hands back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opendance.media.video import _RGB_TO_YUV, _YUV_OFFSET, Mp4Writer, Yuv420


def frames_to_yuv420(video: Any) -> list[Yuv420]:
    """A pipeline's `output_type="pt"` video (1, F, 3, H, W) in [0, 1] as 4:2:0 uint8 planes.

    Converted on the pipeline's device with the writer's matrix (BT.709, limited range) straight
    from the decoder's float output: half as many bytes as RGB cross to the CPU, one rounding
    instead of two, and the CPU only encodes.
    """
    import torch

    rgb = video[0].float() * 255
    matrix = torch.as_tensor(_RGB_TO_YUV, device=rgb.device)
    offset = torch.as_tensor(_YUV_OFFSET, device=rgb.device).view(1, 3, 1, 1)
    ycbcr = torch.einsum("kc,fchw->fkhw", matrix, rgb) + offset
    chroma = torch.nn.functional.avg_pool2d(ycbcr[:, 1:], 2)

    def to_u8(values: Any) -> Any:
        return (values + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()

    y, u, v = to_u8(ycbcr[:, 0]), to_u8(chroma[:, 0]), to_u8(chroma[:, 1])
    return [Yuv420(y=y[i], u=u[i], v=v[i]) for i in range(y.shape[0])]


def _write_mp4(frames: list[Yuv420], path: Path, fps: int) -> Path:
    """Write 4:2:0 frames as H.264 MP4 with the project's shared writer."""
    height, width = frames[0].y.shape
    with Mp4Writer(path, int(width), int(height), fps) as writer:
        for planes in frames:
            writer.write_yuv420(planes)
    return writer.path
