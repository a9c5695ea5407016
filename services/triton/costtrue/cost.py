"""Parameters and multiply-accumulates of an ONNX graph, per item (batch 1), counted from the graph itself.

Parameters: the elements of every floating-point initializer (weights, biases, norm statistics, noise
buffers; shape constants are integers and do not count). MACs: convolutions (``out elements x in/group x
kh x kw``, also when the weight is computed in the graph, as in modulated convolutions), transposed
convolutions, ``Gemm`` and ``MatMul``; element-wise work, norms and resampling are not counted, as in the
published figures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, shape_inference

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int


def _batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose symbolic input dimensions (the batch) are 1, so that shape inference gives static shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in list(fixed.graph.input) + list(fixed.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    return shape_inference.infer_shapes(fixed, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    return shapes


def parameters(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in FLOATS)


def macs(model: onnx.ModelProto) -> int:
    inferred = _batch_one(model)
    shapes = _shapes(inferred)
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        try:
            first, second, out = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        except KeyError as missing:
            raise ValueError(f"{node.op_type} {node.name or node.output[0]}: no static shape for {missing}") from None
        if node.op_type == "Conv":
            total += int(np.prod(out)) * int(np.prod(second[1:]))
        elif node.op_type == "ConvTranspose":
            total += int(np.prod(first)) * int(np.prod(second[1:]))
        else:  # Gemm / MatMul: every output element is a dot product over the inner dimension
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            total += int(np.prod(out)) * (first[-2] if trans_a else first[-1])
    return total


def cost(model: onnx.ModelProto) -> Cost:
    return Cost(parameters(model), macs(model))
