"""The swapstream pipeline measured end to end (decode -> ... -> encode) at a batch size and a stream count.

S streams are S threads, each with its own ``FaceSwapper`` (own DALI pipelines, own gRPC client) running
``run_swap`` on the same clip against one Triton. A batch's latency is the time from the start of its
decode to the end of its encode: the i-th decoded batch is the i-th encoded one, as the job keeps frame
order and batch boundaries.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tritonclient.grpc as grpcclient

from swapstream.services.engine.clock import STAGES
from swapstream.services.engine.offline import SwapOptions, run_swap
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.triton.client import SwapstreamClient

STAT_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q) * 1e3) if seconds else float("nan")


def triton_statistics(url: str) -> dict[str, dict[str, int]]:
    """Per model: requests, executions and the nanoseconds Triton spent queueing and computing (summed over the
    servers of a ``host:port,host:port`` list)."""
    out: dict[str, dict[str, int]] = {}
    for address in url.split(","):
        client = grpcclient.InferenceServerClient(address.strip())
        try:
            stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
        finally:
            client.close()
        for model in stats:
            infer = model.get("inference_stats", {})
            row = {"requests": int(infer.get("success", {}).get("count", 0)),
                   "executions": int(model.get("execution_count", 0))}
            row.update({f"{name}_ns": int(infer.get(name, {}).get("ns", 0)) for name in STAT_FIELDS})
            total = out.setdefault(model["name"], dict.fromkeys(row, 0))
            for key, value in row.items():
                total[key] += value
    return out


def statistics_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """What happened between two ``triton_statistics`` snapshots, in ms, for models that ran."""
    delta = {}
    for model, row in after.items():
        old = before.get(model, {})
        diff = {key: value - old.get(key, 0) for key, value in row.items()}
        if diff["requests"] <= 0:
            continue
        delta[model] = {"requests": diff["requests"], "executions": diff["executions"],
                        **{f"{name}_ms": diff[f"{name}_ns"] / 1e6 for name in STAT_FIELDS}}
    return delta


@dataclass
class PipelineRun:
    batch_size: int
    streams: int
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    batch_latencies: list[float] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    triton: dict[str, dict[str, float]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def figures(self) -> dict:
        return {"kind": "pipeline", "batch_size": self.batch_size, "streams": self.streams, "frames": self.frames,
                "faces": self.faces, "seconds": self.seconds,
                "frames_per_s": self.frames / self.seconds if self.seconds else 0.0,
                "faces_per_s": self.faces / self.seconds if self.seconds else 0.0,
                "p50_ms": percentile_ms(self.batch_latencies, 50), "p95_ms": percentile_ms(self.batch_latencies, 95)}


class _BatchTimes:
    """Sees a job's stage calls; pairs the i-th decode start with the i-th encode end."""

    def __init__(self):
        self.decode_starts: list[float] = []
        self.encode_ends: list[float] = []

    def __call__(self, stage: str, seconds: float) -> None:
        now = time.perf_counter()
        if stage == "decode":
            self.decode_starts.append(now - seconds)
        elif stage == "encode":
            self.encode_ends.append(now)

    def latencies(self) -> list[float]:
        # The decode iterator's last call only finds the end of the file: it has no encode partner.
        return [end - start for start, end in zip(self.decode_starts, self.encode_ends)]


def run_together(url: str, count: int, work: Callable[[int], None]) -> tuple[float, dict]:
    """Runs ``work(i)`` for i < ``count`` in threads released at once.

    Returns the wall time and the Triton statistics of that time; re-raises the first error of a thread.
    """
    errors: list[BaseException] = []
    start_together = threading.Barrier(count + 1)

    def run(i: int) -> None:
        start_together.wait()
        try:
            work(i)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    before = triton_statistics(url)
    started = time.perf_counter()
    start_together.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    triton = statistics_delta(before, triton_statistics(url))
    if errors:
        raise errors[0]
    return seconds, triton


def pipeline_options(batch_size: int, device: str) -> SwapOptions:
    """The job as measured: every face, raw landmarks, no gap filling (the baseline's work, frame for frame)."""
    return SwapOptions(batch_size=batch_size, smoothing=False, max_gap=0, device=device)


def run_pipeline(url: str, source: Path, clip: Path, out_dir: Path, batch_size: int, streams: int = 1,
                 device: str = "cpu") -> PipelineRun:
    """One measurement: ``streams`` concurrent jobs on ``clip`` at ``batch_size``; outputs in ``out_dir``."""
    clients = [SwapstreamClient(url) for _ in range(streams)]
    swappers = [FaceSwapper(client, create_swapper("simswap", client), device) for client in clients]
    options = pipeline_options(batch_size, device)
    run = PipelineRun(batch_size, streams)
    run.outputs = [str(out_dir / f"pipeline-b{batch_size}-s{streams}-{i}.mp4") for i in range(streams)]
    clocks = [_BatchTimes() for _ in range(streams)]
    summaries = [None] * streams

    def stream(i: int) -> None:
        summaries[i] = run_swap(swappers[i], [source], clip, Path(run.outputs[i]), options, stage_observer=clocks[i])

    try:
        run.seconds, run.triton = run_together(url, streams, stream)
    finally:
        for client in clients:
            client.close()
    for summary, clock in zip(summaries, clocks):
        run.frames += summary.frames
        run.faces += summary.faces_swapped
        run.batch_latencies += clock.latencies()
        for stage, seconds in summary.stage_seconds.items():
            run.stage_seconds[stage] += seconds
    return run
