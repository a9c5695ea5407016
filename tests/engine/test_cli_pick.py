"""``swapstream swap --pick X,Y [--pick X,Y] [--pick-time S] [--pick-sources N,...]``: only the faces under the points
are swapped; pick options that do not fit are refused before the model server starts."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.helpers.media import MEDIA, read_rgb

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
GROUP = MEDIA / "img07_group6_t1.jpg"


def _swap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swapstream.services.cli", "swap", "--quiet", *args],
                          capture_output=True, text=True, timeout=300)


def test_two_picks_each_with_its_source_and_nothing_else_changes(triton, client, tmp_path):
    group = read_rgb(GROUP.name)
    boxes = client.detect(group[None]).boxes
    picked = [int(np.argmin(boxes[:, 0])), int(np.argmax(boxes[:, 0]))]
    points = [f"{(boxes[i, 0] + boxes[i, 2]) / 2:.0f},{(boxes[i, 1] + boxes[i, 3]) / 2:.0f}" for i in picked]
    out = tmp_path / "out.png"
    done = _swap("--triton", triton.grpc_url, "--swapper", "simswap", "--source", str(OBAMA), str(ROSE),
                 "--target", str(GROUP), "-o", str(out), "--pick", points[0], "--pick", points[1],
                 "--pick-sources", "1,0")
    assert done.returncode == 0, done.stderr
    assert "2 faces swapped" in done.stdout
    result = read_rgb(str(out)).astype(int)
    for index, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        w, h = x2 - x1, y2 - y1
        middle = (slice(y1 + h // 4, y2 - h // 4), slice(x1 + w // 4, x2 - w // 4))
        assert (np.abs(result[middle] - group[middle]).mean() > 8) == (index in picked), index


def test_pick_options_that_do_not_fit_are_refused_before_the_model_server_starts(tmp_path):
    out = tmp_path / "out.png"
    done = _swap("--source", str(OBAMA), "--target", str(GROUP), "-o", str(out), "--pick", "10,10",
                 "--pick-sources", "1")  # no --triton: had anything started, the model server would be announced
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pick_sources: photo 1 does not exist; there are 1 source photos" in done.stderr, done.stderr
    assert "model server" not in done.stderr and not out.exists()
    done = _swap("--source", str(OBAMA), "--target", str(GROUP), "-o", str(out), "--pick", "ten,10")
    assert done.returncode == 2 and done.stderr.startswith("usage: swapstream swap ")
    assert "argument --pick: expected X,Y" in done.stderr, done.stderr
