"""Triton *Python-based backend* named ``onnxruntime``.

The embedded tritonserver (from the nvidia-pytriton wheel) has no native ONNX Runtime backend. Triton
loads a folder ``<backend-directory>/onnxruntime/model.py`` as a Python-based backend for every model
whose config says ``backend: "onnxruntime"``, so the same ``model_repository/`` runs here through the
onnxruntime Python package and in NVIDIA's container through the native backend, unchanged.

Only settings the native backend also understands are read from the config
(``default_model_filename``, ``parameters.intra_op_thread_count`` / ``inter_op_thread_count``). Idle threads do
not spin (the native backend's threads are configured by Triton's own options).
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _int_parameter(config, key):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return int(value) if value else 0


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, config.get("default_model_filename") or "model.onnx")

        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(config, "intra_op_thread_count")
        options.inter_op_num_threads = _int_parameter(config, "inter_op_thread_count")
        # Idle intra-op threads spin by default, waiting for the next run: on a CPU shared with the service that
        # spinning is most of the cost (a facemesh call, one face: 46 CPU-ms spinning, 13 without, 8 vs 10 ms wall).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)

        self.batching = config.get("max_batch_size", 0) > 0
        self.inputs = {i["name"]: i for i in config["input"]}
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]), o["dims"])
                        for o in config["output"]]
        self.output_names = [name for name, _, _ in self.outputs]
        # Inputs with a default (an initializer) are what config inputs marked optional map to.
        graph_inputs = {i.name: i for i in self.session.get_inputs() + self.session.get_overridable_initializers()}
        missing = [name for name in self.inputs if name not in graph_inputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"model '{self.model_name}': config inputs {missing} are not inputs of {path} "
                f"(the ONNX graph has {sorted(graph_inputs)})")
        # Inputs whose first dimension is the item count (K faces, N images).
        self.item_inputs = [i["name"] for i in config["input"] if self.batching or i["dims"][:1] == [-1]]
        # A graph exported with a fixed batch of 1 still serves K items: one run per item.
        self.fixed_batch_one = any(i.shape[:1] == [1] for i in self.session.get_inputs() if i.name in self.item_inputs)

    def execute(self, requests):
        feeds = [self._feeds(request) for request in requests]
        if len(feeds) == 1 or not self.batching or len({tuple(sorted(f)) for f in feeds}) > 1:
            return [self._respond_to(feed) for feed in feeds]
        # Triton's dynamic batcher grouped these requests (max_batch_size > 0: every input is batched): one run
        # for all their items, the outputs split back per request.
        counts = [len(next(iter(feed.values()))) for feed in feeds]
        merged = {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}
        bounds = np.cumsum([0] + counts)
        try:
            results = self._run(merged)
        except Exception:  # noqa: BLE001 - each request then gets its own run and its own error
            return [self._respond_to(feed) for feed in feeds]
        return [self._respond([r[a:b] for r in results]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _respond_to(self, feed):
        try:
            return self._respond(self._run(feed))
        except Exception as error:  # noqa: BLE001 - reported to the caller as a Triton error
            shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feed.items())
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{self.model_name} (inputs: {shapes}): {error}"))

    def _feeds(self, request):
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:  # absent optional input: the graph's initializer is its default
                feeds[name] = tensor.as_numpy()
        return feeds

    def _run(self, feed):
        leading = {len(feed[name]) for name in self.item_inputs if name in feed}
        if leading == {0}:
            return [np.zeros([0] + [max(d, 0) for d in dims[0 if self.batching else 1:]], dtype)
                    for _, dtype, dims in self.outputs]
        if self.fixed_batch_one and leading and max(leading) > 1:
            runs = [self.session.run(self.output_names,
                                     {k: v[i:i + 1] if k in self.item_inputs else v for k, v in feed.items()})
                    for i in range(max(leading))]
            return [np.concatenate(parts) for parts in zip(*runs)]
        return self.session.run(self.output_names, feed)

    def _respond(self, results):
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
                   for (name, dtype, _), value in zip(self.outputs, results)]
        return pb_utils.InferenceResponse(output_tensors=tensors)
