"""``swapstream swap`` as a new user meets it (issue 21, item 8): missing files refused before anything starts, a bad
option answered with the command's own usage, examples in --help, and a summary whose time covers the start-up."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.media import MEDIA

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
GROUP = MEDIA / "img07_group6_t1.jpg"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swapstream.services.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("role", ["--source", "second --source", "--target", "--reference"])
def test_a_missing_file_is_refused_before_anything_starts(tmp_path, role):
    missing = tmp_path / "missing.jpg"
    given = {"--source": [str(missing)], "second --source": [str(OBAMA), str(missing)]}.get(role, [str(OBAMA)])
    args = ["swap", "--source", *given, "--target", str(missing if role == "--target" else GROUP),
            "-o", str(tmp_path / "out.jpg")]
    if role == "--reference":
        args += ["--faces", "reference", "--reference", str(missing)]
    done = _cli(*args)  # no --triton: had anything started, the model server would have been announced
    assert done.returncode == 2, done.stderr
    assert f"no such file: {missing}" in done.stderr and "Traceback" not in done.stderr
    assert "model server" not in done.stderr and not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("argv, usage", [
    (["swap", "--source", str(OBAMA), "--target", str(GROUP), "-o", "/nonexistent/out.jpg", "--bogus"],
     "swapstream swap"),
    (["models", "fetch", "--bogus"], "swapstream models fetch"),
])
def test_a_bad_option_shows_the_commands_own_usage(argv, usage):
    done = _cli(*argv)
    assert done.returncode == 2
    assert done.stderr.startswith(f"usage: {usage} ") and "unrecognized arguments" in done.stderr, done.stderr


def test_swap_help_has_examples():
    done = _cli("swap", "--help")
    examples = done.stdout.split("examples:\n", 1)[-1]
    assert done.returncode == 0 and "examples:" in done.stdout
    assert examples.count("swapstream swap --source") >= 3 and "--faces reference --reference" in examples


def test_the_summary_counts_the_start_up(triton, tmp_path):
    done = _cli("swap", "--triton", triton.grpc_url, "--quiet", "--source", str(OBAMA), "--target", str(OBAMA),
                "-o", str(tmp_path / "out.jpg"))
    assert done.returncode == 0, done.stderr
    swap = float(re.search(r"without a face, ([\d.]+) s \(", done.stdout).group(1))
    total, startup = map(float, re.search(r"([\d.]+) s in all, ([\d.]+) s of it start-up", done.stdout).groups())
    assert total >= swap and startup > 0 and abs(total - swap - startup) <= 0.15, done.stdout
    assert "model server" not in done.stderr  # a running one was given: none is started or announced
