"""The swap chain on Triton's dynamic batcher (``benchmarks/dynamic_batching.py``'s repository copy): concurrent
one-face requests with different identities are merged into shared runs by the embedded backend, and each caller
gets exactly what the unbatched repository gives it."""
from __future__ import annotations

import threading

import numpy as np
import tritonclient.grpc as grpcclient

from swapstream.benchmarks.dynamic_batching import with_dynamic_batching
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.server import EmbeddedTriton
from tests.helpers.media import aligned_faces

CLIENTS, ROUNDS = 4, 5


def test_concurrent_requests_are_merged_and_answered_each_with_its_own_identity(triton_repository, client,
                                                                                tmp_path):
    faces = aligned_faces("img07_group6_t1.jpg", "ffhq_512", 512, client)[:CLIENTS]
    identities = client.identity(np.concatenate([
        aligned_faces(name, "arcface_112_v2", 112, client)[:1]
        for name in ("img01_single_frontal_obama.jpg", "img03_single_frontal_rose_leslie.jpg")]))
    expected = [client.swap(faces[i:i + 1], identities[i % 2]) for i in range(CLIENTS)]  # unbatched repository

    repository = with_dynamic_batching(triton_repository, tmp_path / "dynamic", delay_us=20000)
    answers: dict[tuple[int, int], tuple] = {}
    with EmbeddedTriton(repository) as server:
        start = threading.Barrier(CLIENTS)

        def caller(i: int) -> None:
            own = SwapstreamClient(server.grpc_url)
            start.wait()
            for round_ in range(ROUNDS):
                answers[i, round_] = own.swap(faces[i:i + 1], identities[i % 2])
            own.close()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("swap_merge", as_json=True)
    merge = stats["model_stats"][0]
    requests = int(merge["inference_stats"]["success"]["count"])
    assert requests == CLIENTS * ROUNDS
    assert int(merge["execution_count"]) < requests, "Triton never merged two concurrent requests"
    for (i, _), (out, masks) in answers.items():
        assert np.abs(out.astype(int) - expected[i][0]).max() <= 1
        assert np.abs(masks.astype(int) - expected[i][1]).max() <= 1
