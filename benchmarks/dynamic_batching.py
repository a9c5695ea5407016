"""Triton's dynamic batcher on the ``swap`` chain against the repository as it is (``max_batch_size: 0``).

    python -m swapstream.benchmarks.dynamic_batching [--seconds 8] [--clients 4] [--out bench-dynamic]

Both repositories serve the same model files; the second is a copy whose swap steps say ``max_batch_size: 16``
and ``dynamic_batching`` (their dims without the batch), so that Triton merges concurrent requests into one run.
Three loads on each, the same faces and identity (``run_load``, closed-loop gRPC clients):

- 1 face per request, 1 client: what the batcher's queue delay costs a lone caller;
- 1 face per request, N clients: independent callers (streams served frame by frame, job workers) that only
  Triton can merge;
- N faces per request, 1 client: the live scheduler's way, the frames merged before the call.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from swapstream.benchmarks import media
from swapstream.benchmarks.load import run_load
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.repository import build_repository, weight_dirs_for
from swapstream.services.triton.server import EmbeddedTriton

SWAP_STEPS = ("swap_preprocess", "bisenet", "simswap", "swap_merge", "gfpgan", "swap_postprocess")


def with_dynamic_batching(repository: Path, out: Path, max_batch: int = 16, delay_us: int = 4000) -> Path:
    """A copy of a runtime repository whose ``swap`` ensemble and steps batch, the steps on the dynamic batcher."""
    shutil.copytree(repository, out, symlinks=True)
    for name in (*SWAP_STEPS, "swap"):
        path = out / name / "config.pbtxt"
        text = path.read_text().replace("max_batch_size: 0", f"max_batch_size: {max_batch}")
        text = re.sub(r"dims: \[ -1, ", "dims: [ ", text)  # the batch dimension is implicit now
        if name != "swap":  # an ensemble has no scheduler of its own: its steps batch
            text += f"\ndynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
        path.write_text(text)
    return out


def loads(url: str, faces: np.ndarray, embedding: np.ndarray, clients: int, seconds: float) -> list[dict]:
    runs = [(faces[:1], 1), (faces[:1], clients), (faces[np.arange(clients) % len(faces)], 1)]
    rows = []
    for items, concurrency in runs:
        row = run_load(url, "swap", items, embedding, concurrency, seconds)
        merge = row["triton"].get("swap_merge", {})
        rows.append({key: row[key] for key in ("items_per_request", "concurrency", "requests", "items_per_s",
                                               "p50_ms", "p95_ms")}
                    | {"swap_merge_requests": merge.get("requests"), "swap_merge_executions": merge.get("executions")})
    return rows


def compare(out: Path, clients: int = 4, seconds: float = 8.0, models: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = {"clients": clients, "seconds": seconds, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="swapstream-dynamic-") as work:
        plain = Path(work) / "plain"
        build_repository(plain, weight_dirs_for(models))
        repositories = {"max_batch_size 0": plain,
                        "dynamic batcher": with_dynamic_batching(plain, Path(work) / "dynamic")}
        frames = media.read_frames(media.default_clip(out, 8), 8)
        faces = embedding = None
        for name, repository in repositories.items():
            with EmbeddedTriton(repository) as server:
                if faces is None:
                    client = SwapstreamClient(server.grpc_url)
                    swapper = FaceSwapper(client, create_swapper("simswap", client))
                    found = swapper.detect(frames)
                    faces = media.aligned_faces(frames, found.landmarks, found.frame_index)
                    embedding = swapper.source_identity([media.default_source()], [])["embedding"]
                print(f"{name}: 1 face x 1 client, 1 face x {clients} clients, {clients} faces x 1 client ...",
                      flush=True)
                results["runs"][name] = loads(server.grpc_url, faces, embedding, clients, seconds)
    (out / "dynamic-batching.json").write_text(json.dumps(results, indent=1))
    return results


def summary(results: dict) -> str:
    lines = ["| repository | faces/request | clients | faces/s | p50 / p95 ms | swap_merge runs / requests |",
             "|---|---|---|---|---|---|"]
    for name, rows in results["runs"].items():
        for row in rows:
            lines.append(f"| {name} | {row['items_per_request']} | {row['concurrency']} | {row['items_per_s']:.2f} | "
                         f"{row['p50_ms']:.0f} / {row['p95_ms']:.0f} | {row['swap_merge_executions']} / "
                         f"{row['swap_merge_requests']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--models", help="model weights folder, or cost-true (default: the usual lookup)")
    parser.add_argument("--out", default="bench-dynamic")
    args = parser.parse_args(argv)
    print(summary(compare(Path(args.out), args.clients, args.seconds, args.models)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
