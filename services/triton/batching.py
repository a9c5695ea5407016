"""Repository build step: a network exported with a fixed batch of 1 gets a dynamic batch dimension.

The rewrite names the first dimension of every input and output ``K``, drops the export's recorded
intermediate shapes, and turns each ``Reshape`` whose constant target starts with the batch (1) into one
that copies it from its input (0). That is all an export with ``x.view(1, ...)`` / ``x.view(x.size(0), -1)``
frozen at batch 1 needs. It is refused (``None``) where the batch is folded into the computation rather than
carried along: a convolution whose weights are computed in the graph (StyleGAN2's modulated convolutions in
GFPGAN fold the batch into ``group = B``), since its ``group`` attribute cannot follow the batch.

``batch_matches`` checks a rewrite the only way that counts: K items in one run against K runs of one.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from swapstream.services.triton.onnx_graph import DTYPES

BATCH = "K"
_NUMPY = {value: name for name, value in DTYPES.items()}


def fixed_batch_one(model: onnx.ModelProto) -> bool:
    initializers = {i.name for i in model.graph.initializer}
    return any(dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1
               for value in model.graph.input if value.name not in initializers
               for dims in [value.type.tensor_type.shape.dim])


def folded_batch(model: onnx.ModelProto) -> list[str]:
    """Convolutions whose weight is computed in the graph (the batch folded into their groups)."""
    initializers = {i.name for i in model.graph.initializer}
    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type in ("Conv", "ConvTranspose") and n.input[1] not in initializers]


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with a dynamic first dimension, or None where the graph cannot follow a batch."""
    if folded_batch(model):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        target = numpy_helper.to_array(initializers[node.input[1]])
        if target.ndim != 1 or len(target) < 2 or target[0] != 1:
            continue
        fixed = target.copy()
        fixed[0] = 0  # copy the batch from the input
        name = node.input[1] if consumers[node.input[1]] == 1 else f"{node.input[1]}_batched"
        if name != node.input[1]:
            graph.initializer.append(numpy_helper.from_array(fixed, name))
            node.input[1] = name
        else:
            initializers[name].CopyFrom(numpy_helper.from_array(fixed, name))
    onnx.checker.check_model(out)
    return out


def batch_matches(original: onnx.ModelProto, batched: onnx.ModelProto, batch: int = 3, seed: int = 0,
                  rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    """One run of ``batch`` random items through ``batched`` equals ``batch`` runs of one through ``original``."""
    import onnxruntime as ort

    def session(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    single, many = session(original), session(batched)
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([batch] + [d if isinstance(d, int) else 1 for d in i.shape[1:]])
             .astype(_onnx_numpy(i.type)) for i in single.get_inputs()}
    together = many.run(None, feeds)
    apart = [single.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
    return all(np.allclose(whole, np.concatenate(parts), rtol=rtol, atol=atol)
               for whole, parts in zip(together, zip(*apart)))


def _onnx_numpy(ort_type: str) -> str:
    return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int64)": "int64",
            "tensor(int32)": "int32"}[ort_type]
