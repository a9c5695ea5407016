"""The reader's RGB (pipelines/decode_rgb.py: swscale's accurate conversion to planar, interleaved by OpenCV) is
byte for byte the accurate conversion to packed RGB it replaced, on 4:2:0, 4:4:4, 10-bit and odd-sized video; its
batch arrays are filled again only once the consumer has let go of them."""
from __future__ import annotations

import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest

from swapstream.pipelines.decode import open_video
from swapstream.pipelines.decode_rgb import RGB_CONVERSION
from tests.helpers.media import MEDIA

VID01 = MEDIA / "vid01_talking_head_1280x720_audio.mp4"  # H.264 4:2:0 BT.709
VID03 = MEDIA / "vid03_square_480_expressions.mp4"


def packed_rgb(path: Path) -> np.ndarray:
    """The conversion the reader used before: swscale's accurate flags, straight to rgb24."""
    with av.open(str(path)) as container:
        return np.stack([frame.reformat(format="rgb24", interpolation=RGB_CONVERSION).to_ndarray()
                         for frame in container.decode(video=0)])


def encoded(tmp_path: Path, source: Path, name: str, *options: str) -> Path:
    out = tmp_path / name
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(source), "-frames:v", "6",
                    "-an", *options, str(out)], check=True, timeout=120)
    return out


@pytest.mark.parametrize("make", [
    lambda d: encoded(d, VID01, "bt709.mp4", "-c:v", "copy"),
    lambda d: encoded(d, VID03, "420.mp4", "-c:v", "copy"),
    lambda d: encoded(d, VID03, "444-odd.mp4", "-vf", "scale=161:97", "-c:v", "libx264", "-pix_fmt", "yuv444p",
                      "-preset", "ultrafast"),
    lambda d: encoded(d, VID03, "10bit.mp4", "-vf", "scale=160:96", "-c:v", "libx264", "-pix_fmt", "yuv420p10le",
                      "-preset", "ultrafast"),
], ids=["h264-720p-bt709", "h264-420", "444-odd-size", "420-10bit"])
def test_the_reader_gives_the_accurate_packed_conversion_byte_for_byte(tmp_path, make):
    path = make(tmp_path)
    reader = open_video(path, batch_size=4)
    frames = np.concatenate([batch.frames for batch in reader])
    want = packed_rgb(path)
    assert reader.decoder == "pyav" and frames.shape == want.shape and len(frames) == 6
    np.testing.assert_array_equal(frames, want)
    if "420" not in reader.info.pix_fmt:
        return
    # Subsampled chroma: it is the accurate conversion, not swscale's default one (which differs at colour edges).
    with av.open(str(path)) as container:
        default = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(default.astype(int) - want[0]).max() > 2


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_turned_write_is_np_rot90_of_the_unturned_one(turns):
    """RgbWriter turns with cv2.rotate into the batch; the direction is np.rot90's (counter-clockwise)."""
    from swapstream.pipelines.decode_rgb import RgbWriter
    with av.open(str(VID03)) as container:
        frame = next(container.decode(video=0))
    writer = RgbWriter()
    plain = np.empty((frame.height, frame.width, 3), np.uint8)
    writer.write(frame, plain)
    want = np.rot90(plain, turns)
    turned = np.full(want.shape, 7, np.uint8)
    out_ptr = turned.ctypes.data
    writer.write(frame, turned, turns)
    assert turned.ctypes.data == out_ptr  # written in place, not rebound
    np.testing.assert_array_equal(turned, want)


def test_kept_batches_stay_intact_and_dropped_ones_are_filled_again(tmp_path):
    """The reader fills a batch array again only once nothing refers to it (pipelines/decode_rgb.BatchArrays)."""
    path = encoded(tmp_path, VID03, "420.mp4", "-c:v", "copy")
    want = packed_rgb(path)
    kept = list(open_video(path, batch_size=2))
    np.testing.assert_array_equal(np.concatenate([batch.frames for batch in kept]), want)
    assert len({batch.frames.ctypes.data for batch in kept}) == 3

    addresses, first_frame = [], None
    for index, batch in enumerate(open_video(path, batch_size=1)):
        np.testing.assert_array_equal(batch.frames[0], want[index])
        addresses.append(batch.frames.ctypes.data)
        if index == 0:
            first_frame = batch.frames[0]  # a view keeps its batch from being filled again
    np.testing.assert_array_equal(first_frame, want[0])
    assert addresses[0] not in addresses[1:]
    assert len(set(addresses[1:])) == 2  # each batch dropped by the consumer is filled again
