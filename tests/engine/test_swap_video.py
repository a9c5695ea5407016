"""``swapstream swap`` end to end on real media with the stand-ins, against the session's Triton."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from nvidia.dali.backend import GetCUDADeviceCount

from swapstream.benchmarks.media import cut
from swapstream.services.engine.clock import STAGES
from swapstream.services.engine.encoder import probe
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.mesh_tracking import DETECT_EVERY
from swapstream.services.engine.offline import SwapOptions, run_swap
from swapstream.services.triton import standins
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.media import MEDIA, frames_of, read_rgb

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
GROUP = MEDIA / "img07_group6_t1.jpg"
BATCHES_OF_8 = SwapOptions(batch_size=8)



@pytest.fixture(scope="module")
def swapper(client):
    return simswap_face_swapper(client)


@pytest.fixture(scope="module")
def talking_head(tmp_path_factory, swapper):
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "in.mp4", 40)
    out = clip.with_name("out.mp4")
    observed = []
    summary = run_swap(swapper, [OBAMA], clip, out, BATCHES_OF_8, stage_observer=lambda stage, seconds: observed.append(stage))
    summary.observed_stages = observed
    return clip, out, summary


def test_video_keeps_count_fps_size_and_audio(talking_head):
    clip, out, summary = talking_head
    src, dst = probe(clip), probe(out)
    assert dst["frames"] == src["frames"] == summary.frames == 40
    assert dst["fps"] == src["fps"] and (dst["width"], dst["height"]) == (src["width"], src["height"])
    assert dst["has_audio"] and dst["audio_codec"] == "aac"
    assert summary.faces_swapped == 40 and summary.frames_without_face == 0


def test_every_stage_is_timed_and_observed(talking_head):
    _, _, summary = talking_head
    assert set(summary.stage_seconds) == set(STAGES)
    assert all(seconds > 0 for seconds in summary.stage_seconds.values()), summary.stage_seconds
    # 40 frames in batches of 8: five batches pass swap and encode; detect sees the source photo and, faces being
    # followed by their mesh in between, every DETECT_EVERY-th frame.
    assert {stage: summary.observed_stages.count(stage) for stage in ("detect", "swap", "encode")} == \
        {"detect": 1 + 40 // DETECT_EVERY, "swap": 5, "encode": 5}


def test_video_changes_the_face_by_the_standin_shift_and_nothing_else(talking_head, swapper):
    clip, out, _ = talking_head
    before, after = frames_of(clip).astype(np.float32), frames_of(out).astype(np.float32)
    shift = standins.swap_shift(source_embedding(swapper, [OBAMA])) * 255
    for index in (0, 20, 39):
        found = swapper.detect(before[index:index + 1].astype(np.uint8))
        (x1, y1, x2, y2), = found.boxes.astype(int)
        cheeks = (slice(y1 + (y2 - y1) // 4, y1 + (y2 - y1) // 2), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
        expected = np.clip(before[index][cheeks] + shift, 0, 255) - before[index][cheeks]
        observed = after[index][cheeks] - before[index][cheeks]
        np.testing.assert_allclose(observed.mean(axis=(0, 1)), expected.mean(axis=(0, 1)), atol=6)
        far = np.ones(before.shape[1:3], bool)
        far[max(0, y1 - 60):y2 + 60, max(0, x1 - 60):x2 + 60] = False
        assert np.abs(after[index][far] - before[index][far]).mean() < 2.0  # codec noise only


def test_photo_target_and_face_selection(swapper, tmp_path, client):
    group = read_rgb(GROUP.name)
    boxes = client.detect(group[None]).boxes
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)

    def changed_faces(options: SwapOptions) -> list[bool]:
        out = tmp_path / f"{options.faces}.png"
        run_swap(swapper, [OBAMA], GROUP, out, options)
        result = read_rgb(str(out))
        centre = [(int((b[1] + b[3]) / 2), int((b[0] + b[2]) / 2)) for b in boxes]
        return [np.abs(result[y - 5:y + 5, x - 5:x + 5].astype(int) - group[y - 5:y + 5, x - 5:x + 5]).mean() > 8
                for y, x in centre]

    assert all(changed_faces(SwapOptions(faces="all")))
    assert changed_faces(SwapOptions(faces="largest")) == list(np.arange(len(boxes)) == np.argmax(areas))

    reference = tmp_path / "reference.png"
    x1, y1, x2, y2 = boxes[1].astype(int)
    pad = (x2 - x1) // 2
    crop = group[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad]
    cv2.imwrite(str(reference), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    picked = changed_faces(SwapOptions(faces="reference", reference=reference, reference_distance=0.1))  # other faces are >= 0.2 away
    assert picked[1] and sum(picked) < len(boxes)


def test_video_without_faces_passes_through(swapper, tmp_path):
    clip = tmp_path / "noface.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=25:duration=1", "-pix_fmt", "yuv420p", "-y", str(clip)], check=True)
    summary = run_swap(swapper, [OBAMA], clip, tmp_path / "out.mp4", BATCHES_OF_8)
    assert summary.frames == 25 and summary.faces_swapped == 0 and summary.frames_without_face == 25
    assert "no face was swapped" in str(summary)


def test_source_photo_without_face_is_a_clear_error(swapper, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(SwapInputError, match="no face found"):
        run_swap(swapper, [blank], GROUP, tmp_path / "out.png", BATCHES_OF_8)
    assert not (tmp_path / "out.png").exists()


def run_cli(triton, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swapstream.services.cli", "swap", "--triton", triton.grpc_url, "--quiet",
                           "--source", str(OBAMA), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("make_target, words", [
    (lambda d: d / "missing.mp4", "no such file"),
    (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "not a video"),
    (lambda d: (d / "cut.mp4").write_bytes((MEDIA / "vid03_square_480_expressions.mp4").read_bytes()[:60000])
     and d / "cut.mp4", "truncated"),
])
def test_cli_bad_target_is_a_clear_error(triton, tmp_path, make_target, words):
    target = make_target(tmp_path)
    result = run_cli(triton, "--target", str(target), "-o", str(tmp_path / "out.mp4"))
    assert result.returncode != 0
    assert words in result.stderr.lower(), result.stderr
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_cli_missing_output_folder(triton, tmp_path):
    result = run_cli(triton, "--target", str(GROUP), "-o", str(tmp_path / "nowhere" / "out.png"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_cli_swaps_a_photo_and_prints_a_summary(triton, tmp_path):
    result = run_cli(triton, "--target", str(GROUP), "-o", str(tmp_path / "out.jpg"))
    assert result.returncode == 0, result.stderr
    assert "6 faces swapped" in result.stdout and (tmp_path / "out.jpg").is_file()


def test_enormous_target_is_a_clear_error(swapper, tmp_path):
    huge = tmp_path / "huge.png"
    cv2.imwrite(str(huge), np.zeros((4400, 7800, 3), np.uint8))
    with pytest.raises(SwapInputError, match="larger than 8K"):
        run_swap(swapper, [OBAMA], huge, tmp_path / "out.png", BATCHES_OF_8)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.skipif(GetCUDADeviceCount() > 0, reason="a GPU is present: --device gpu is valid here")
def test_gpu_without_a_gpu_is_a_clear_error(triton, tmp_path):
    result = run_cli(triton, "--device", "gpu", "--target", str(OBAMA), "-o", str(tmp_path / "out.jpg"))
    assert result.returncode == 2 and "DALI sees no CUDA GPU" in result.stderr and "--device cpu" in result.stderr
    assert not (tmp_path / "out.jpg").exists()
