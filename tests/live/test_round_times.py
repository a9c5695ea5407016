"""The live scheduler's model of round times by size (``services/live/round_times.py``)."""
from __future__ import annotations

import pytest

from swapstream.services.live.round_times import RECENT, RoundTimes


def test_before_any_round_every_size_is_allowed():
    times = RoundTimes()
    assert times.predict(4) is None
    assert times.most_frames(0.15, 16) == 16


def test_an_unmeasured_size_is_predicted_in_proportion_from_the_nearest_measured_one():
    times = RoundTimes()
    times.add(1, 0.1)
    assert times.predict(1) == pytest.approx(0.1)
    assert times.predict(3) == pytest.approx(0.3)  # no batching gain assumed until one is measured
    assert times.most_frames(0.15, 16) == 2  # tried once: see below
    assert times.most_frames(0.15, 16) == 1
    assert times.most_frames(0.25, 16) == 3  # 2 fits: 3 is tried
    assert times.most_frames(0.25, 16) == 2


def test_a_measured_batching_gain_lets_rounds_grow():
    times = RoundTimes()
    times.add(1, 0.05)
    times.add(2, 0.06)  # the networks batch: a second frame costs little
    assert times.predict(2) == pytest.approx(0.06)
    assert times.predict(4) == pytest.approx(0.12)  # from 2, the nearest measured
    assert times.most_frames(0.15, 16) == 6  # tried once: see below
    assert times.most_frames(0.15, 16) == 5


def test_no_size_within_the_budget_gives_one_frame_rounds():
    times = RoundTimes()
    times.add(4, 2.0)
    assert times.most_frames(0.15, 16) == 1


def test_a_size_not_measured_lately_gives_way_to_recent_rounds():
    times = RoundTimes()
    times.add(4, 2.0)  # a slow start
    for _ in range(RECENT):
        times.add(1, 0.02)  # then fast one-frame rounds
    assert times.predict(4) == pytest.approx(0.08)
    assert times.most_frames(0.15, 4) == 4


def test_a_size_beyond_the_budget_is_tried_once_in_recent_rounds_and_grows_rounds_if_it_pays():
    """On a CPU a two-frame round costs less than two one-frame rounds when its faces are warped side by side: the
    linear prediction alone would never let it be measured."""
    times = RoundTimes()
    times.add(1, 0.10)
    assert times.most_frames(0.12, 4) == 2          # the size below fits: one round one frame bigger is tried
    for _ in range(RECENT - 1):
        assert times.most_frames(0.12, 4) == 1      # not again until RECENT rounds have passed
        times.add(1, 0.10)
    times.add(2, 0.11)                              # the trial's measure: the second frame cost a tenth
    assert times.most_frames(0.12, 4) == 3          # 2 now fits, so 3 is tried (predicted 0.165, over the budget)
    assert times.most_frames(0.12, 4) == 2          # and then rounds of 2
    assert times.most_frames(0.0, 4) == 1           # nothing fits: no trial either
