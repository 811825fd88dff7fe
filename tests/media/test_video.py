"""MP4 writing and reading, checked by decoding the real files with PyAV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from opendance.media.video import (
    InvalidVideo,
    Mp4Writer,
    encode_mp4,
    extract_thumbnail,
    iter_frames,
    probe_mp4,
    read_frame,
    rgb_to_yuv420,
)
from tests.helpers.images import mean_abs_error

WIDTH, HEIGHT = 320, 176


def smooth_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A smooth gradient that shifts with `index`: easy to compress, different every frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (xx * 200 // width + index * 5) % 256
    rgb[..., 1] = yy * 200 // height + 20
    rgb[..., 2] = 90
    return rgb


def frames(count: int) -> Iterator[np.ndarray]:
    return (smooth_frame(i) for i in range(count))


def test_encode_mp4_writes_h264_with_the_exact_size_rate_and_frame_count(tmp_path: Path) -> None:
    path = encode_mp4(frames(48), tmp_path / "out.mp4", WIDTH, HEIGHT, fps=24)

    info = probe_mp4(path)
    assert (info.width, info.height, info.fps, info.frames) == (WIDTH, HEIGHT, 24.0, 48)
    assert info.duration_seconds == pytest.approx(2.0)
    assert info.codec == "h264"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert container.format.name.startswith("mov,mp4")


def test_moov_atom_comes_before_the_media_data_so_browsers_can_stream(tmp_path: Path) -> None:
    path = encode_mp4(frames(24), tmp_path / "out.mp4", WIDTH, HEIGHT)

    data = path.read_bytes()
    assert 0 <= data.index(b"moov") < data.index(b"mdat")


def test_decoded_frames_match_what_was_written(tmp_path: Path) -> None:
    path = encode_mp4(frames(30), tmp_path / "out.mp4", WIDTH, HEIGHT)

    assert mean_abs_error(read_frame(path, 0), smooth_frame(0)) < 3
    assert mean_abs_error(read_frame(path, 29), smooth_frame(29)) < 3
    assert mean_abs_error(read_frame(path, 29), smooth_frame(0)) > 10


def test_rgb_and_yuv_inputs_use_the_same_colour_matrix(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "yuv.mp4", WIDTH, HEIGHT) as writer:
        writer.write_yuv420(rgb_to_yuv420(smooth_frame(3)))
    encode_mp4([smooth_frame(3)], tmp_path / "rgb.mp4", WIDTH, HEIGHT)

    from_yuv = read_frame(tmp_path / "yuv.mp4", 0)
    assert mean_abs_error(from_yuv, read_frame(tmp_path / "rgb.mp4", 0)) < 1.5
    assert mean_abs_error(from_yuv, smooth_frame(3)) < 3


def test_rgb_to_yuv420_uses_bt709_limited_range() -> None:
    rgb = np.zeros((2, 6, 3), dtype=np.uint8)
    rgb[:, 0:2] = (255, 255, 255)
    rgb[:, 4:6] = (255, 0, 0)

    planes = rgb_to_yuv420(rgb)

    assert planes.y[0].tolist() == [235, 235, 16, 16, 63, 63]
    assert planes.u[0].tolist() == [128, 128, 102]
    assert planes.v[0].tolist() == [128, 128, 240]


def test_stream_is_tagged_bt709_limited_range(tmp_path: Path) -> None:
    path = encode_mp4(frames(2), tmp_path / "out.mp4", WIDTH, HEIGHT)

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        assert int(frame.colorspace) == 1  # AVCOL_SPC_BT709
        assert int(frame.color_range) == 1  # AVCOL_RANGE_MPEG


def test_new_frame_planes_render_without_a_copy(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "out.mp4", WIDTH, HEIGHT) as writer:
        frame, planes = writer.new_frame()
        planes.y[...] = 180
        planes.u[...] = 128
        planes.v[...] = 128
        writer.write_frame(frame)

    grey = read_frame(tmp_path / "out.mp4", 0)
    assert abs(float(grey.mean()) - (180 - 16) * 255 / 219) < 1.5


def test_planes_of_widths_with_row_padding_are_written_correctly(tmp_path: Path) -> None:
    # 200 wide: libav pads the 100-pixel chroma rows, so the views must skip the padding.
    rgb = smooth_frame(5, 200, 96)
    with Mp4Writer(tmp_path / "out.mp4", 200, 96) as writer:
        writer.write_yuv420(rgb_to_yuv420(rgb))
        writer.write_rgb(rgb)

    assert mean_abs_error(read_frame(tmp_path / "out.mp4", 0), rgb) < 3
    assert mean_abs_error(read_frame(tmp_path / "out.mp4", 1), rgb) < 3


def test_a_failure_while_writing_leaves_no_file_behind(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"

    with pytest.raises(RuntimeError), Mp4Writer(target, WIDTH, HEIGHT) as writer:
        for rgb in frames(60):
            writer.write_rgb(rgb)
        assert list(tmp_path.iterdir()) != []  # the temporary file, not the target
        assert not target.exists()
        raise RuntimeError("cancelled")

    assert list(tmp_path.iterdir()) == []


def test_a_video_needs_at_least_one_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        encode_mp4([], tmp_path / "out.mp4", WIDTH, HEIGHT)
    assert list(tmp_path.iterdir()) == []


def test_odd_sizes_and_wrong_frame_sizes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", 321, 176)
    with (
        pytest.raises(ValueError, match="is 160x88"),
        Mp4Writer(tmp_path / "out.mp4", WIDTH, HEIGHT) as writer,
    ):
        writer.write_rgb(smooth_frame(0, 160, 88))
    assert list(tmp_path.iterdir()) == []


def test_probe_without_decoding_counts_the_same_frames(tmp_path: Path) -> None:
    path = encode_mp4(frames(37), tmp_path / "out.mp4", WIDTH, HEIGHT)

    assert probe_mp4(path, decode=False) == probe_mp4(path)


def test_probe_rejects_files_that_are_not_video(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-video.mp4"
    bogus.write_bytes(b"this is not an mp4 file at all" * 10)

    with pytest.raises(InvalidVideo):
        probe_mp4(bogus)
    with pytest.raises(InvalidVideo):
        probe_mp4(tmp_path / "missing.mp4")


def test_read_frame_past_the_end_raises_index_error(tmp_path: Path) -> None:
    path = encode_mp4(frames(5), tmp_path / "out.mp4", WIDTH, HEIGHT)

    assert len(list(iter_frames(path))) == 5
    with pytest.raises(IndexError):
        read_frame(path, 5)


@pytest.mark.parametrize("name", ["thumb.webp", "thumb.jpg", "thumb.png"])
def test_thumbnail_is_a_shrunk_frame_with_the_same_ratio(tmp_path: Path, name: str) -> None:
    path = encode_mp4(frames(10), tmp_path / "out.mp4", WIDTH, HEIGHT)

    thumb = extract_thumbnail(path, tmp_path / name, max_side=160)

    with Image.open(thumb) as image:
        assert image.size == (160, 88)
        expected = np.asarray(Image.fromarray(smooth_frame(0)).resize((160, 88)))
        assert mean_abs_error(np.asarray(image.convert("RGB")), expected) < 6


def test_thumbnail_position_follows_at_fraction(tmp_path: Path) -> None:
    solid = [np.full((HEIGHT, WIDTH, 3), value, dtype=np.uint8) for value in (30, 120, 220)]
    path = encode_mp4(solid, tmp_path / "out.mp4", WIDTH, HEIGHT)

    last = extract_thumbnail(path, tmp_path / "last.png", at_fraction=1.0, max_side=None)

    with Image.open(last) as image:
        assert image.size == (WIDTH, HEIGHT)
        assert abs(float(np.asarray(image).mean()) - 220) < 3


def test_thumbnail_rejects_unknown_formats(tmp_path: Path) -> None:
    path = encode_mp4(frames(2), tmp_path / "out.mp4", WIDTH, HEIGHT)

    with pytest.raises(ValueError, match="thumbnail must end"):
        extract_thumbnail(path, tmp_path / "thumb.gif")
