"""Bad tensors get a Triton error naming the tensor and what was expected; the server keeps serving.
Triton's metrics count the successful requests of every model."""
from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from swapstream.services.triton.client import SwapstreamClient, TritonCallError

BAD_CALLS = [
    ("detect", {"IMAGES": np.zeros((1, 64, 64, 3), np.float32)}, ["IMAGES", "FP32", "expects 'UINT8'"]),
    ("detect", {"IMAGES": np.zeros((64, 64, 3), np.uint8)}, ["IMAGES", "[-1,-1,-1,3]"]),
    ("detect", {"IMAGES": np.zeros((1, 64, 64, 4), np.uint8)}, ["IMAGES", "[-1,-1,-1,3]", "[1,64,64,4]"]),
    ("identity", {"FACES": np.zeros((2, 100, 100, 3), np.uint8)}, ["FACES", "[-1,112,112,3]"]),
    ("swap", {"FACES": np.zeros((1, 256, 256, 3), np.uint8), "SOURCE_EMBEDDING": np.zeros((1, 512), np.float32)},
     ["FACES", "[-1,512,512,3]"]),
    ("swap", {"FACES": np.zeros((1, 512, 512, 3), np.uint8), "SOURCE_EMBEDDING": np.zeros(512, np.float32)},
     ["SOURCE_EMBEDDING", "[-1,512]"]),
    ("swap", {"FACES": np.zeros((1, 512, 512, 3), np.uint8)}, ["SOURCE_EMBEDDING"]),
]


@pytest.mark.parametrize("model, inputs, words", BAD_CALLS)
def test_bad_tensor_is_a_clear_error_and_the_server_keeps_serving(client, model, inputs, words):
    with pytest.raises(TritonCallError) as error:
        client._infer(model, inputs, [])
    message = str(error.value)
    assert f"'{model}'" in message
    for word in words:
        assert word in message
    assert len(client.detect(np.zeros((1, 64, 64, 3), np.uint8))) == 0  # still serving


def test_metrics_count_successes_for_every_model(client, triton):
    rgb = np.zeros((1, 96, 96, 3), np.uint8)
    client.detect(rgb)
    client.identity(np.zeros((1, 112, 112, 3), np.uint8))
    client.swap(np.zeros((1, 512, 512, 3), np.uint8), np.ones(512, np.float32) / np.sqrt(512))
    client.facemesh(np.zeros((1, 512, 512, 3), np.uint8))
    client._infer("yunet", {"input": np.zeros((1, 3, 64, 64), np.float32)}, ["cls_8"])  # alone: detect folds it in
    models = [m["name"] for m in grpcclient.InferenceServerClient(triton.grpc_url).get_model_repository_index(
        as_json=True)["models"]]
    assert len(models) == 14
    deadline = time.monotonic() + 10  # Triton publishes its counters shortly after the answer, not with it
    while True:
        text = urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()
        success = {m.group(1): float(m.group(2)) for m in
                   re.finditer(r'^nv_inference_request_success\{model="([^"]+)",version="[^"]*"\} (\S+)$', text, re.M)}
        missing = [model for model in models if success.get(model, 0) < 1]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"no successful request counted for {missing}"


def test_client_reports_an_unreachable_server():
    unreachable = SwapstreamClient("127.0.0.1:9", timeout=5)
    with pytest.raises(Exception):
        unreachable.detect(np.zeros((1, 32, 32, 3), np.uint8))
