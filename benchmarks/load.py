"""Triton-level load, as perf_analyzer measures it: N concurrent gRPC clients calling one model for a while.

Each client is its own thread and sends the same request again as soon as the previous one answered (closed loop);
the clients share the process's connection to each server (``services/triton/balancer.py``), and with several
servers (``--triton a:8001,b:8001``) their calls are spread over them. ``swap`` gets K aligned faces per request,
``detect`` K frames.
"""
from __future__ import annotations

import time

import numpy as np

from swapstream.benchmarks.pipeline_runs import percentile_ms, run_together
from swapstream.services.triton.client import SwapstreamClient

PERCENTILES = (50, 90, 95, 99)


def _call(client: SwapstreamClient, model: str, items: np.ndarray, embedding: np.ndarray):
    if model == "swap":
        return client.swap(items, embedding)
    return client.detect(items)


def run_load(url: str, model: str, items: np.ndarray, embedding: np.ndarray, concurrency: int,
             seconds: float) -> dict:
    """Requests/s, items/s and latency percentiles of ``concurrency`` clients for ``seconds``."""
    clients = [SwapstreamClient(url) for _ in range(concurrency)]
    for client in clients:  # warm-up: channel set up, first-call allocations
        _call(client, model, items, embedding)
    latencies: list[list[float]] = [[] for _ in clients]

    def client_loop(i: int) -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            _call(clients[i], model, items, embedding)
            latencies[i].append(time.perf_counter() - started)

    try:
        elapsed, triton = run_together(url, concurrency, client_loop)
    finally:
        for client in clients:
            client.close()
    pooled = [x for per_client in latencies for x in per_client]
    requests = len(pooled)
    called = triton.get(model, {})
    per_request = max(called.get("requests", 0), 1)
    # An ensemble's own queue time is ~0: its requests wait in its steps' queues (the other models that ran).
    queue_ms = sum(row["queue_ms"] for row in triton.values())
    compute_ms = sum(called.get(f"{k}_ms", 0.0) for k in ("compute_input", "compute_infer", "compute_output"))
    return {
        "model": model, "concurrency": concurrency, "items_per_request": len(items), "seconds": elapsed,
        "requests": requests, "requests_per_s": requests / elapsed, "items_per_s": requests * len(items) / elapsed,
        **{f"p{q}_ms": percentile_ms(pooled, q) for q in PERCENTILES},
        "triton_queue_ms_per_request": queue_ms / per_request,
        "triton_compute_ms_per_request": compute_ms / per_request,
        "triton": triton,
    }
