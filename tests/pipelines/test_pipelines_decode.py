"""Video decode: DALI's own CPU decoder (VP9) against PyAV's, the PyAV path (H.264), rotation, timestamps,
bad files, and which decoder the GPU configuration selects."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from nvidia.dali import Pipeline

from swapstream.pipelines.align import pipeline_kwargs
from swapstream.pipelines.decode import (
    VideoDecodeError,
    choose_decoder,
    dali_decode_graph,
    dali_decoder_device,
    dali_takes,
    frames_graph,
    open_video,
    probe_video,
)

from tests.helpers.media import MEDIA  # noqa: E402
VID03 = MEDIA / "vid03_square_480_expressions.mp4"  # 480x480, 216 frames, 30 fps, H.264 + AAC
VID04 = MEDIA / "vid04_multi_small_faces_cuts_audio.mp4"  # 640x360, 275 frames, video starts at 0.85 s


def ffmpeg(*args: str) -> None:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, timeout=120)


def decode_all(path: Path, **kwargs):
    reader = open_video(path, **kwargs)
    batches = list(reader)
    frames = np.concatenate([b.frames for b in batches])
    pts = np.concatenate([b.pts for b in batches])
    return reader, batches, frames, pts


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("decode")
    files = {
        "vp9": out / "vid03_30.webm",
        "vp9_rotated": out / "vid03_30_rot90.webm",
        "h264_rotated": out / "vid04_12_rot90.mp4",
        "vfr": out / "vfr.mp4",
    }
    # Lossless VP9 of the first 30 frames: it stores the very YUV the H.264 decoder produced.
    ffmpeg("-i", str(VID03), "-frames:v", "30", "-an", "-c:v", "libvpx-vp9", "-lossless", "1",
           "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", str(files["vp9"]))
    # -display_rotation is an input option: it sets the display matrix on a stream copy.
    ffmpeg("-display_rotation", "90", "-i", str(files["vp9"]), "-c", "copy", str(files["vp9_rotated"]))
    ffmpeg("-display_rotation", "90", "-i", str(VID04), "-frames:v", "12", "-an", "-c", "copy",
           str(files["h264_rotated"]))
    # Variable frame rate: frames 10.. come 4 frame periods late.
    ffmpeg("-i", str(VID03), "-frames:v", "20", "-an", "-vf", "scale=160:160,setpts='(N+4*gte(N\\,10))/30/TB'",
           "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", str(files["vfr"]))
    return files


def test_vp9_on_cpu_is_decoded_by_pyav_like_dali(media):
    """On CPU "auto" runs PyAV (faster than DALI's CPU decoder here); its RGB is DALI's within the bounds below."""
    dali, dali_batches, dali_frames, dali_pts = decode_all(media["vp9"], device="cpu", batch_size=8, decoder="dali")
    pyav, pyav_batches, pyav_frames, pyav_pts = decode_all(media["vp9"], device="cpu", batch_size=8)

    assert dali.decoder == "dali" and pyav.decoder == "pyav"
    assert dali.info.codec == "vp9" and dali.info.frame_count == 30
    assert [len(b) for b in dali_batches] == [len(b) for b in pyav_batches] == [8, 8, 8, 6]
    assert [b.start for b in dali_batches] == [0, 8, 16, 24]
    assert dali_frames.shape == pyav_frames.shape == (30, 480, 480, 3) and dali_frames.dtype == np.uint8
    np.testing.assert_array_equal(dali_pts, pyav_pts)
    np.testing.assert_array_equal(dali_pts, dali.info.pts)
    # Within a level or two; a few pixels at sharp colour edges differ more (chroma upsampling).
    diff = np.abs(dali_frames.astype(int) - pyav_frames)
    assert diff.mean() < 0.25 and np.percentile(diff, 99) <= 1, diff.mean()
    assert (diff > 2).mean() < 0.005 and diff.max() <= 16
    # Same order: each DALI frame is closest to the PyAV frame of the same index.
    small_dali, small_pyav = dali_frames[:, ::8, ::8].astype(int), pyav_frames[:, ::8, ::8]
    distance = np.abs(small_dali[:, None] - small_pyav[None, :]).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(distance.argmin(axis=1), np.arange(30))

    # The lossless VP9 holds the H.264 decoder's own pictures: the PyAV path gives the same RGB.
    first_source_batch = next(iter(open_video(VID03, device="cpu", batch_size=30)))
    np.testing.assert_array_equal(pyav_frames, first_source_batch.frames)


def test_h264_on_cpu_goes_through_pyav_with_every_frame():
    reader, batches, frames, pts = decode_all(VID03, device="cpu", batch_size=64)

    info = reader.info
    assert reader.decoder == "pyav"
    assert (info.codec, info.width, info.height, info.rotation) == ("h264", 480, 480, 0)
    assert info.frame_count == 216 and len(frames) == 216  # as shared/media/README.md states
    assert [len(b) for b in batches] == [64, 64, 64, 24]
    assert frames.shape == (216, 480, 480, 3)
    assert info.fps == Fraction(30) and not info.variable_frame_rate
    assert info.has_audio and info.audio_codec == "aac"
    np.testing.assert_array_equal(pts, info.pts)
    assert np.all(np.diff(pts) == 512) and info.time_base == Fraction(1, 15360)
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 2  # frames differ: real content


def test_probe_reports_the_late_video_start_and_ntsc_rate():
    info = probe_video(VID04)
    assert info.frame_count == 275 and len(info.pts) == 275
    assert info.fps == Fraction(2997, 100)
    assert info.start_time == pytest.approx(0.852, abs=0.001)
    assert info.times[0] == pytest.approx(info.start_time)
    assert (info.width, info.height) == (640, 360) and info.has_audio


def test_variable_frame_rate_keeps_each_frame_timestamp(media):
    reader, _, frames, pts = decode_all(media["vfr"], batch_size=8)
    info = reader.info
    assert info.variable_frame_rate
    assert len(frames) == info.frame_count == 20
    np.testing.assert_array_equal(pts, info.pts)
    steps = np.diff(pts * float(info.time_base))
    assert steps[9] == pytest.approx(5 / 30, abs=1e-3)  # the gap
    assert np.delete(steps, 9) == pytest.approx(1 / 30, abs=1e-3)


def test_rotated_h264_comes_out_upright(media):
    reader, _, frames, pts = decode_all(media["h264_rotated"], batch_size=5)
    assert reader.info.rotation == 90
    assert (reader.info.width, reader.info.height) == (360, 640)
    assert frames.shape == (12, 640, 360, 3)

    plain = next(iter(open_video(VID04, batch_size=12))).frames
    np.testing.assert_array_equal(frames, np.rot90(plain, k=1, axes=(1, 2)))

    # Same direction as ffmpeg's own autorotation.
    raw = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(media["h264_rotated"]),
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    by_ffmpeg = np.frombuffer(raw, np.uint8).reshape(640, 360, 3).astype(int)
    same_way = np.abs(frames[0] - by_ffmpeg).mean()
    other_way = np.abs(frames[0][::-1, ::-1] - by_ffmpeg).mean()  # turned -90 instead of +90
    assert same_way < 3 and other_way > 5 * same_way, (same_way, other_way)


def test_rotated_vp9_is_turned_upright_by_the_dali_path(media):
    reader, _, rotated, _ = decode_all(media["vp9_rotated"], batch_size=16, decoder="dali")
    _, _, plain, _ = decode_all(media["vp9"], batch_size=16, decoder="dali")
    assert reader.decoder == "dali" and reader.info.rotation == 90
    np.testing.assert_array_equal(rotated, np.rot90(plain, k=1, axes=(1, 2)))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: _write(d / "notes.mp4", b"these are meeting notes, not a video\n" * 20), "not a video file"),
        (lambda d: _write(d / "empty.webm", b""), "empty"),
        # The first 90 kB of an MP4 whose index ('moov') is at the end: unreadable.
        (lambda d: _write(d / "cut.mp4", VID03.read_bytes()[:90_000]), "truncated or corrupt"),
    ],
    ids=["missing", "text", "empty", "truncated-mp4"],
)
def test_bad_files_raise_a_clear_error(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(VideoDecodeError, match=expected) as caught:
        open_video(path)
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value)


def test_truncated_streamable_mp4_is_reported_as_truncated(tmp_path):
    whole = tmp_path / "faststart.mp4"
    ffmpeg("-i", str(VID03), "-c", "copy", "-movflags", "+faststart", str(whole))
    cut = _write(tmp_path / "cut.mp4", whole.read_bytes()[:90_000])
    with pytest.raises(VideoDecodeError, match=r"truncated: the container lists 216 video frames but only \d+"):
        open_video(cut)


def test_truncated_webm_is_reported_as_truncated(media, tmp_path):
    data = media["vp9"].read_bytes()
    cut = _write(tmp_path / "cut.webm", data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match="truncated"):
        open_video(cut)


def test_gpu_configuration_selects_nvdec_and_gpu_graphs():
    # NVDEC ("mixed") takes H.264/HEVC/VP9/AV1; the CPU decoder of DALI only VP8/VP9/MJPEG.
    assert choose_decoder("h264", "yuv420p", "gpu") == "dali"
    assert choose_decoder("hevc", "yuv420p10le", "gpu") == "dali"
    assert choose_decoder("h264", "yuv444p", "gpu") == "pyav"
    assert choose_decoder("h264", "yuv420p", "cpu") == "pyav"
    assert choose_decoder("vp9", "yuv420p", "cpu") == "pyav" and dali_takes("vp9", "yuv420p", "cpu")
    assert not dali_takes("h264", "yuv420p", "cpu")
    assert choose_decoder("prores", "yuv422p10le", "gpu") == "pyav"
    assert dali_decoder_device("gpu") == "mixed" and dali_decoder_device("cpu") == "cpu"
    reader = open_video(VID03, device="gpu")  # probing only: no GPU is touched before iterating
    assert reader.decoder == "dali" and reader.device == "gpu"
    # The graphs are defined (not built: no GPU here) and their outputs live on the GPU.
    for define in (lambda: dali_decode_graph("gpu", 8, 90), lambda: frames_graph("gpu", 270)):
        pipe = Pipeline(**pipeline_kwargs("gpu", 1, device_id=0))
        with pipe:
            out = define()
        assert out.device == "gpu"
    with pytest.raises(VideoDecodeError, match="does not take h264"):
        open_video(VID03, device="cpu", decoder="dali")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_reader_gives_each_frame_as_pyav_converts_it_alone():
    """One conversion per frame into the batch (no DALI round trip on CPU) changes no pixel: the reader's frames
    are, bit for bit, what PyAV's own frame.to_ndarray gives with the same conversion flags, frame by frame."""
    from av.video.reformatter import Interpolation

    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    _, batches, frames, _ = decode_all(VID04, device="cpu", batch_size=7)
    assert [len(b) for b in batches[:2]] == [7, 7] and len(frames) == 275
    assert len({id(b.frames) for b in batches}) == len(batches)  # each batch its own array: consumers keep them
    with av.open(str(VID04)) as container:
        alone = np.stack([f.to_ndarray(format="rgb24", interpolation=flags) for f in container.decode(video=0)])
    np.testing.assert_array_equal(frames, alone)


def test_keep_is_given_at_construction_and_needs_pyav():
    from swapstream.pipelines.decode import VideoReader
    info = probe_video(VID03)
    reader = VideoReader(info, "cpu", 4, "pyav", keep=np.array([3, 5, 40]))
    frames = np.concatenate([b.frames for b in reader])
    every = np.concatenate([b.frames for b in open_video(VID03, batch_size=64)])
    assert len(frames) == 3
    np.testing.assert_array_equal(frames, every[[3, 5, 40]])
    kept = open_video(VID03, batch_size=4, keep=np.array([3, 5]))
    assert kept.decoder == "pyav" and list(kept.keep) == [3, 5]
    with pytest.raises(ValueError, match="keep .* needs the PyAV decoder"):
        open_video(VID03, decoder="dali", keep=np.array([3]))
    with pytest.raises(ValueError, match="needs the PyAV decoder"):
        VideoReader(info, "cpu", 4, "dali", keep=np.array([3]))


def _decode_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "decode"]


def _open_files() -> set[str]:
    return {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}


def test_a_file_damaged_after_probing_fails_at_its_frame_and_leaves_no_decoder(tmp_path):
    """Frames are decoded in a thread of their own (pipelines/ahead.py): PyAV's error there reaches the reader's
    caller as a VideoDecodeError naming the frame, after the batches before it, and the thread is gone."""
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(VID03.read_bytes())
    reader = open_video(damaged, batch_size=8)
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:  # zeros over the middle third, after the probe
        f.seek(size // 3)
        f.write(b"\0" * (size // 3))
    given = []
    with pytest.raises(VideoDecodeError, match=r"decoding failed at frame (\d+) of 216") as caught:
        for batch in reader:
            given.append(len(batch))
    failed_at = int(re.search(r"at frame (\d+)", str(caught.value)).group(1))
    assert sum(given) > 0 and failed_at >= sum(given)
    assert not _decode_threads() and str(damaged) not in _open_files()


def test_a_reader_left_after_one_batch_stops_its_decoder_and_closes_the_file():
    batches = iter(open_video(VID03, batch_size=8))
    first = next(batches)
    assert len(first) == 8 and _decode_threads()
    batches.close()
    assert not _decode_threads() and str(VID03.resolve()) not in _open_files()
