"""Repository build step: a network exported with a fixed batch of 1 gets a dynamic batch dimension.

The rewrite names the first dimension of every input and output ``K``, drops the export's recorded
intermediate shapes, and turns each ``Reshape`` whose constant target starts with the batch (1) into one
that copies it from its input (0). That is all an export with ``x.view(1, ...)`` / ``x.view(x.size(0), -1)``
frozen at batch 1 needs. Convolutions whose weights are computed in the graph fold the batch into
``group = B``, which cannot follow a batch: StyleGAN2's modulated convolutions (GFPGAN) are first rewritten to
modulate the activations instead; any other such convolution makes the rewrite refuse (``None``).

``batch_matches`` checks a rewrite the only way that counts: K items in one run against K runs of one.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

BATCH = "K"
VERSION = 1  # of the rewrite: a verified rewrite is remembered per file and version


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
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if folded_batch(out) and not _unfold_modulated_convs(out.graph):
        return None
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


def _unfold_modulated_convs(graph: onnx.GraphProto) -> bool:
    """StyleGAN2's modulated convolutions rewritten in place so that the batch is not folded into the weights.

    The export computes per-sample weights ``w = W * s`` (``W`` a weight initializer, possibly unsqueezed to
    [1,out,in,k,k]; ``s`` the style reshaped to [1,1,in,1,1]), optionally demodulates them
    (``w * rsqrt(sum(w^2) + eps)``), reshapes them to [B*out,in,k,k] and convolves the activations reshaped to
    [1,B*in,H,W] with ``group = B``. The same result for any batch: ``conv(x * s, W) * d`` with
    ``d = rsqrt(s^2 @ sum_k(W^2)^T + 1e-8)`` per sample. True if every convolution with computed weights had
    that form (the graph is then rewritten and its dead nodes removed), False (graph untouched) otherwise.
    """
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}

    def made_by(name, op_type):
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    plans = _modulated_conv_plans(graph, made_by, initializers)
    if plans is None:
        return False
    new_inits, rewritten = [], {}
    for index, (conv, weight, style, demodulated) in enumerate(plans):
        rewritten[id(conv)] = _unfolded_conv(f"unfolded_{index}", conv, weight, style, demodulated, made_by,
                                             initializers, new_inits)
    ordered = []
    for node in graph.node:
        ordered.extend(rewritten.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    _remove_dead(graph)
    return True


def _modulated_conv_plans(graph: onnx.GraphProto, made_by, initializers: dict) -> list | None:
    """[(conv, weight initializer, style [B,in], demodulated)] for every convolution with computed weights, or
    None when one of them is not a modulated convolution."""
    def weight_param(name):
        if name in initializers:
            return name
        node = made_by(name, "Unsqueeze")
        return node.input[0] if node is not None and node.input[0] in initializers else None

    def modulation(name):
        """(weight initializer, style [B,in]) if ``name`` is ``W * reshape(s)``."""
        node = made_by(name, "Mul")
        if node is None:
            return None
        for w, s5 in (node.input, node.input[::-1]):
            reshape = made_by(s5, "Reshape")
            if weight_param(w) and reshape is not None:
                return weight_param(w), reshape.input[0]
        return None

    plans = []
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.input[1] in initializers:
            continue
        reshape = made_by(conv.input[1], "Reshape")
        if reshape is None or any(a.name == "group" and a.i != 1 for a in conv.attribute):
            return None
        found, demodulated = modulation(reshape.input[0]), False
        if found is None and made_by(reshape.input[0], "Mul") is not None:
            for factor in made_by(reshape.input[0], "Mul").input:
                found, demodulated = modulation(factor) or found, True
        if found is None:
            return None
        plans.append((conv, found[0], found[1], demodulated))
    return plans


def _unfolded_conv(name: str, conv, weight: str, style: str, demodulated: bool, made_by, initializers: dict,
                   new_inits: list) -> list:
    """The nodes of ``conv(x * s, W) * d`` that replace one modulated convolution (initializers into
    ``new_inits``)."""
    array = numpy_helper.to_array(initializers[weight])
    if array.ndim == 5:
        array = array[0]
        weight = f"{weight}_unfolded"
        new_inits.append(numpy_helper.from_array(array, weight))
    x = conv.input[0]
    x_reshape = made_by(x, "Reshape")
    if x_reshape is not None:
        x = x_reshape.input[0]
    nodes = [
        onnx.helper.make_node("Unsqueeze", [style, f"{name}_axes"], [f"{name}_s4"]),
        onnx.helper.make_node("Mul", [x, f"{name}_s4"], [f"{name}_x"]),
        onnx.helper.make_node("Conv", [f"{name}_x", weight, *conv.input[2:]],
                              [f"{name}_y" if demodulated else conv.output[0]],
                              **{a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}),
    ]
    new_inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), f"{name}_axes"))
    if demodulated:
        new_inits.append(numpy_helper.from_array(np.array(1e-8, np.float32), f"{name}_eps"))
        nodes += [
            onnx.helper.make_node("Mul", [weight, weight], [f"{name}_w2"]),
            onnx.helper.make_node("ReduceSum", [f"{name}_w2", f"{name}_axes"], [f"{name}_energy_w"], keepdims=0),
            onnx.helper.make_node("Transpose", [f"{name}_energy_w"], [f"{name}_energy_t"], perm=[1, 0]),
            onnx.helper.make_node("Mul", [style, style], [f"{name}_s2"]),
            onnx.helper.make_node("MatMul", [f"{name}_s2", f"{name}_energy_t"], [f"{name}_energy"]),
            onnx.helper.make_node("Add", [f"{name}_energy", f"{name}_eps"], [f"{name}_energy_eps"]),
            onnx.helper.make_node("Sqrt", [f"{name}_energy_eps"], [f"{name}_norm"]),
            onnx.helper.make_node("Reciprocal", [f"{name}_norm"], [f"{name}_demod"]),
            onnx.helper.make_node("Unsqueeze", [f"{name}_demod", f"{name}_axes"], [f"{name}_demod4"]),
            onnx.helper.make_node("Mul", [f"{name}_y", f"{name}_demod4"], [conv.output[0]]),
        ]
    return nodes


def _remove_dead(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


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
