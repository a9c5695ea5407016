"""Issue 18, item 3, behind the edge: a frame whose processing fails fails alone. The real scheduler thread, the real
swapper on the session's Triton and two real streams; one frame carries a capture time of NaN (the edge refuses it
now, so it is put in the stream directly), which breaks the tracker's smoothing and, through it, the batch's shared
alignment and blend. Before, the whole batch failed: the neighbour's frame got the error too."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.scheduler import Scheduler
from swapstream.services.live.stream import Frame, LiveStream, StreamOptions
from tests.helpers.service import OBAMA


def _answers(stream: LiveStream, count: int, timeout: float = 120) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        try:
            messages.append(stream.outbox.get_nowait())
        except asyncio.QueueEmpty:
            time.sleep(0.05)
    return messages


def test_a_frame_that_fails_fails_alone_and_is_logged_once(client, caplog):
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    metrics = LiveMetrics(CollectorRegistry())
    swapper = FaceSwapper(client, create_swapper("simswap", client), "cpu")
    rgb = cv2.cvtColor(cv2.imread(str(OBAMA)), cv2.COLOR_BGR2RGB)
    identity, _ = swapper.identity_of([("source photo", OBAMA.name, rgb)], [])
    scheduler = Scheduler(lambda _name: swapper, LiveLimits(window_ms=200), metrics)
    good, bad = (LiveStream(name, identity, StreamOptions(), 2, metrics, loop) for name in ("good0", "bad00"))
    try:
        scheduler.start()
        for stream in (good, bad):
            scheduler.add(stream)
        with caplog.at_level(logging.ERROR, logger="swapstream.live"):
            for seq in range(2):
                ts = float("nan") if seq == 1 else 40.0 * seq
                bad.offer(Frame(seq, ts, rgb, "JPEG", time.perf_counter()))
                good.offer(Frame(seq, 40.0 * seq, rgb, "JPEG", time.perf_counter()))
                scheduler.wake()
                good_kind, good_answer = _answers(good, 1)[0]
                bad_kind, bad_answer = _answers(bad, 1)[0]
                assert good_kind == "answer", good_answer  # the neighbour's frame is swapped, never refused
                if seq == 1:
                    assert bad_kind == "text" and '"seq": 1' in bad_answer and "failed" in bad_answer, bad_answer
                else:
                    assert bad_kind == "answer"
        failures = [r for r in caplog.records if "frame 1 failed" in r.getMessage()]
        assert len(failures) == 1 and "bad00" in failures[0].getMessage(), caplog.text
        assert failures[0].exc_info is None  # one line, not a traceback per batch
    finally:
        scheduler.stop()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
