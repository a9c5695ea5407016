"""``detect`` as one graph against the three-step ensemble it replaced, and YuNet alone, in one Triton.

    python -m swapstream.benchmarks.detect_steps [--frames 16] [--calls 6]

The ensemble (``detect_preprocess`` -> ``yunet`` -> ``detect_postprocess``, the glue graphs of
``services/triton/glue.py``) is served beside the repository's models as ``detect_ensemble``; the three are called
in turn on the same frames (a shared photo at 640x360), and each row gives the server's time per request (Triton's
statistics: queue + compute, what the request spent inside the server) and the client's wall time per call.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from swapstream.services.triton import glue
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.repository import build_repository, shared_dir
from swapstream.services.triton.server import EmbeddedTriton

YUNET_OUTPUTS = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in glue.YUNET_STRIDES]


def _tensors(graph: onnx.GraphProto, optional: set[str]) -> str:
    types = {1: "TYPE_FP32", 2: "TYPE_UINT8", 6: "TYPE_INT32", 7: "TYPE_INT64"}
    rows = []
    for value in graph:
        dims = ", ".join("-1" if d.dim_param or not d.dim_value else str(d.dim_value)
                         for d in value.type.tensor_type.shape.dim)
        flag = " optional: true" if value.name in optional else ""
        rows.append(f'  {{ name: "{value.name}" data_type: {types[value.type.tensor_type.elem_type]} dims: [ {dims} ]{flag} }}')
    return ",\n".join(rows)


def _write_glue(repository: Path, name: str, model: onnx.ModelProto) -> None:
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    optional = {i.name for i in model.graph.initializer}
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f"input [\n{_tensors(model.graph.input, optional)}\n]\noutput [\n{_tensors(model.graph.output, set())}\n]\n"
        "instance_group [ { kind: KIND_AUTO count: 1 } ]\n")


def add_ensemble(repository: Path) -> None:
    """``detect_ensemble``: the three steps ``detect`` ran as before they were folded into one graph."""
    _write_glue(repository, "detect_preprocess", glue.detect_preprocess())
    _write_glue(repository, "detect_postprocess", glue.detect_postprocess())
    detect = (repository / "detect" / "config.pbtxt").read_text()
    head = detect[:detect.index("instance_group")].replace('name: "detect"', 'name: "detect_ensemble"')
    head = head.replace('backend: "onnxruntime"', 'platform: "ensemble"')

    def maps(kind: str, names) -> str:
        return "\n".join(f'      {kind} {{ key: "{k}" value: "{v}" }}' for k, v in names)

    passed = [(n, n) for n in glue.DETECT_PASSED_ON]
    steps = [
        ("detect_preprocess", [(n, n) for n in ("IMAGES", "IMAGE_SIZES", "DETECT_SIZE")],
         [("DETECTOR_INPUT", "detector_input")] + passed),
        ("yunet", [("input", "detector_input")], [(n, n) for n in YUNET_OUTPUTS]),
        ("detect_postprocess", [(n, n) for n in YUNET_OUTPUTS] + passed + [("SCORE_THRESHOLD", "SCORE_THRESHOLD"),
                                                                           ("NMS_THRESHOLD", "NMS_THRESHOLD")],
         [(n, n) for n in ("BOXES", "SCORES", "LANDMARKS", "FRAME_INDEX")]),
    ]
    body = ",\n".join(f'    {{\n      model_name: "{m}"\n      model_version: -1\n{maps("input_map", i)}\n'
                      f'{maps("output_map", o)}\n    }}' for m, i, o in steps)
    folder = repository / "detect_ensemble"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f"{head}ensemble_scheduling {{\n  step [\n{body}\n  ]\n}}\n")


def _server_ms(admin: grpcclient.InferenceServerClient, model: str) -> tuple[int, float]:
    stats = admin.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]["success"]
    return int(stats.get("count", 0)), float(stats.get("ns", 0)) / 1e6


def measure(url: str, frames: np.ndarray, calls: int) -> list[dict]:
    client = SwapstreamClient(url)
    admin = grpcclient.InferenceServerClient(url)
    detector_input = ort.InferenceSession(glue.detect_preprocess().SerializeToString(),
                                          providers=["CPUExecutionProvider"]).run(None, {"IMAGES": frames})[0]
    runs = {
        "detect (one graph)": ("detect", {"IMAGES": frames}, ["BOXES"]),
        "detect_ensemble (three steps)": ("detect_ensemble", {"IMAGES": frames}, ["BOXES"]),
        "yunet alone (its input given)": ("yunet", {"input": detector_input}, YUNET_OUTPUTS),
    }
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for name, (model, inputs, outputs) in runs.items():  # one warm-up each
        client._infer(model, inputs, outputs)
    before = {name: _server_ms(admin, model) for name, (model, _, _) in runs.items()}
    for _ in range(calls):  # interleaved: the machine's load falls on all three alike
        for name, (model, inputs, outputs) in runs.items():
            started = time.perf_counter()
            client._infer(model, inputs, outputs)
            walls[name].append(time.perf_counter() - started)
    rows = []
    for name, (model, _, _) in runs.items():
        count, ms = _server_ms(admin, model)
        rows.append({"run": name, "calls": count - before[name][0],
                     "server_ms_per_call": (ms - before[name][1]) / (count - before[name][0]),
                     "client_wall_ms_median": statistics.median(walls[name]) * 1e3})
    client.close()
    admin.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per call (16)")
    parser.add_argument("--calls", type=int, default=6, help="timed calls of each (6)")
    args = parser.parse_args(argv)
    photo = cv2.imread(str(shared_dir() / "media" / "img07_group6_t1.jpg"))
    frames = np.stack([cv2.resize(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), (640, 360))] * args.frames)
    with tempfile.TemporaryDirectory(prefix="swapstream-detect-steps-") as tmp:
        repository = Path(tmp)
        build_repository(repository, [shared_dir() / "models"])
        add_ensemble(repository)
        with EmbeddedTriton(repository, startup_timeout=600) as server:
            rows = measure(server.grpc_url, frames, args.calls)
    yunet = rows[-1]["server_ms_per_call"]
    print(f"{args.frames} frames of 640x360 a call, {args.calls} calls each, interleaved")
    for row in rows:
        print(f"{row['run']:32s} server {row['server_ms_per_call']:8.1f} ms a call ({row['server_ms_per_call'] / yunet:.2f}x "
              f"YuNet alone)   client wall {row['client_wall_ms_median']:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
