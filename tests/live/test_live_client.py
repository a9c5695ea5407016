"""``swapstream live`` as a real process against a real ``swapstream serve`` (with a token) and the session's Triton:
a real clip streamed at its own pace over a real WebSocket, the answers written as a video."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.engine.encoder import probe
from swapstream.services.triton import standins
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.media import MEDIA, frames_of

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
TOKEN = "live-client-test-token"
FRAMES = 30


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    with ServiceProcess(tmp_path_factory.mktemp("live-client") / "data", "--triton", triton.grpc_url,
                        "--token", TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("live-clip") / "clip.mp4", FRAMES)


def live(service, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SWAPSTREAM_TOKEN"}
    if token:
        env["SWAPSTREAM_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "swapstream.services.cli", "live", "--url",
                           service.url.replace("http://", "ws://"), *args],
                          capture_output=True, text=True, env=env, timeout=180)


def test_live_output_keeps_the_frame_count_and_the_face_carries_the_shift(service, clip, tmp_path, client):
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    done = live(service, "--source", str(OBAMA), "--input", str(clip), "--output", str(out), "--stats",
                str(stats_path), "--swapper", "simswap")  # the stand-ins' known colour shift
    assert done.returncode == 0, done.stderr
    assert "swapper simswap" in done.stdout
    stats = json.loads(stats_path.read_text())
    assert stats["frames_sent"] == FRAMES
    assert stats["frames_sent"] == stats["frames_received"] + stats["frames_dropped"] + stats["frames_refused"]
    assert stats["frames_unaccounted"] == 0 and stats["frames_received"] > 0
    assert len([v for v in stats["latency_ms"].values() if v and v > 0]) == 4
    assert "round-trip latency ms: p50" in done.stdout and f"frames sent {FRAMES}" in done.stdout

    source, result = probe(clip), probe(out)
    assert result["frames"] == source["frames"] == FRAMES and result["fps"] == source["fps"]
    assert (result["width"], result["height"]) == (source["width"], source["height"])

    # The newest frame is never dropped: the last output frame is the answer to the last input frame.
    before, after = frames_of(clip)[-1].astype(np.float32), frames_of(out)[-1].astype(np.float32)
    shift = standins.swap_shift(source_embedding(simswap_face_swapper(client), [OBAMA])) * 255
    assert np.abs(shift).max() > 10
    (x1, y1, x2, y2), = client.detect(before[None].astype(np.uint8)).boxes.astype(int)
    cheeks = (slice(y1 + (y2 - y1) // 4, y1 + (y2 - y1) // 2), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
    expected = (np.clip(before[cheeks] + shift, 0, 255) - before[cheeks]).mean(axis=(0, 1))
    np.testing.assert_allclose((after[cheeks] - before[cheeks]).mean(axis=(0, 1)), expected, atol=8)
    far = np.ones(before.shape[:2], bool)
    far[max(0, y1 - 60):y2 + 60, max(0, x1 - 60):x2 + 60] = False
    assert np.abs(after[far] - before[far]).mean() < 4.0  # two JPEG passes and the encoder: noise only


def test_unreachable_service_is_a_clear_error(clip, tmp_path):
    done = subprocess.run([sys.executable, "-m", "swapstream.services.cli", "live", "--url", "ws://127.0.0.1:9",
                           "--source", str(OBAMA), "--input", str(clip), "--output", str(tmp_path / "out.mp4")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot reach the service at http://127.0.0.1:9" in done.stderr and "--url" in done.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_wrong_token_is_a_clear_error(service, clip):
    done = live(service, "--source", str(OBAMA), "--input", str(clip), token="not-the-token")
    assert done.returncode == 2
    assert "refused the token" in done.stderr and "--token" in done.stderr


def test_source_without_a_face_shows_the_service_reason(service, clip, tmp_path):
    blank = tmp_path / "blank.jpg"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    done = live(service, "--source", str(blank), "--input", str(clip), "--output", str(tmp_path / "out.mp4"))
    assert done.returncode == 2
    assert "error: uploading the source: HTTP 422" in done.stderr and "face" in done.stderr
    assert not (tmp_path / "out.mp4").exists()
