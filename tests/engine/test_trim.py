"""Trim and output (issue 21 item 5): ``start``/``end`` swap and write only that part with its own sound,
``max_height`` caps the written size, ``fps`` leaves frames out evenly; bad choices refused before anything starts."""
from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest

from swapstream.pipelines.decode import probe_video
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.trim import plan_frames
from tests.helpers.media import MEDIA, frames_of

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
VID04 = MEDIA / "vid04_multi_small_faces_cuts_audio.mp4"  # 640x360, 29.97 fps, 9.18 s of video from 0.85 s (after its audio)
VID03 = MEDIA / "vid03_square_480_expressions.mp4"       # 480x480, 30 fps, 7.2 s


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swapstream.services.cli", *args], capture_output=True, text=True,
                          timeout=300)


def streams(path) -> dict:
    """The written file as a player sees it: video frames, rate, size and duration; audio duration."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        audio_seconds = float(audio.duration * audio.time_base)
        frames = sum(1 for packet in container.demux(video) if packet.size)
        return {"frames": frames, "fps": float(video.average_rate), "size": (video.width, video.height),
                "video_seconds": float(video.duration * video.time_base), "audio_seconds": audio_seconds}


def test_plan_keeps_the_part_asked_for_and_leaves_frames_out_evenly():
    info = probe_video(VID03)
    whole = plan_frames(info)
    assert whole.indices is None and whole.audio is None and whole.frames is None
    part = plan_frames(info, 2.0, 4.0)
    assert list(part.indices) == list(range(60, 120)) and part.fps == 30 and part.duration == pytest.approx(2.0)
    assert part.audio == pytest.approx((2.0, 4.0))
    slower = plan_frames(info, 2.0, 4.0, fps=10)
    assert list(slower.indices) == list(range(60, 120, 3)) and slower.fps == 10
    assert plan_frames(info, end=1.0, fps=12).frames == 12  # 30 -> 12 fps: 2 or 3 source frames per output frame
    faster = plan_frames(info, fps=60)
    assert faster.indices is None and faster.fps == 30 and "written at the target's rate" in faster.notes[0]


@pytest.mark.parametrize("start, end, message", [
    (7.2, None, "start 7.2 s is not inside the video, which lasts 7.2 s"),
    (None, 8.0, "end 8 s is past the end of the video"),
    (3.0, 2.0, "start 3 s must come before end 2 s"),
    (3.0, 3.0, "start 3 s must come before end 3 s"),
    (2.001, 2.02, "no frame starts between"),
])
def test_a_window_outside_the_video_is_refused_with_what_to_do(start, end, message):
    with pytest.raises(SwapInputError, match=message) as refused:
        plan_frames(probe_video(VID03), start, end)
    assert refused.value.code == "bad_option"


@pytest.mark.parametrize("args, message", [
    (["--target", str(VID04), "--start", "11"], "start 11 s is not inside the video, which lasts 9.18 s"),
    (["--target", str(VID04), "--start", "5", "--end", "3"], "start 5 s must come before end 3 s"),
    (["--target", str(OBAMA), "--fps", "10"], "fps only apply to a video, and the target is a photo"),
])
def test_the_cli_refuses_a_bad_part_before_the_model_server_starts(tmp_path, args, message):
    done = _cli("swap", "--source", str(OBAMA), "-o", str(tmp_path / "out.mp4"), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "model server" not in done.stderr and "Traceback" not in done.stderr


def test_the_cli_writes_only_the_part_with_its_sound_at_the_cap_and_rate(triton, tmp_path):
    out = tmp_path / "part.mp4"
    done = _cli("swap", "--triton", triton.grpc_url, "--quiet", "--source", str(OBAMA), "--target", str(VID04),
                "-o", str(out), "--start", "2", "--end", "4", "--fps", "10", "--max-height", "240",
                "--preset", "ultrafast")
    assert done.returncode == 0, done.stderr
    written = streams(out)
    assert written["frames"] == 20 and written["fps"] == pytest.approx(10) and written["size"] == (426, 240)
    assert written["video_seconds"] == pytest.approx(2.0, abs=0.01)
    assert written["audio_seconds"] == pytest.approx(2.0, abs=0.05)  # the part's sound, not the whole clip's
    assert "20 frames" in done.stdout and "scaled from 640x360 to 426x240" in done.stdout
    # each written frame is the source's frame at its time (vid04 cuts between scenes: a wrong frame shows)
    source = frames_of(VID04)
    plan = plan_frames(probe_video(VID04), 2.0, 4.0, 10)
    shrunk = [np.asarray(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(426, 240).to_ndarray(format="rgb24"),
                         int) for f in source]
    output = frames_of(out).astype(int)
    for k, index in enumerate(plan.indices):
        right = np.abs(output[k] - shrunk[index]).mean()
        wrong = min(np.abs(output[k] - shrunk[j]).mean() for j in (index - 15, index + 15))
        assert right < 6 and right < wrong, (k, index, right, wrong)


def test_the_reader_gives_exactly_the_kept_frames_from_the_middle_of_the_video():
    from swapstream.pipelines.decode import open_video

    whole = np.concatenate([batch.frames for batch in open_video(VID04, "cpu", 16, decoder="pyav")])
    plan = plan_frames(probe_video(VID04), 3.0, 5.5, fps=12)  # starts between key frames, every 2nd-3rd frame
    batches = list(open_video(VID04, "cpu", 16, keep=plan.indices))
    assert [b.start for b in batches] == [0, 16] and sum(len(b) for b in batches) == len(plan.indices) == 30
    assert np.array_equal(np.concatenate([b.frames for b in batches]), whole[plan.indices])
