"""Several Tritons behind one client, measured: ``swapstream bench load`` against one and against two embedded
Tritons (the same repository, the same machine), and the cost of the balancer itself: the p50 of a small call
through ``SwapstreamClient`` (the pool: pick a server, async call, wait) against the same call made directly with
tritonclient on the same server, interleaved so that both see the same machine.

    python -m swapstream.benchmarks.balancer [--seconds 10] [--concurrency 1,2,4] [--faces 4] [--calls 300]

On one machine two servers share the same cores: read the one-vs-two figures as correctness (every call answered,
the calls split between the servers) and overhead, not as scaling. Writes ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from swapstream.benchmarks.harness import BenchConfig, run_load_bench
from swapstream.benchmarks.pipeline_runs import percentile_ms
from swapstream.services.triton.client import SwapstreamClient, _input
from swapstream.services.triton.repository import build_repository, weight_dirs_for
from swapstream.services.triton.server import EmbeddedTriton


def call_overhead(url: str, calls: int) -> dict:
    """p50/p90 of one ``detect`` call of a 64x64 frame, through the pool and directly, alternating."""
    image = np.zeros((1, 64, 64, 3), np.uint8)
    pooled = SwapstreamClient(url)
    direct = grpcclient.InferenceServerClient(url)
    times = {"balancer": [], "direct": []}
    try:
        for i in range(calls + 10):
            for way in ("balancer", "direct") if i % 2 else ("direct", "balancer"):
                started = time.perf_counter()
                if way == "balancer":
                    pooled.detect(image)
                else:
                    direct.infer("detect", [_input("IMAGES", image)],
                                 outputs=[grpcclient.InferRequestedOutput(o) for o in ("BOXES", "SCORES")])
                if i >= 10:  # the first calls warm both paths up
                    times[way].append(time.perf_counter() - started)
    finally:
        pooled.close()
        direct.close()
    out = {way: {f"p{q}_ms": percentile_ms(values, q) for q in (50, 90)} for way, values in times.items()}
    out["p50_ratio"] = out["balancer"]["p50_ms"] / out["direct"]["p50_ms"]
    out["p50_extra_ms"] = out["balancer"]["p50_ms"] - out["direct"]["p50_ms"]
    out["calls"] = calls
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--faces", type=int, default=4)
    parser.add_argument("--model", choices=["swap", "detect"], default="swap")
    parser.add_argument("--calls", type=int, default=300, help="calls per way for the overhead figure")
    parser.add_argument("--out", type=Path, default=Path("bench-balancer"))
    args = parser.parse_args(argv)
    concurrency = [int(n) for n in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    with ExitStack() as stack:
        repository = args.out / "repository"
        if not repository.exists():
            build_repository(repository, weight_dirs_for(None))
        servers = [stack.enter_context(EmbeddedTriton(repository)) for _ in range(2)]
        config = BenchConfig(out=args.out, repository=repository)
        results["overhead"] = call_overhead(servers[0].grpc_url, args.calls)
        for label, url in (("one", servers[0].grpc_url), ("two", ",".join(s.grpc_url for s in servers))):
            client = SwapstreamClient(url)
            before = {a: s["calls"] for a, s in client.servers()["each"].items()}
            load = run_load_bench(replace(config, triton=url), concurrency, args.faces, args.seconds, args.model)
            after = {a: s["calls"] for a, s in client.servers()["each"].items()}
            client.close()
            results[label] = {"url": url, "load": load["load"],
                              "calls_per_server": {a: after[a] - before.get(a, 0) for a in after}}
    for run in ("one", "two"):
        for row in results[run]["load"]:
            row.pop("triton", None)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(summary(results))
    return results


def summary(results: dict) -> str:
    lines = ["servers  clients  req/s  items/s  p50 ms  p95 ms"]
    for label in ("one", "two"):
        for row in results[label]["load"]:
            lines.append(f"{label:7}  {row['concurrency']:7}  {row['requests_per_s']:5.2f}  {row['items_per_s']:7.1f}  "
                         f"{row['p50_ms']:6.0f}  {row['p95_ms']:6.0f}")
        lines.append(f"  calls per server: {results[label]['calls_per_server']}")
    o = results["overhead"]
    lines.append(f"one detect call (64x64), p50: through the balancer {o['balancer']['p50_ms']:.2f} ms, direct "
                 f"{o['direct']['p50_ms']:.2f} ms (x{o['p50_ratio']:.2f}, {o['p50_extra_ms']:+.2f} ms), {o['calls']} calls each")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
