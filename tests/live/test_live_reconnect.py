"""A replica leaving mid-stream: ``swapstream live`` (a real process) streams through two ``swapstream serve``
replicas that share a data folder and store; the one holding the stream is sent SIGTERM (a drain), closes the
stream with 1012 and a reason that says to reconnect, and the client comes back through the other with a new
ticket, its frames going on: the output keeps the input's frame count and every frame is accounted for."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from swapstream.benchmarks.media import cut
from swapstream.services.engine.encoder import probe
from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA, metric_values

TOKEN = "reconnect-test-token"
FRAMES = 150  # 5 s at 30 frames/s


def test_a_stream_closed_by_a_draining_replica_reconnects_through_the_other(tmp_path, triton):
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "clip.mp4", FRAMES)
    data = tmp_path / "data"
    args = ("--triton", triton.grpc_url, "--token", TOKEN, "--workers", "0", "--drain-timeout", "1")
    with ServiceProcess(data, *args) as leaving, ServiceProcess(data, *args) as staying:
        out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
        urls = ",".join(s.url.replace("http://", "ws://") for s in (leaving, staying))
        client = subprocess.Popen([sys.executable, "-m", "swapstream.services.cli", "live", "--url", urls, "--source",
                                   str(OBAMA), "--input", str(clip), "--output", str(out), "--stats", str(stats_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, SWAPSTREAM_TOKEN=TOKEN))
        with leaving.client(TOKEN) as http:
            deadline = time.monotonic() + 120
            while metric_values(http)["swapstream_live_frames_answered_total"] < 3:
                assert client.poll() is None and time.monotonic() < deadline, client.communicate()
                time.sleep(0.1)
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(60) == 0
        stdout, stderr = client.communicate(timeout=180)
        assert client.returncode == 0, stderr
        with staying.client(TOKEN) as http:
            assert metric_values(http)["swapstream_live_frames_answered_total"] > 0
    stats = json.loads(stats_path.read_text())
    [again] = stats["reconnects"]
    assert "code 1012" in again["why"] and "reconnect" in again["why"]
    assert stats["frames_sent"] == FRAMES and stats["frames_unaccounted"] == 0
    assert stats["frames_sent"] == (stats["frames_received"] + stats["frames_dropped"] + stats["frames_refused"]
                                    + stats["frames_lost_reconnecting"])
    assert "reconnected after code 1012" in stdout
    assert probe(out)["frames"] == FRAMES
