"""``swapstream bench``: the pipeline, the frame-at-a-time baseline, the model bound and decode, in one run,
on the same clip and the same model files; and the Triton load mode.

The model files: the embedded Triton serves a repository this run builds (``--models`` for the weights) and
the baseline and the bound run the very same files in-process. Against a remote Triton (``--triton``) give
``--repository`` (the one it serves) so that the in-process runs use its files; otherwise they use a
repository built here from the local weights, and the results say so.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from swapstream.benchmarks import media
from swapstream.benchmarks.baseline import FrameAtATimeSwapper, run_baseline
from swapstream.benchmarks.bound import measure_bound
from swapstream.benchmarks.decoders import measure_decoders
from swapstream.benchmarks.inprocess import InProcessModels
from swapstream.benchmarks.load import run_load
from swapstream.benchmarks.pipeline_runs import PipelineRun, pipeline_options, run_pipeline
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.repository import build_repository, weight_dirs_for
from swapstream.services.triton.server import EmbeddedTriton

PARTS = ("pipeline", "baseline", "bound", "decode")
DEFAULT_FRAMES = 60
WARMUP_FRAMES = 8
SAMPLE_FRAMES = 4  # real frames (and their faces) the bound and the load mode are fed


@dataclass
class BenchConfig:
    out: Path = Path("bench-results")
    clip: Path | None = None              # default: a cut of the shared talking-head clip
    frames: int | None = None             # cut the clip to its first N frames (default clip: DEFAULT_FRAMES)
    source: Path | None = None            # the source face photo
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    streams: list[int] = field(default_factory=lambda: [1, 2])
    parts: tuple[str, ...] = PARTS
    bound_repeats: int = 3
    repeats: int = 1                      # pipeline and baseline runs per configuration (the median is kept)
    device: str = "cpu"
    models: Path | None = None            # weights folder for the repository built here, or "cost-true"
    repository: Path | None = None        # an existing runtime repository (e.g. the one a remote Triton serves)
    triton: str | None = None             # host:port of a running Triton's gRPC; default: start the embedded one


@dataclass
class Setup:
    url: str | None
    repository: Path
    model_sources: list[dict]
    startup_seconds: float | None
    clip: Path
    source: Path
    work: Path


@contextmanager
def bench_setup(config: BenchConfig, serve: bool = True):
    """The clip, the repository and (with ``serve``) a Triton serving it, started here unless ``config.triton``."""
    config.out.mkdir(parents=True, exist_ok=True)
    work = config.out / "media"
    work.mkdir(exist_ok=True)
    source = config.source or media.default_source()
    if config.clip is None:
        clip = media.default_clip(work, config.frames or DEFAULT_FRAMES)
    elif config.frames:
        clip = media.cut(config.clip, work / f"clip-{config.frames}{config.clip.suffix}", config.frames)
    else:
        clip = config.clip
    with ExitStack() as stack:
        started = time.perf_counter()
        if config.repository:
            repository, model_sources = config.repository, [{"model": "all", "kind": "given",
                                                             "detail": str(config.repository)}]
        else:
            repository = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swapstream-bench-")))
            model_sources = [vars(s) for s in build_repository(repository, weight_dirs_for(config.models))]
        if config.triton or not serve:
            url, startup = config.triton, None
        else:
            url = stack.enter_context(EmbeddedTriton(repository)).grpc_url
            startup = time.perf_counter() - started
        yield Setup(url, repository, model_sources, startup, clip, source, work)


def _environment(config: BenchConfig, setup: Setup) -> dict:
    note = None
    if config.triton and not config.repository:
        note = ("remote Triton without --repository: baseline and bound ran a repository built from local "
                "weights; they are comparable only if the server serves the same files")
    return {"machine": platform.machine(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
            "device": config.device, "triton": config.triton or "embedded", "startup_seconds": setup.startup_seconds,
            "models": setup.model_sources, "note": note}


def _sample_inputs(setup: Setup, models: InProcessModels, device: str):
    """Real frames at the detector's size, FFHQ-512 faces cut from them, and the source's embedding."""
    frames = media.read_frames(setup.clip, SAMPLE_FRAMES)
    swapper = FrameAtATimeSwapper(models, pipeline_options(1, device), StageClock())
    found = [swapper.detect(frame)[1] for frame in frames]
    index = np.concatenate([np.full(len(lm), i) for i, lm in enumerate(found)]).astype(int)
    if len(index) == 0:
        raise ValueError(f"no face found in the first {SAMPLE_FRAMES} frames of {setup.clip}: choose a clip with faces")
    faces = media.aligned_faces(frames, np.concatenate(found), index)
    return media.to_detector_size(frames), faces, swapper.source_embedding([setup.source])


def _ratios(pipeline: list[dict], baseline: dict | None, bound: list[dict]) -> list[dict]:
    """pipeline/baseline and pipeline/bound per batch size, from the figures measured in this run."""
    bounds = {row["batch_size"]: row for row in bound}
    rows = []
    for run in pipeline:
        if run["streams"] != 1:
            continue
        row = {"batch_size": run["batch_size"], "pipeline_frames_per_s": run["frames_per_s"]}
        if baseline:
            row["pipeline_over_baseline"] = run["frames_per_s"] / baseline["frames_per_s"]
        if run["batch_size"] in bounds:
            b = bounds[run["batch_size"]]
            row["pipeline_over_bound"] = run["frames_per_s"] / b["frames_per_s"]
            row["pipeline_over_bound_with_glue"] = run["frames_per_s"] / b["frames_per_s_with_glue"]
        rows.append(row)
    return rows


def _stage_breakdown(run: PipelineRun | None, baseline) -> dict:
    out = {}
    if run:
        out["pipeline"] = {"batch_size": run.batch_size, "streams": run.streams, "wall_seconds": run.seconds,
                           "stage_seconds": run.stage_seconds, "overlapping": True, "triton": run.triton}
    if baseline:
        out["baseline"] = {"batch_size": 1, "streams": 1, "wall_seconds": baseline.seconds,
                           "stage_seconds": baseline.stage_seconds, "overlapping": False}
    return out


def _dominant(stage_seconds: dict[str, float]) -> str:
    return max(stage_seconds, key=stage_seconds.get)


def _say(text: str) -> None:
    print(text, flush=True)


def _median(runs: list, fps) -> object:
    """The run with the median frames/s (the lower middle one for an even count)."""
    return sorted(runs, key=fps)[(len(runs) - 1) // 2]


def _pipeline_fps(run: PipelineRun) -> float:
    return run.frames / run.seconds


def _measure_pipeline_and_baseline(config: BenchConfig, setup: Setup, models: InProcessModels, say):
    """Pipeline runs by (batch size, streams) and the baseline run, each the median of ``config.repeats``.

    Repeats go in rounds (every batch size, then the baseline, then again) so that a change in the
    machine's load touches all of them alike.
    """
    want_pipeline, want_baseline = "pipeline" in config.parts, "baseline" in config.parts

    def pipeline(batch: int, streams: int) -> PipelineRun:
        say(f"pipeline: batch {batch}, {streams} stream{'s' if streams > 1 else ''} ...")
        return run_pipeline(setup.url, setup.source, setup.clip, config.out, batch, streams, config.device)

    if want_pipeline:
        warmup = media.cut(setup.clip, setup.work / "warmup.mp4", WARMUP_FRAMES)
        run_pipeline(setup.url, setup.source, warmup, setup.work, config.batch_sizes[0], 1, config.device)
    measured: dict[tuple[int, int], list[PipelineRun]] = {}
    baselines = []
    for _ in range(config.repeats):
        for batch in config.batch_sizes if want_pipeline else []:
            measured.setdefault((batch, 1), []).append(pipeline(batch, 1))
        if want_baseline:
            say("baseline: frame at a time ...")
            baselines.append(run_baseline(models, [setup.source], setup.clip, config.out / "baseline.mp4",
                                          pipeline_options(1, config.device)))
    runs = {key: _median(values, _pipeline_fps) for key, values in measured.items()}
    if runs:
        best = max(config.batch_sizes, key=lambda b: _pipeline_fps(runs[b, 1]))
        for streams in config.streams:
            if (best, streams) not in runs:
                runs[best, streams] = _median([pipeline(best, streams) for _ in range(config.repeats)], _pipeline_fps)
    baseline = _median(baselines, lambda summary: summary.fps) if baselines else None
    return runs, baseline


def run_bench(config: BenchConfig, say=_say) -> dict:
    """Runs the parts in ``config.parts``; returns every figure (also what ``report`` writes)."""
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}}
    with bench_setup(config, serve="pipeline" in config.parts) as setup:
        results["environment"] = _environment(config, setup)
        results["clip"] = {"path": str(setup.clip), "source": str(setup.source)}
        models = InProcessModels(setup.repository, config.device)
        runs, baseline = _measure_pipeline_and_baseline(config, setup, models, say)
        results["pipeline"] = [run.figures() for run in runs.values()]
        best_run = None
        if runs:
            best_run = max((run for (_, streams), run in runs.items() if streams == 1), key=_pipeline_fps)
            results["best_batch_size"] = best_run.batch_size
        if baseline:
            results["baseline"] = {"kind": "baseline", "batch_size": 1, "streams": 1, "frames": baseline.frames,
                                   "faces": baseline.faces_swapped, "seconds": baseline.seconds,
                                   "frames_per_s": baseline.fps,
                                   "faces_per_s": baseline.faces_swapped / baseline.seconds}
        results["bound"] = []
        if "bound" in config.parts:
            say("model bound ...")
            frames, faces, embedding = _sample_inputs(setup, models, config.device)
            measured = results.get("baseline") or (results["pipeline"][0] if runs else None)
            faces_per_frame = measured["faces"] / measured["frames"] if measured else len(faces) / len(frames)
            results["bound"] = measure_bound(models, frames, faces, embedding, config.batch_sizes, faces_per_frame,
                                             config.bound_repeats)
        if "decode" in config.parts:
            say("decode ...")
            vp9 = media.to_vp9(setup.clip, setup.work / (setup.clip.stem + "-vp9.webm"))
            results["decode"] = [row for path in (setup.clip, vp9)
                                 for row in measure_decoders(path, config.device, repeats=config.repeats)]
        results["ratios"] = _ratios(results["pipeline"], results.get("baseline"), results["bound"])
        results["stages"] = _stage_breakdown(best_run, baseline)
        if best_run:
            results["stages"]["pipeline"]["dominant"] = _dominant(best_run.stage_seconds)
            _keep_only(runs, best_run, config.out)
        if baseline:
            results["stages"]["baseline"]["dominant"] = _dominant(baseline.stage_seconds)
        if best_run and baseline:
            results["comparison"] = media.compare_swaps(setup.clip, Path(best_run.outputs[0]),
                                                        config.out / "baseline.mp4")
    return results


def _keep_only(runs: dict, keep: PipelineRun, out: Path) -> None:
    """The swapped videos of the other runs are only load: keep the best run's as ``pipeline.mp4``."""
    for run in runs.values():
        for path in run.outputs:
            if run is not keep or path != keep.outputs[0]:
                Path(path).unlink(missing_ok=True)
    target = out / "pipeline.mp4"
    Path(keep.outputs[0]).replace(target)
    keep.outputs[0] = str(target)


def run_load_bench(config: BenchConfig, concurrency: list[int], items: int, seconds: float, model: str = "swap",
                   say=_say) -> dict:
    """The Triton load mode: for each concurrency, N clients calling ``model`` with ``items`` faces (frames)."""
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()},
                     "load": []}
    if config.clip is None and config.frames is None:
        config = replace(config, frames=SAMPLE_FRAMES)  # only the first frames are used: cut no more
    with bench_setup(config) as setup:
        results["environment"] = _environment(config, setup)
        client = SwapstreamClient(setup.url)
        swapper = FaceSwapper(client, create_swapper("simswap", client), config.device)
        frames = media.read_frames(setup.clip, SAMPLE_FRAMES)
        if model == "swap":
            found = swapper.detect(frames)
            if len(found) == 0:
                raise ValueError(f"no face in the first frames of {setup.clip}")
            faces = media.aligned_faces(frames, found.landmarks, found.frame_index)
            inputs = faces[np.arange(items) % len(faces)]
        else:
            small = media.to_detector_size(frames)
            inputs = small[np.arange(items) % len(small)]
        embedding = swapper.source_identity([setup.source], [])["embedding"]
        for n in concurrency:
            say(f"load: {model}, {items} per request, concurrency {n}, {seconds:g} s ...")
            results["load"].append(run_load(setup.url, model, inputs, embedding, n, seconds))
    return results
