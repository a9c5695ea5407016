"""Throughput of the ingestion service: N jobs submitted at once, run by 1..W workers, against one Triton.

    python -m swapstream.benchmarks.service_throughput [--jobs 4] [--frames 96] [--workers 1,2]

Each worker count gets a fresh ``swapstream serve`` process and data folder; the figure is the frames of all
jobs over the wall time from the first submission to the last job done, and its ratio to one worker.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess, wait_for
from swapstream.services.triton.repository import embedded_triton, shared_dir

CLIP = "vid03_square_480_expressions.mp4"
SOURCE = "img01_single_frontal_obama.jpg"


def run(triton_url: str, workers: int, jobs: int, clip: Path, folder: Path) -> float:
    """Seconds from the first submission to the last job done."""
    source = shared_dir() / "media" / SOURCE
    with ServiceProcess(folder / f"data-{workers}", "--triton", triton_url, "--workers", str(workers),
                        "--max-queued", str(jobs)) as service, service.client() as http:
        files = [("target", (clip.name, clip.read_bytes(), "video/mp4")),
                 ("source", (source.name, source.read_bytes(), "image/jpeg"))]
        started = time.perf_counter()
        ids = [http.post("/v1/jobs", files=files).json()["id"] for _ in range(jobs)]
        for job_id in ids:
            job = wait_for(http, job_id, {"done", "failed"}, timeout=3600)
            if job["state"] != "done":
                raise RuntimeError(f"job failed: {job['error']}")
        return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--frames", type=int, default=96, help="frames per job (cut from vid03)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp, embedded_triton() as (server, _):
        clip = cut(shared_dir() / "media" / CLIP, Path(tmp) / "clip.mp4", args.frames)
        seconds = {w: run(server.grpc_url, w, args.jobs, clip, Path(tmp)) for w in counts}
    frames = args.jobs * args.frames
    print(f"{args.jobs} jobs x {args.frames} frames (480x480), one Triton")
    print(f"{'workers':>8} {'wall s':>8} {'frames/s':>9} {'vs ' + str(counts[0]):>7}")
    for w in counts:
        print(f"{w:>8} {seconds[w]:>8.1f} {frames / seconds[w]:>9.2f} {seconds[counts[0]] / seconds[w]:>6.2f}x")


if __name__ == "__main__":
    main()
