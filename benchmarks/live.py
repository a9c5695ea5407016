"""``swapstream bench live``: N concurrent live streams of a real clip at real-time pace against one service, with
the scheduler's cross-stream batching against frame by frame (``--live-max-batch 1``: batch-1 calls, the way the
peers serve each user).

One embedded Triton (or ``--triton``) serves two ``swapstream serve`` processes, one per mode. For each stream count
both modes run in turn (so that a change in the machine's load touches both alike). Each stream is the
``swapstream live`` client's ``LiveStream`` on the same pre-encoded JPEG frames (640x480, as a camera page sends
them), started at a random phase within one frame interval (cameras are not in step). The batch sizes formed come
from the service's ``/metrics``; the server's CPU per answered frame from ``/proc``.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import httpx
import numpy as np

from swapstream.benchmarks import report
from swapstream.benchmarks.harness import BenchConfig, bench_setup
from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live.client import Frame, LiveError, LiveStats, LiveStream, encode_jpeg, endpoints, \
    open_stream, percentile, upload_source
from swapstream.services.triton.repository import shared_dir

MODES = {"batched": (), "frame_by_frame": ("--live-max-batch", "1")}
DEFAULT_CLIP = "vid01_talking_head_1280x720_audio.mp4"   # a talking face at 30 frames/s, made a camera's 640x480
CAMERA = (640, 480)     # every clip's frames are scaled to cover this and centre-cropped: what a webcam page sends
SOURCES = ("img01_single_frontal_obama.jpg", "img03_single_frontal_rose_leslie.jpg")  # alternate per stream
QUALITY = 80
WARMUP_FRAMES = 15
SERVICE_START_SECONDS = 600   # a shared, loaded machine starts a service slowly
BATCH_METRIC = "swapstream_live_batch_frames"
ROUNDS_METRIC = "swapstream_live_rounds_total"
OVERLAPPED_METRIC = "swapstream_live_rounds_overlapped_total"
FIELDS = ["mode", "streams", "frames_sent", "frames_received", "frames_dropped", "frames_refused",
          "frames_unaccounted", "dropped_percent", "p50_ms", "p95_ms", "p99_ms", "fps_per_stream", "fps_total",
          "seconds", "batches", "mean_batch", "max_batch", "overlapped", "server_cpu_ms_per_frame"]
RATIO_FIELDS = ["streams", "batched_fps_total", "frame_by_frame_fps_total", "batched_over_frame_by_frame",
                "batched_p95_ms", "frame_by_frame_p95_ms"]


@dataclass
class Service:
    process: ServiceProcess
    source_ids: list[str]
    swapper: str        # the one the sources were stored for, so the streams use


def histogram(metrics_text: str, name: str) -> dict[str, float]:
    """A Prometheus histogram's cumulative buckets {le: count} plus ``_sum`` and ``_count`` from /metrics text."""
    values = {}
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.startswith(f"{name}_bucket"):
            values[series.split('le="')[1].split('"')[0]] = float(value)
        elif series in (f"{name}_sum", f"{name}_count"):
            values[series[len(name) + 1:]] = float(value)
    return values


def batch_sizes(before: dict[str, float], after: dict[str, float]) -> dict:
    """Batches formed between two scrapes: how many, their mean size and the largest bucket reached."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count = delta.get("count", 0.0)
    bounds = sorted((float(k), v) for k, v in delta.items() if k not in ("sum", "count") and k != "+Inf")
    reached = [bound for bound, cumulative in bounds if cumulative < count]   # buckets not yet holding all batches
    largest = bounds[len(reached)][0] if count and len(reached) < len(bounds) else None
    return {"batches": int(count), "mean_batch": delta.get("sum", 0.0) / count if count else None,
            "max_batch": largest, "buckets": delta}


def counters(metrics_text: str, name: str) -> dict[str, float]:
    """A Prometheus counter's series {labels: value} from /metrics text ("" for one without labels)."""
    values = {}
    for line in metrics_text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name or series.startswith(name + "{"):
            values[series[len(name):].strip("{}")] = float(value)
    return values


def _scrape(process: ServiceProcess) -> dict:
    text = httpx.get(f"{process.url}/metrics", timeout=30).text
    return {"batches": histogram(text, BATCH_METRIC), "rounds": counters(text, ROUNDS_METRIC),
            "overlapped": counters(text, OVERLAPPED_METRIC).get("", 0.0)}


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (gone ones skipped)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes and everything below them, as /proc counts it now."""
    ticks = 0
    for pid in {p for root in pids for p in _tree(root)}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def server_pids(service: Service) -> list[int]:
    """The service process and the Triton servers below this process (the embedded one; none with --triton)."""
    tritons = [pid for pid in _tree(os.getpid())[1:]
               if Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"]
    return [service.process.process.pid, *tritons]


def scheduler_figures(before: dict, after: dict) -> dict:
    """Between two scrapes: the batch sizes, why each batch's gathering ended, and how many overlapped another."""
    ends = {key.split('"')[1]: value - before["rounds"].get(key, 0.0) for key, value in after["rounds"].items()}
    return {**batch_sizes(before["batches"], after["batches"]), "ends": ends,
            "overlapped": after["overlapped"] - before["overlapped"]}


def start_service(stack: ExitStack, work: Path, triton_url: str, mode: str, sources: list[Path],
                  swapper: str | None = None) -> Service:
    """A service with the sources stored for ``swapper`` (None: the service's default)."""
    process = ServiceProcess(work / f"data-{mode}", "--triton", triton_url, "--max-streams", "64", *MODES[mode])
    stack.push(process)  # stopped on the way out, also when it does not start
    process.start(timeout=SERVICE_START_SECONDS)
    with process.client() as http:
        ids = [upload_source(http, [source], swapper) for source in sources]
        used = {http.get(f"/v1/sources/{source_id}").json()["swapper"] for source_id in ids}
    return Service(process, ids, used.pop())


def run_streams(service: Service, frames: list[Frame], streams: int, seed: int = 0) -> list[LiveStats]:
    """``streams`` concurrent live streams of ``frames`` at their own pace; each stream's figures."""
    rng = random.Random(seed)
    interval = frames[1].due if len(frames) > 1 and frames[1].due else 1 / 30
    results: list[LiveStats | BaseException] = [None] * streams  # type: ignore[list-item]
    ready = threading.Barrier(streams)

    def one(index: int) -> None:
        try:
            source_id = service.source_ids[index % len(service.source_ids)]
            with open_stream(endpoints(service.process.url)[1], source_id, quality=QUALITY) as (ws, _):
                ready.wait(120)
                time.sleep(rng.random() * interval)
                results[index] = LiveStream(ws).run(frames)
        except BaseException as error:  # reported below, with the stream it broke
            ready.abort()
            results[index] = error

    threads = [threading.Thread(target=one, args=(i,), name=f"live-bench-{i}") for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    if failed:
        raise LiveError(f"{len(failed)} of {streams} streams failed; stream {failed[0][0]}: {failed[0][1]!r}")
    return results  # type: ignore[return-value]


def camera_frames(path: Path, size: tuple[int, int] = CAMERA, quality: int = QUALITY) -> tuple[float, list[Frame]]:
    """(frame rate, the clip's frames as a camera page sends them): ``size`` (scaled to cover it, centre-cropped),
    JPEG at ``quality``."""
    width, height = size
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        frames = []
        for seq, frame in enumerate(container.decode(stream)):
            bgr = frame.to_ndarray(format="bgr24")
            scale = max(width / bgr.shape[1], height / bgr.shape[0])
            bgr = cv2.resize(bgr, (max(width, round(bgr.shape[1] * scale)), max(height, round(bgr.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            top, left = (bgr.shape[0] - height) // 2, (bgr.shape[1] - width) // 2
            frames.append(Frame(seq, seq / fps, encode_jpeg(bgr[top:top + height, left:left + width], quality)))
    return fps, frames


def looped(frames: list[Frame], count: int | None, fps: float) -> list[Frame]:
    """``count`` frames at ``fps`` (default: the clip once): the clip cut, or played again from its start."""
    count = count or len(frames)
    return [Frame(i, i / fps, frames[i % len(frames)].data) for i in range(count)]


def figures(mode: str, stats: list[LiveStats], batches: dict) -> dict:
    latencies = [ms for s in stats for ms in s.latencies_ms]
    sent = sum(s.sent for s in stats)
    received = sum(s.received for s in stats)
    started = min(s.first_sent for s in stats if s.first_sent)
    ended = max((s.last_received for s in stats if s.last_received), default=None)
    seconds = ended - started if ended else None
    per_stream = [s.figures()["received_fps"] or 0.0 for s in stats]
    return {"mode": mode, "streams": len(stats), "frames_sent": sent, "frames_received": received,
            "frames_dropped": sum(s.dropped for s in stats), "frames_refused": sum(s.refused for s in stats),
            "frames_unaccounted": sum(s.unaccounted for s in stats),
            "dropped_percent": 100.0 * sum(s.dropped for s in stats) / sent if sent else 0.0,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99), "fps_per_stream": float(np.mean(per_stream)),
            "fps_total": received / seconds if seconds else 0.0, "seconds": seconds,
            **{k: batches[k] for k in ("batches", "mean_batch", "max_batch", "overlapped")},
            "batch_buckets": batches["buckets"], "batch_ends": batches["ends"],
            "server_ms_mean": {key: sum(s.server_ms.get(key, 0.0) for s in stats) / received
                               for key in sorted({k for s in stats for k in s.server_ms})} if received else {},
            "close": sorted({s.close for s in stats}), "errors": [e for s in stats for e in s.errors][:10]}


def ratios(rows: list[dict]) -> list[dict]:
    by = {(r["mode"], r["streams"]): r for r in rows}
    out = []
    for streams in sorted({r["streams"] for r in rows}):
        batched, single = by.get(("batched", streams)), by.get(("frame_by_frame", streams))
        if batched and single:
            out.append({"streams": streams, "batched_fps_total": batched["fps_total"],
                        "frame_by_frame_fps_total": single["fps_total"],
                        "batched_over_frame_by_frame": batched["fps_total"] / single["fps_total"]
                        if single["fps_total"] else None,
                        "batched_p95_ms": batched["p95_ms"], "frame_by_frame_p95_ms": single["p95_ms"]})
    return out


def run_live_bench(config: BenchConfig, streams: list[int], say=print, swapper: str | None = None) -> dict:
    """Every stream count in both modes, on ``swapper`` (None: the service's default); returns what
    ``write_live_results`` writes."""
    if config.clip is None:
        config.clip = shared_dir() / "media" / DEFAULT_CLIP
    frames_wanted, config.frames = config.frames, None  # the clip is looped or cut here, not by bench_setup
    sources = [config.source] if config.source else [shared_dir() / "media" / name for name in SOURCES]
    results: dict = {"config": {"streams": streams, "clip": str(config.clip), "frames": frames_wanted,
                                "sources": [str(s) for s in sources], "quality": QUALITY,
                                "triton": config.triton or "embedded"}, "runs": []}
    with bench_setup(config) as setup, ExitStack() as stack:
        fps, clip_frames = camera_frames(setup.clip)
        frames = looped(clip_frames, frames_wanted, fps)
        results["clip"] = {"path": str(setup.clip), "frames": len(frames), "fps": fps, "size": list(CAMERA),
                           "mean_jpeg_kb": float(np.mean([len(f.data) for f in frames]) / 1024)}
        results["environment"] = {"cpus": len(os.sched_getaffinity(0)),
                                  "startup_seconds": setup.startup_seconds}
        services = {}
        for mode in MODES:
            say(f"starting `swapstream serve` ({mode}) ...")
            services[mode] = start_service(stack, setup.work, setup.url, mode, sources, swapper)
            results["config"]["swapper"] = services[mode].swapper
            run_streams(services[mode], frames[:WARMUP_FRAMES], 1)  # first calls load and allocate
        for count in streams:
            for mode, service in services.items():
                say(f"live: {count} stream{'s' if count > 1 else ''}, {mode} ...")
                before, cpu = _scrape(service.process), cpu_seconds(server_pids(service))
                stats = run_streams(service, frames, count, seed=count)
                cpu = cpu_seconds(server_pids(service)) - cpu
                run = figures(mode, stats, scheduler_figures(before, _scrape(service.process)))
                run["server_cpu_ms_per_frame"] = 1000 * cpu / run["frames_received"] if run["frames_received"] else None
                results["runs"].append(run)
    results["ratios"] = ratios(results["runs"])
    return results


def write_live_results(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "live.json").write_text(json.dumps(results, indent=2, default=str))
    report._write_csv(out / "live.csv", FIELDS, results["runs"])
    report._write_csv(out / "live-ratios.csv", RATIO_FIELDS, results["ratios"])
    return [out / "live.json", out / "live.csv", out / "live-ratios.csv"]


def live_summary_text(results: dict) -> str:
    clip = results["clip"]
    head = (f"clip {Path(clip['path']).name}: {clip['frames']} frames, {clip['size'][0]}x{clip['size'][1]} at "
            f"{clip['fps']:.3g} frames/s, JPEG q{results['config']['quality']} ~{clip['mean_jpeg_kb']:.0f} KB; "
            f"{results['environment']['cpus']} CPUs; swapper {results['config'].get('swapper')}")
    rows = [[r["mode"], r["streams"], r["fps_total"], r["fps_per_stream"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
             r["dropped_percent"], r["mean_batch"], r["max_batch"], r["overlapped"], r["server_cpu_ms_per_frame"]]
            for r in results["runs"]]
    table = report._table(["mode", "streams", "fps total", "fps/stream", "p50 ms", "p95 ms", "p99 ms", "dropped %",
                           "mean batch", "max batch", "overlapped", "server CPU ms/frame"], rows)
    ratio_rows = [[r["streams"], r["batched_fps_total"], r["frame_by_frame_fps_total"],
                   report._fmt(r["batched_over_frame_by_frame"], 2), r["batched_p95_ms"], r["frame_by_frame_p95_ms"]]
                  for r in results["ratios"]]
    ratio_table = report._table(["streams", "batched fps", "frame-by-frame fps", "ratio", "batched p95 ms",
                                 "frame-by-frame p95 ms"], ratio_rows)
    keys = sorted({k for r in results["runs"] for k in r.get("server_ms_mean", {})})
    stage_table = report._table(["mode", "streams", *(f"{k} ms" for k in keys)],
                                [[r["mode"], r["streams"], *(r.get("server_ms_mean", {}).get(k) for k in keys)]
                                 for r in results["runs"]])
    return "\n\n".join([head, table, "the service's own time for an answered frame (mean ms, from the answers' "
                          "timings):\n" + stage_table, ratio_table])
