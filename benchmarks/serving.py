"""Serving figures: embedded Triton start-up, ``detect`` on a batch of frames, ``swap`` at K faces.

    python -m benchmarks.serving [--frames 8] [--faces 4] [--repeats 10]

Per-call latency is measured from the client (gRPC round trip included); the per-model compute time
comes from Triton's own statistics, so the table shows where a call spends its time.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import av
import numpy as np
import tritonclient.grpc as grpcclient

from services.repository import describe, embedded_triton, shared_dir
from services.triton_client import SwapstreamClient

CLIP = "vid01_talking_head_1280x720_audio.mp4"


def first_frames(path: Path, count: int) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                return np.stack(frames)
    raise ValueError(f"{path} has fewer than {count} frames")


def timed(call, repeats: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def compute_ms(stats_client, models: list[str]) -> dict[str, float]:
    """Mean compute time per execution of each model (ms), from Triton's statistics."""
    out = {}
    for model in models:
        stats = stats_client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        executions = int(stats.get("execution_count", 0)) or 1
        infer = stats["inference_stats"]
        nanos = sum(int(infer[k].get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output"))
        out[model] = nanos / executions / 1e6
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--faces", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", help="weights folder (default: the models cache, then ../shared/models)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with embedded_triton([Path(args.models)] if args.models else None) as (server, sources):
        startup = time.perf_counter() - started
        print(describe(sources))
        client = SwapstreamClient(server.grpc_url)
        frames = first_frames(shared_dir() / "media" / CLIP, args.frames)
        detect_times = timed(lambda: client.detect(frames), args.repeats)
        faces = np.random.default_rng(0).integers(0, 256, (args.faces, 512, 512, 3), dtype=np.uint8)
        embedding = np.ones(512, np.float32) / np.sqrt(512)
        swap_times = timed(lambda: client.swap(faces, embedding), args.repeats)
        per_model = compute_ms(grpcclient.InferenceServerClient(server.grpc_url),
                               ["detect_preprocess", "yunet", "detect_postprocess", "swap_preprocess",
                                "bisenet", "simswap", "swap_merge", "gfpgan", "swap_postprocess"])

    h, w = frames.shape[1:3]
    print(f"\nstart-up (repository built, server ready): {startup:.1f} s")
    print(f"detect, {args.frames} frames {w}x{h} (detector at 640): median {statistics.median(detect_times) * 1e3:.0f} ms"
          f" ({args.frames / statistics.median(detect_times):.1f} frames/s), p95 {np.percentile(detect_times, 95) * 1e3:.0f} ms")
    print(f"swap, K={args.faces}: median {statistics.median(swap_times) * 1e3:.0f} ms"
          f" ({args.faces / statistics.median(swap_times):.1f} faces/s), p95 {np.percentile(swap_times, 95) * 1e3:.0f} ms")
    print("compute per execution (Triton statistics):")
    for model, ms in per_model.items():
        print(f"  {model:<20} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
