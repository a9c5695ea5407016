"""A small helper for writing ONNX graphs by hand (the glue steps and the stand-in models)."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

OPSET = 20  # GridSample (16), Resize antialias / Pad axes (18), AffineGrid (20)
IR_VERSION = 9  # onnxruntime >= 1.15 and Triton's native ONNX Runtime backend >= 23.05 read it

DTYPES = {
    "float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8, "int32": TensorProto.INT32,
    "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
}


class Graph:
    """Accumulates nodes; ``op`` returns the name of the (first) output so that calls nest."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def _fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, dtype: str, shape: list, default: np.ndarray | None = None) -> str:
        """A graph input; with ``default`` it is optional (an overridable initializer)."""
        self.inputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], shape))
        if default is not None:
            self.initializers.append(numpy_helper.from_array(np.asarray(default, dtype=dtype), name))
        return name

    def output(self, value: str, name: str, dtype: str, shape: list) -> None:
        if value != name:
            self.op("Identity", value, out=name)
        self.outputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], shape))

    def const(self, value, dtype: str = "float32", hint: str = "const") -> str:
        name = self._fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | list[str] | None = None, n_out: int = 1, **attrs):
        outs = [out] if isinstance(out, str) else out or [self._fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if len(outs) == 1 else outs

    # Shorthands for the common element-wise arithmetic.
    def add(self, a, b): return self.op("Add", a, b)
    def sub(self, a, b): return self.op("Sub", a, b)
    def mul(self, a, b): return self.op("Mul", a, b)
    def div(self, a, b): return self.op("Div", a, b)
    def cast(self, a, dtype: str): return self.op("Cast", a, to=DTYPES[dtype])

    def dim(self, tensor: str, axis: int) -> str:
        """The size of ``tensor`` along ``axis`` as an int64 tensor of shape [1]."""
        return self.op("Shape", tensor, start=axis, end=axis + 1)

    def model(self, doc: str = "", metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="swapstream", doc_string=doc)
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model, full_check=True)
        return model


def _prefix_inner_names(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """A copy whose node and inner tensor names start with ``prefix`` (graph inputs and outputs keep theirs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    inner = {i.name for i in graph.initializer} | {name for node in graph.node for name in node.output}
    renamed = {name: prefix + name for name in inner - keep}
    for initializer in graph.initializer:
        initializer.name = renamed.get(initializer.name, initializer.name)
    for index, node in enumerate(graph.node):
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
        node.name = f"{prefix}{node.name or index}"
    # Dropped here: they name tensors by their old names (and two models' would overlap in merge_models' check).
    # ``fold`` drops the ones merge_models then adds for the linked outputs.
    del graph.value_info[:]
    return out


def fold(first: onnx.ModelProto, second: onnx.ModelProto, links: list[tuple[str, str]], *,
         keep: tuple[str, ...] = (), prefixes: tuple[str, str] = ("a/", "b/")) -> onnx.ModelProto:
    """One graph running ``first`` then ``second``: ``links`` are (output of first, input of second); the
    inputs of both that are not linked stay inputs; ``keep``: outputs of first that stay outputs too. Both must
    use the default domain at this ``OPSET``.

    Triton runs each model of an ensemble in its own backend process here (the Python backend): every tensor
    handed from one step to the next is copied through shared memory. Folded, it stays inside one run."""
    first, second = _prefix_inner_names(first, prefixes[0]), _prefix_inner_names(second, prefixes[1])
    outputs = list(keep) + [v.name for v in second.graph.output]
    merged = compose.merge_models(first, second, io_map=links, outputs=outputs)
    # The networks' own exports name unrelated sizes alike (YuNet calls every stride's anchor count "dim"); once
    # inner, those declarations would make onnxruntime plan one buffer for tensors of different sizes.
    del merged.graph.value_info[:]
    onnx.checker.check_model(merged)
    return merged
