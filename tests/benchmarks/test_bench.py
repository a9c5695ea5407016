"""``swapstream bench`` on a short real clip against the session's Triton, with tiny sweeps.

Nothing here asserts a time: the checks are that every file and field is written, that the figures agree
with each other (ratios from the measured frames and seconds), and that the baseline did the pipeline's work
(same faces swapped, output pixels close).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from swapstream.benchmarks import media, report
from swapstream.benchmarks.inprocess import InProcessModels, providers_for
from swapstream.services.cli import main
from swapstream.services.engine.clock import STAGES
from tests.helpers.media import MEDIA

CLIP_FRAMES = 10
OBAMA = MEDIA / "img01_single_frontal_obama.jpg"


def run_cli(*args: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", *args]) == 0
    return printed.getvalue()


def read_csv(path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return media.cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("bench-clip") / "clip.mp4",
                     CLIP_FRAMES)


@pytest.fixture(scope="module")
def bench(triton, triton_repository, clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    printed = run_cli("--triton", triton.grpc_url, "--repository", str(triton_repository), "--clip", str(clip),
                      "--source", str(OBAMA), "--batch-sizes", "1,2", "--streams", "1", "--bound-repeats", "1",
                      "--out", str(out))
    return out, json.loads((out / "results.json").read_text()), printed


def test_every_output_file_is_written_with_all_fields(bench):
    out, results, _ = bench
    assert {"environment", "clip", "pipeline", "baseline", "bound", "decode", "ratios", "stages", "comparison",
            "best_batch_size"} <= set(results)
    expected = {"throughput": report.THROUGHPUT_FIELDS, "stages": report.STAGE_FIELDS, "triton": report.TRITON_FIELDS,
                "decode": report.DECODE_FIELDS, "ratios": report.RATIO_FIELDS}
    for name, fields in expected.items():
        rows = read_csv(out / f"{name}.csv")
        assert rows, name
        assert list(rows[0]) == fields, name

    throughput = read_csv(out / "throughput.csv")
    assert [(r["kind"], r["batch_size"], r["streams"]) for r in throughput] == [
        ("pipeline", "1", "1"), ("pipeline", "2", "1"), ("baseline", "1", "1"), ("bound", "1", ""), ("bound", "2", "")]
    for row in throughput:
        assert float(row["frames_per_s"]) > 0 and float(row["faces_per_s"]) > 0, row
        if row["kind"] == "pipeline":
            assert 0 < float(row["p50_ms"]) <= float(row["p95_ms"]), row
        if row["kind"] == "bound":
            assert 0 < float(row["frames_per_s_with_glue"]) < float(row["frames_per_s"]), row

    stages = read_csv(out / "stages.csv")
    assert [(r["kind"], r["stage"]) for r in stages] == [(k, s) for k in ("pipeline", "baseline") for s in STAGES]
    baseline_stages = {r["stage"]: float(r["seconds"]) for r in stages if r["kind"] == "baseline"}
    assert all(baseline_stages[s] > 0 for s in ("decode", "detect", "align", "swap", "blend", "encode"))
    assert baseline_stages["track"] == 0  # the baseline does not track
    # Frame at a time, nothing overlaps: its stages fit in its wall time.
    assert sum(baseline_stages.values()) <= results["stages"]["baseline"]["wall_seconds"]

    triton = {r["model"]: r for r in read_csv(out / "triton.csv")}
    for model in ("detect", "swap", "simswap", "bisenet", "gfpgan", "swap_merge"):  # YuNet runs inside detect
        assert int(triton[model]["requests"]) > 0 and float(triton[model]["compute_infer_ms"]) > 0, model

    decode = read_csv(out / "decode.csv")
    assert {(r["codec"], r["decoder"]) for r in decode} == {
        (codec, decoder) for codec in ("h264", "vp9")
        for decoder in ("dali", "pyav", "ffmpeg", "swapstream reader (pyav)")}
    for row in decode:
        if (row["codec"], row["decoder"]) == ("h264", "dali"):  # DALI's CPU decoder does not take H.264
            assert row["unsupported"] and not row["frames_per_s"]
        else:
            assert int(row["frames"]) == CLIP_FRAMES and float(row["frames_per_s"]) > 0, row
            assert float(row["cpu_seconds"]) > 0, row

    chart = cv2.imread(str(out / "throughput.png"))
    assert chart is not None and chart.shape[0] > 200 and chart.shape[1] > 300


def test_baseline_and_pipeline_swap_the_same_faces(bench):
    _, results, _ = bench
    assert results["baseline"]["frames"] == CLIP_FRAMES and results["baseline"]["faces"] == CLIP_FRAMES  # one face each
    for run in results["pipeline"]:
        assert (run["frames"], run["faces"]) == (results["baseline"]["frames"], results["baseline"]["faces"])


def test_ratios_are_the_measured_figures_divided(bench):
    out, results, printed = bench
    rows = {(r["kind"], r["batch_size"]): r for r in read_csv(out / "throughput.csv")}
    baseline = rows["baseline", "1"]
    baseline_fps = int(baseline["frames"]) / float(baseline["seconds"])
    assert float(baseline["frames_per_s"]) == pytest.approx(baseline_fps)
    for ratio in results["ratios"]:
        pipeline = rows["pipeline", str(ratio["batch_size"])]
        pipeline_fps = int(pipeline["frames"]) / float(pipeline["seconds"])
        bound = rows["bound", str(ratio["batch_size"])]
        assert ratio["pipeline_over_baseline"] == pytest.approx(pipeline_fps / baseline_fps)
        assert ratio["pipeline_over_bound"] == pytest.approx(pipeline_fps / float(bound["frames_per_s"]))
        assert ratio["pipeline_over_bound_with_glue"] == pytest.approx(
            pipeline_fps / float(bound["frames_per_s_with_glue"]))
    best = max(results["pipeline"], key=lambda r: r["frames_per_s"])["batch_size"]
    assert results["best_batch_size"] == best
    shown = re.search(r"best batch size (\d+): pipeline/baseline ([\d.]+), pipeline/bound ([\d.]+)", printed)
    best_ratio = next(r for r in results["ratios"] if r["batch_size"] == best)
    assert int(shown.group(1)) == best
    assert float(shown.group(2)) == pytest.approx(best_ratio["pipeline_over_baseline"], abs=0.006)
    assert float(shown.group(3)) == pytest.approx(best_ratio["pipeline_over_bound"], abs=0.0006)
    assert results["stages"]["pipeline"]["dominant"] in STAGES


def test_baseline_video_matches_the_pipeline_video(bench, clip, client):
    out, results, _ = bench
    comparison = results["comparison"]
    assert comparison["swapped_frames"] == [CLIP_FRAMES, CLIP_FRAMES] and comparison["same_frames_swapped"]
    assert comparison["mean_abs_diff_swapped_pixels"] < 0.2 * comparison["mean_change_swapped_pixels"]

    # The same, measured here on the face boxes the detector finds in the input.
    original = media.read_frames(clip, CLIP_FRAMES)
    pipeline = media.read_frames(out / "pipeline.mp4", CLIP_FRAMES).astype(np.float32)
    baseline = media.read_frames(out / "baseline.mp4", CLIP_FRAMES).astype(np.float32)
    found = client.detect(original)
    assert sorted(found.frame_index) == list(range(CLIP_FRAMES))
    for (x1, y1, x2, y2), i in zip(found.boxes.astype(int), found.frame_index):
        face = (slice(y1 + (y2 - y1) // 4, y2 - (y2 - y1) // 4), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
        swap_change = np.abs(pipeline[i][face] - original[i][face]).mean()
        assert swap_change > 10, i  # the stand-in's colour shift
        assert np.abs(pipeline[i][face] - baseline[i][face]).mean() < 3, i


def test_a_swap_compared_with_its_input_is_not_alike(bench, clip):
    out, _, _ = bench
    comparison = media.compare_swaps(clip, out / "pipeline.mp4", clip)
    assert comparison["swapped_frames"] == [CLIP_FRAMES, 0] and not comparison["same_frames_swapped"]


def test_in_process_models_answer_as_triton_does(triton_repository, client, clip):
    models = InProcessModels(triton_repository)
    frames = media.read_frames(clip, 2)
    served, local = client.detect(frames), models.run("detect", {"IMAGES": frames})
    np.testing.assert_allclose(local["LANDMARKS"], served.landmarks, atol=1e-3)
    faces = media.aligned_faces(frames, served.landmarks, served.frame_index)
    embedding = np.full(512, 512 ** -0.5, np.float32)
    served_faces, served_masks = client.swap(faces, embedding)
    local = models.run("swap", {"FACES": faces, "SOURCE_EMBEDDING": embedding[None]})
    assert np.abs(local["FACES_OUT"].astype(int) - served_faces).max() <= 1
    assert np.abs(local["MASKS"].astype(int) - served_masks).max() <= 1


def test_bound_says_which_networks_run_per_item(bench, triton_repository):
    _, results, _ = bench
    def batch_dimension(name: str):
        return ort.InferenceSession(str(triton_repository / name / "1" / "model.onnx")).get_inputs()[0].shape[0]

    fixed = sorted(name for name in ("yunet", "simswap", "bisenet", "gfpgan") if batch_dimension(name) == 1)
    for row in results["bound"]:
        assert row["per_item"] == fixed


def test_load_mode(triton, triton_repository, clip, tmp_path):
    printed = run_cli("load", "--triton", triton.grpc_url, "--repository", str(triton_repository), "--clip", str(clip),
                      "--source", str(OBAMA), "--concurrency", "1,2", "--faces", "2", "--seconds", "1",
                      "--out", str(tmp_path))
    rows = read_csv(tmp_path / "load.csv")
    assert [r["concurrency"] for r in rows] == ["1", "2"] and list(rows[0]) == report.LOAD_FIELDS
    for row in rows:
        requests, seconds = int(row["requests"]), float(row["seconds"])
        assert requests >= 1 and int(row["items_per_request"]) == 2
        assert float(row["items_per_s"]) == pytest.approx(2 * requests / seconds)
        percentiles = [float(row[f"p{q}_ms"]) for q in (50, 90, 95, 99)]
        assert 0 < percentiles[0] and percentiles == sorted(percentiles)
        assert float(row["triton_compute_ms_per_request"]) > 0
    assert "req/s" in printed and json.loads((tmp_path / "load.json").read_text())["load"][1]["concurrency"] == 2


def test_gpu_runs_use_cuda_or_refuse():
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("gpu")[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            providers_for("gpu")


def test_the_reader_over_raw_pyav_comes_from_the_decode_rows(bench):
    out, results, printed = bench
    rows = {(r["file"], r["decoder"].split(" (")[0]): r for r in results["decode"]}
    for file in {r["file"] for r in results["decode"]}:
        reader, pyav = rows[file, "swapstream reader"], rows[file, "pyav"]
        wall = reader["frames_per_s"] / pyav["frames_per_s"]
        cpu = (pyav["cpu_seconds"] / pyav["frames"]) / (reader["cpu_seconds"] / reader["frames"])
        assert f"{file}: swapstream reader / raw PyAV decode to RGB: {wall:.2f} by wall time, {cpu:.2f} by CPU time" \
            in printed


def test_decoders_run_in_turn_each_repeat(clip, monkeypatch):
    """``--repeats`` runs every decoder that takes the file that many times (DALI's CPU decoder refuses H.264 once)."""
    from swapstream.benchmarks import decoders

    calls = []
    for name, decode in list(decoders.DECODERS.items()):
        monkeypatch.setitem(decoders.DECODERS, name,
                            lambda *args, name=name, decode=decode: calls.append(name) or decode(*args))
    rows = decoders.measure_decoders(clip, repeats=3)
    assert calls == ["dali", "pyav", "ffmpeg", "swapstream reader"] + ["pyav", "ffmpeg", "swapstream reader"] * 2
    assert [row["decoder"] for row in rows] == ["dali", "pyav", "ffmpeg", "swapstream reader (pyav)"]
    assert rows[0]["unsupported"] and not rows[0]["frames_per_s"]
    for row in rows[1:]:
        assert row["frames"] == CLIP_FRAMES and row["frames_per_s"] == pytest.approx(CLIP_FRAMES / row["seconds"])
        assert row["cpu_seconds"] > 0
