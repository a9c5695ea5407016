"""The cost-true networks alone: parameters and MACs per face, ms per face, and what batching gains.

``python -m swapstream.benchmarks.cost_true [--batch-sizes 1,4,16] [--out bench-results/cost-true]``

For each network (full size, from the cost-true cache, built on first use) it reports the parameters and
multiply-accumulates per face counted from the graph, the share of the real file's bytes the parameters
fill (float32), and faces/s at each batch size K for every way of running K faces that applies:

- ``one run per face``: what the embedded backend does with a fixed-batch-1 export;
- ``dynamic batch``: the repository's rewrite (``services/triton/batching.py``; for GFPGAN it includes
  re-expressing the modulated convolutions so that the batch is not folded into the weights), one run of K;
- ``2 instances``: for a graph that folds the batch into its weights, Triton's way for a model that cannot
  batch (``instance_group { count: 2 }``): two copies, each on one core, each running one face at a time.

Inputs are random tensors in the networks' input ranges: the compute does not depend on the pixels. Besides
wall time it records the process's CPU time per face, which other work on a shared machine disturbs less.
Heavy: several minutes on 2 CPU cores (GFPGAN is about 200 GMACs a face).
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from swapstream.benchmarks.inprocess import providers_for
from swapstream.services.triton import batching, costtrue
from swapstream.services.triton.costtrue import cost
from swapstream.services.triton.model_store import load_manifest


def _session(model: onnx.ModelProto | Path, device: str, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=providers_for(device))


def _inputs(session: ort.InferenceSession, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.get_inputs():
        shape = [count] + list(spec.shape[1:])
        if len(shape) == 2:  # an identity embedding: unit length
            value = rng.standard_normal(shape)
            value /= np.linalg.norm(value, axis=1, keepdims=True)
        else:
            value = rng.uniform(-2.0, 2.0, shape)
        feeds[spec.name] = value.astype(np.float32)
    return feeds


def _one_at_a_time(session):
    def run(feeds):
        count = len(next(iter(feeds.values())))
        for i in range(count):
            session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})
    return run


def _together(session):
    return lambda feeds: session.run(None, feeds)


def _instances(sessions):
    pool = ThreadPoolExecutor(len(sessions))

    def run(feeds):
        count = len(next(iter(feeds.values())))
        jobs = [pool.submit(sessions[i % len(sessions)].run, None, {k: v[i:i + 1] for k, v in feeds.items()})
                for i in range(count)]
        for job in jobs:
            job.result()
    return run


def _choices(path: Path, device: str) -> dict:
    original = onnx.load(str(path))
    if not batching.fixed_batch_one(original):
        return {"dynamic batch (as exported)": _together(_session(path, device))}
    choices = {"one run per face": _one_at_a_time(_session(path, device))}
    if batching.folded_batch(original):
        choices["2 instances, 1 core each"] = _instances([_session(path, device, threads=1) for _ in range(2)])
    rewritten = batching.dynamic_batch(original)
    if rewritten is not None:
        choices["dynamic batch (rewrite)"] = _together(_session(rewritten, device))
    return choices


def measure(batch_sizes: list[int], device: str = "cpu", networks: list[str] | None = None, say=print) -> list[dict]:
    manifest = load_manifest()
    folder = costtrue.ensure_models(manifest)
    rows = []
    for key in networks or list(costtrue.BUILDERS):
        entry = manifest[key]
        path = folder / entry.file
        counted = cost.cost(onnx.load(str(path)))
        row = {"network": key, "params": counted.params, "macs_per_face": counted.macs,
               "params_bytes_over_file": counted.params * 4 / entry.bytes, "faces_per_s": {}}
        for choice, run in _choices(path, device).items():
            probe = _session(path, device)
            run(_inputs(probe, 1))  # warm-up
            for k in batch_sizes:
                feeds = _inputs(probe, k)
                started, cpu = time.perf_counter(), time.process_time()
                run(feeds)
                rate = k / (time.perf_counter() - started)
                cpu_ms = (time.process_time() - cpu) * 1e3 / k
                row["faces_per_s"].setdefault(choice, {})[k] = rate
                row.setdefault("cpu_ms_per_face", {}).setdefault(choice, {})[k] = cpu_ms
                say(f"{key}: {choice}, K={k}: {rate:.2f} faces/s ({1e3 / rate:.0f} ms a face; CPU {cpu_ms:.0f} ms)")
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| network | params (M) | params x 4 B / file bytes | GMACs a face | way | "
             + " | ".join(f"K={k} faces/s (CPU ms a face)" for k in next(iter(rows[0]["faces_per_s"].values())))
             + " |"]
    for row in rows:
        for choice, rates in row["faces_per_s"].items():
            cpu = row["cpu_ms_per_face"][choice]
            lines.append(f"| {row['network']} | {row['params'] / 1e6:.2f} | {row['params_bytes_over_file']:.3f} | "
                         f"{row['macs_per_face'] / 1e9:.2f} | {choice} | "
                         + " | ".join(f"{r:.2f} ({cpu[k]:.0f})" for k, r in rates.items()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--networks", default=",".join(costtrue.BUILDERS), help="which (all)")
    parser.add_argument("--out", default="bench-results/cost-true")
    args = parser.parse_args(argv)
    rows = measure([int(k) for k in args.batch_sizes.split(",")], args.device, args.networks.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "networks.json").write_text(json.dumps(rows, indent=2))
    (out / "networks.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
