"""swapstream.services.engine.encoder: real ffmpeg encodes of frames decoded from the shared clips, audio copied from them."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace

from swapstream.services.engine import encoder
from swapstream.services.engine.encoder import EncodeError, OutputPathError, VideoWriter, probe, write_image
from swapstream.services.triton.repository import shared_dir

MEDIA = shared_dir() / "media"
VID03 = MEDIA / "vid03_square_480_expressions.mp4"
VID04 = MEDIA / "vid04_multi_small_faces_cuts_audio.mp4"


def decode_rgb(path: Path, count: int) -> np.ndarray:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def vid04_frames() -> np.ndarray:
    return decode_rgb(VID04, 60)


@pytest.fixture(scope="module")
def vid04_encoded(tmp_path_factory, vid04_frames):
    source = probe(VID04)
    out = tmp_path_factory.mktemp("vid04") / "swapped.mp4"
    with VideoWriter(out, 640, 360, source["fps"], audio_from=VID04, video_start=source["video_start"]) as writer:
        for start in range(0, 60, 16):  # several write() calls, as the pipeline does per batch
            writer.write(vid04_frames[start:start + 16])
    return source, out, writer


def test_video_keeps_count_rate_size_and_copies_audio(vid04_encoded):
    source, out, writer = vid04_encoded
    info = probe(out)
    assert (info["frames"], info["width"], info["height"]) == (60, 640, 360)
    assert info["fps"] == Fraction(2997, 100) == source["fps"]
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["has_audio"] and info["audio_codec"] == "aac"
    assert writer.audio == "copy" and writer.notes == []
    with av.open(str(out)) as container:  # BT.709 limited range, and tagged so
        frame = next(container.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (Colorspace.ITU709, ColorRange.MPEG)
    # Copied, not re-encoded: every audio packet is byte-identical to the source's.
    assert audio_packets(out) == audio_packets(VID04)


def test_video_start_offset_after_audio_is_kept(vid04_encoded):
    source, out, _ = vid04_encoded
    info = probe(out)
    source_offset = source["video_start"] - source["audio_start"]
    assert source_offset > 0.8
    offset = info["video_start"] - info["audio_start"]
    assert abs(offset - source_offset) < 1 / float(source["fps"])  # the brief's bound
    assert abs(offset - source_offset) < 0.001  # what the fine time base actually achieves


def test_frames_round_trip_within_codec_noise(vid04_encoded, vid04_frames):
    _, out, _ = vid04_encoded
    decoded = decode_rgb(out, 1000)
    assert decoded.shape == vid04_frames.shape
    errors = np.abs(decoded.astype(np.int16) - vid04_frames).mean(axis=(1, 2, 3))
    assert errors.max() < 3.0, errors
    # Frames stay in order: each output frame is much closer to its own input than to the one 10 later.
    shifted = np.abs(decoded[:-10].astype(np.int16) - vid04_frames[10:]).mean(axis=(1, 2, 3))
    assert np.median(shifted) > 2 * np.median(errors[:-10])


def test_silent_audio_track_still_copied(tmp_path):
    frames = decode_rgb(VID03, 12)
    out = tmp_path / "square.mkv"
    with VideoWriter(out, 480, 480, probe(VID03)["fps"], audio_from=VID03) as writer:
        writer.write(frames)
    info = probe(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (12, 480, 480, Fraction(30))
    assert info["audio_codec"] == "aac" and writer.audio == "copy"
    assert audio_packets(out) == audio_packets(VID03)


def test_no_audio_anywhere(tmp_path, vid04_frames):
    silent_source = tmp_path / "video_only.mp4"
    with VideoWriter(silent_source, 640, 360, Fraction(2997, 100)) as writer:
        writer.write(vid04_frames[:5])
    assert writer.audio is None and not probe(silent_source)["has_audio"]

    out = tmp_path / "out.mp4"
    with VideoWriter(out, 640, 360, Fraction(2997, 100), audio_from=silent_source, video_start=0.5) as writer:
        writer.write(vid04_frames[:5])
    info = probe(out)
    assert writer.audio is None and not info["has_audio"]
    assert info["frames"] == 5 and info["video_start"] == 0.0  # nothing to keep in sync with


def test_audio_the_container_cannot_hold_is_encoded_to_aac(tmp_path, vid04_frames, caplog):
    mulaw = tmp_path / "mulaw.wav"  # mp4 has no place for G.711 mu-law
    subprocess.run([encoder.default_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "pcm_mulaw",
                    str(mulaw)], check=True)
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="swapstream.services.engine.encoder"):
        with VideoWriter(out, 640, 360, 30, audio_from=mulaw) as writer:
            writer.write(vid04_frames[:3])
    assert writer.audio == "aac"
    assert any("pcm_mulaw" in note and "aac" in note for note in writer.notes)
    assert "re-encoded" in caplog.text
    assert probe(out)["audio_codec"] == "aac"


def test_odd_size_is_padded_by_repeating_the_edge(tmp_path, vid04_frames):
    frames = vid04_frames[:4, :359, :639]
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 639, 359, Fraction(2997, 100)) as writer:
        writer.write(frames)
    assert writer.output_size == (640, 360) and "padded to 640x360" in writer.notes[0]
    decoded = decode_rgb(out, 10)
    assert decoded.shape == (4, 360, 640, 3)
    assert np.abs(decoded[:, :359, :639].astype(np.int16) - frames).mean() < 3.0
    # The added column/row repeat the edge (a black pad would be ~100 levels away here).
    assert np.abs(decoded[:, :359, 639].astype(np.int16) - frames[:, :, 638]).mean() < 6.0
    assert np.abs(decoded[:, 359, :639].astype(np.int16) - frames[:, 358]).mean() < 6.0


def test_abort_and_exception_leave_nothing(tmp_path, vid04_frames):
    writer = VideoWriter(tmp_path / "aborted.mp4", 640, 360, 30, audio_from=VID04)
    writer.write(vid04_frames[:10])
    assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].endswith(".partial.mp4")
    writer.abort()
    writer.abort()  # twice is harmless
    assert leftovers(tmp_path) == []
    with pytest.raises(EncodeError, match="aborted"):
        writer.write(vid04_frames[:1])

    previous = tmp_path / "kept.mp4"
    previous.write_bytes(b"an earlier, complete result")
    with pytest.raises(RuntimeError, match="pipeline failed"):
        with VideoWriter(previous, 640, 360, 30) as writer:
            writer.write(vid04_frames[:10])
            raise RuntimeError("pipeline failed")
    assert leftovers(tmp_path) == ["kept.mp4"]
    assert previous.read_bytes() == b"an earlier, complete result"


def test_no_frames_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(EncodeError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", 64, 64, 30):
            pass
    assert leftovers(tmp_path) == []


def test_killed_ffmpeg_raises_with_reason_and_leaves_nothing(tmp_path, vid04_frames):
    writer = VideoWriter(tmp_path / "killed.mp4", 640, 360, 30, audio_from=VID04)
    writer.write(vid04_frames[:5])
    os.kill(writer.pid, signal.SIGKILL)
    with pytest.raises(EncodeError) as failure:
        for _ in range(500):  # until the pipe reports the dead reader
            writer.write(vid04_frames[:1])
            time.sleep(0.01)
    message = str(failure.value)
    assert "SIGKILL" in message and "no file was written" in message and "killed.mp4" in message
    assert leftovers(tmp_path) == []
    with pytest.raises(EncodeError):
        writer.close()


@pytest.fixture
def no_ffmpeg(monkeypatch):
    """Fail the test if anything starts a process: path errors must come before any encoding."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")
    monkeypatch.setattr(encoder.subprocess, "Popen", refuse)
    monkeypatch.setattr(encoder.subprocess, "run", refuse)


def test_missing_output_folder_is_refused_up_front(tmp_path, no_ffmpeg):
    missing = tmp_path / "not" / "there"
    with pytest.raises(OutputPathError, match="does not exist.*mkdir -p"):
        VideoWriter(missing / "out.mp4", 640, 360, 30, audio_from=VID04)
    assert not missing.parent.exists()


def test_output_that_is_a_directory_is_refused_up_front(tmp_path, no_ffmpeg):
    (tmp_path / "result.mp4").mkdir()
    with pytest.raises(OutputPathError, match="existing directory"):
        VideoWriter(tmp_path / "result.mp4", 640, 360, 30)
    with pytest.raises(OutputPathError, match="no extension"):
        VideoWriter(tmp_path / "result", 640, 360, 30)


def test_unwritable_output_folder_is_refused_up_front(tmp_path, no_ffmpeg):
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        # chmod does not stop root; sysfs refuses new files even to root.
        folder = Path("/sys")
        try:
            os.close(os.open(folder / "probe.mp4", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            pytest.skip("/sys is writable here; no unwritable folder available to root")
        except OSError:
            pass
    with pytest.raises(OutputPathError, match="cannot write into output folder"):
        VideoWriter(folder / "out.mp4", 640, 360, 30)
    assert not (folder / "out.mp4").exists()


def test_bad_settings_are_refused_up_front(tmp_path, vid04_frames):
    with pytest.raises(EncodeError, match="unknown video codec 'h264x'.*libx264"):
        VideoWriter(tmp_path / "a.mp4", 640, 360, 30, codec="h264x")
    with pytest.raises(EncodeError, match=r"codec libx264.*\.webm(.|\n)*Only VP8 or VP9"):
        VideoWriter(tmp_path / "a.webm", 640, 360, 30)
    with pytest.raises(EncodeError, match="invalid preset 'fastest'"):
        VideoWriter(tmp_path / "a.mp4", 640, 360, 30, preset="fastest")
    with pytest.raises(EncodeError, match="positive"):
        VideoWriter(tmp_path / "a.mp4", 0, 360, 30)
    assert leftovers(tmp_path) == []
    with VideoWriter(tmp_path / "a.mp4", 640, 360, 30) as writer:
        with pytest.raises(EncodeError, match=r"\(n, 360, 640, 3\)"):
            writer.write(vid04_frames[:2, :100])
        with pytest.raises(EncodeError, match="uint8"):
            writer.write(vid04_frames[:2].astype(np.float32))
        writer.write(vid04_frames[0])  # one (H, W, 3) frame
    assert probe(tmp_path / "a.mp4")["frames"] == 1


def test_write_image_png_round_trips_exactly(tmp_path):
    image = cv2.cvtColor(cv2.imread(str(MEDIA / "img09_group3_glasses_voc.jpg")), cv2.COLOR_BGR2RGB)
    out = write_image(tmp_path / "face.png", image)
    assert out == tmp_path / "face.png" and leftovers(tmp_path) == ["face.png"]
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), image)

    jpeg = write_image(tmp_path / "face.jpg", image, quality=95)
    back = cv2.cvtColor(cv2.imread(str(jpeg)), cv2.COLOR_BGR2RGB)
    assert np.abs(back.astype(np.int16) - image).mean() < 3.0  # RGB order kept, lossy but close


def test_write_image_refuses_unknown_extension_and_bad_arrays(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(EncodeError, match=r"unsupported extension '\.xyz'.*\.png"):
        write_image(tmp_path / "face.xyz", image)
    with pytest.raises(EncodeError, match="uint8"):
        write_image(tmp_path / "face.png", image.astype(np.float32))
    with pytest.raises(OutputPathError, match="does not exist"):
        write_image(tmp_path / "missing" / "face.png", image)
    assert leftovers(tmp_path) == []
