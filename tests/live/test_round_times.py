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
    assert times.most_frames(0.15, 16) == 1
    assert times.most_frames(0.25, 16) == 2


def test_a_measured_batching_gain_lets_rounds_grow():
    times = RoundTimes()
    times.add(1, 0.05)
    times.add(2, 0.06)  # the networks batch: a second frame costs little
    assert times.predict(2) == pytest.approx(0.06)
    assert times.predict(4) == pytest.approx(0.12)  # from 2, the nearest measured
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
