"""``swapstream bench live`` with one short stream against the session's Triton: the output files and that the
figures agree with each other (nothing here asserts a time)."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest

from swapstream.benchmarks import media
from swapstream.services.cli import main
from tests.helpers.media import MEDIA

FRAMES = 20


@pytest.fixture(scope="module")
def bench(triton, tmp_path_factory):
    out = tmp_path_factory.mktemp("live-bench")
    clip = media.cut(MEDIA / "vid03_square_480_expressions.mp4", out / "clip.mp4", FRAMES)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", "live", "--triton", triton.grpc_url, "--clip", str(clip), "--streams", "1",
                     "--out", str(out / "results")]) == 0
    return out / "results", json.loads((out / "results" / "live.json").read_text()), printed.getvalue()


def test_both_modes_are_measured_and_written(bench):
    out, results, printed = bench
    assert {(r["mode"], r["streams"]) for r in results["runs"]} == {("batched", 1), ("frame_by_frame", 1)}
    with (out / "live.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    with (out / "live-ratios.csv").open() as f:
        assert [row["streams"] for row in csv.DictReader(f)] == ["1"]
    assert "batched" in printed and "frame_by_frame" in printed and "ratio" in printed
    assert results["config"]["swapper"] == "mesh" and "swapper mesh" in printed  # the service's default here


def test_frames_add_up_and_batches_are_counted(bench):
    _, results, _ = bench
    for run in results["runs"]:
        assert run["frames_sent"] == FRAMES
        assert run["frames_sent"] == run["frames_received"] + run["frames_dropped"] + run["frames_refused"]
        assert run["frames_received"] > 0 and run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
        # Every answered frame went through one scheduler batch; one stream never makes a batch of two.
        assert run["batches"] >= run["frames_received"] and run["mean_batch"] == 1.0 and run["max_batch"] == 1


def test_ratio_is_the_measured_totals_divided(bench):
    _, results, _ = bench
    by_mode = {r["mode"]: r for r in results["runs"]}
    ratio, = results["ratios"]
    assert ratio["batched_over_frame_by_frame"] == pytest.approx(
        by_mode["batched"]["fps_total"] / by_mode["frame_by_frame"]["fps_total"])
    assert ratio["batched_p95_ms"] == by_mode["batched"]["p95_ms"]
