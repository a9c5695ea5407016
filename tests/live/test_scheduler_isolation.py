"""Issue 18, item 3, behind the edge: a frame whose processing fails fails alone. The real scheduler thread, the real
swapper on the session's Triton and two real streams; one frame carries a capture time of NaN (the edge refuses it
now, so it is put in the stream directly), which breaks the tracker's smoothing and, through it, the batch's shared
alignment and blend. Before, the whole batch failed: the neighbour's frame got the error too."""
from __future__ import annotations

import logging
import time

import cv2

from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.stream import Frame
from tests.helpers.live_scheduler import answers, running_scheduler
from tests.helpers.service import OBAMA


def test_a_frame_that_fails_fails_alone_and_is_logged_once(client, caplog):
    swappers = {stage: FaceSwapper(client, create_swapper("simswap", client), "cpu") for stage in ("detect", "swap")}
    rgb = cv2.cvtColor(cv2.imread(str(OBAMA)), cv2.COLOR_BGR2RGB)
    identity, _ = swappers["swap"].identity_of([("source photo", OBAMA.name, rgb)], [])
    with running_scheduler(lambda stage, _name: swappers[stage], LiveLimits(window_ms=200)) as run:
        good, bad = (run.stream(name, identity) for name in ("good0", "bad00"))
        with caplog.at_level(logging.ERROR, logger="swapstream.live"):
            for seq in range(2):
                ts = float("nan") if seq == 1 else 40.0 * seq
                bad.offer(Frame(seq, ts, OBAMA.read_bytes(), "JPEG", time.perf_counter()))
                good.offer(Frame(seq, 40.0 * seq, OBAMA.read_bytes(), "JPEG", time.perf_counter()))
                run.scheduler.wake()
                good_kind, good_answer = answers(good, 1)[0]
                bad_kind, bad_answer = answers(bad, 1)[0]
                assert good_kind == "answer", good_answer  # the neighbour's frame is swapped, never refused
                if seq == 1:
                    assert bad_kind == "text" and '"seq": 1' in bad_answer and "failed" in bad_answer, bad_answer
                else:
                    assert bad_kind == "answer"
        failures = [r for r in caplog.records if "frame 1 failed" in r.getMessage()]
        assert len(failures) == 1 and "bad00" in failures[0].getMessage(), caplog.text
        assert failures[0].exc_info is None  # one line, not a traceback per batch
