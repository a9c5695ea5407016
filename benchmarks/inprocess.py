"""The model repository's ONNX files run in this process with onnxruntime, no Triton in between.

Used by the frame-at-a-time baseline (batch 1) and by the model bound (the networks alone at each batch
size). Ensembles are executed step by step from their ``config.pbtxt`` wiring, so both run exactly the
graphs and the order of steps that Triton runs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


def _read_config(folder: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def providers_for(device: str) -> list[str]:
    """onnxruntime's providers for ``device``; a GPU run never falls back to the CPU without saying so."""
    if device != "gpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError("--device gpu: this onnxruntime has no CUDAExecutionProvider "
                         f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxModel:
    """One ``<model>/1/model.onnx``. Graphs exported with a fixed batch of 1 are run once per item, as the
    embedded backend runs them (``fixed_batch_one`` says so)."""

    def __init__(self, folder: Path, config: model_config_pb2.ModelConfig, device: str):
        self.name = config.name
        self.path = folder / "1" / (config.default_model_filename or "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the glue graphs' optional inputs are initializers: ORT warns about each
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers_for(device))
        self.item_inputs = {i.name for i in config.input if list(i.dims[:1]) == [-1]}
        self.outputs = [o.name for o in config.output]
        self.fixed_batch_one = any(i.shape[:1] == [1] for i in self.session.get_inputs() if i.name in self.item_inputs)

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = {len(v) for k, v in feed.items() if k in self.item_inputs}
        if self.fixed_batch_one and items and max(items) > 1:
            runs = [self.session.run(self.outputs, {k: v[i:i + 1] if k in self.item_inputs else v
                                                    for k, v in feed.items()})
                    for i in range(max(items))]
            return dict(zip(self.outputs, (np.concatenate(parts) for parts in zip(*runs))))
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))


class InProcessModels:
    """Every model of a runtime repository (see ``swapstream.services.triton.repository.build_repository``), callable by name."""

    def __init__(self, repository: Path, device: str = "cpu"):
        self.repository = Path(repository)
        self.models: dict[str, OnnxModel] = {}
        self.ensembles: dict[str, model_config_pb2.ModelConfig] = {}
        for config_path in sorted(self.repository.glob("*/config.pbtxt")):
            config = _read_config(config_path.parent)
            if config.platform == "ensemble":
                self.ensembles[config.name] = config
            else:
                self.models[config.name] = OnnxModel(config_path.parent, config, device)

    def steps(self, ensemble: str) -> list[str]:
        return [step.model_name for step in self.ensembles[ensemble].ensemble_scheduling.step]

    def run(self, name: str, inputs: dict[str, np.ndarray], timings: dict[str, float] | None = None
            ) -> dict[str, np.ndarray]:
        """Outputs of model or ensemble ``name``; ``timings[step]`` accumulates each step's seconds."""
        if name in self.models:
            return self._run_model(name, inputs, timings)
        config = self.ensembles[name]
        tensors = dict(inputs)
        for step in config.ensemble_scheduling.step:
            feed = {inner: tensors[outer] for inner, outer in step.input_map.items() if outer in tensors}
            result = self._run_model(step.model_name, feed, timings)
            tensors.update({outer: result[inner] for inner, outer in step.output_map.items()})
        return {o.name: tensors[o.name] for o in config.output}

    def _run_model(self, name: str, feed: dict[str, np.ndarray], timings: dict[str, float] | None):
        started = time.perf_counter()
        result = self.models[name](feed)
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        return result
