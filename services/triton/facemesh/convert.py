"""TFLite -> ONNX for the operators of MediaPipe's Face Mesh network, on the project's graph helper.

The ONNX graph keeps the TFLite file's I/O (names, NHWC layout, dtypes) with a dynamic batch ``K``; inside it
runs NCHW, the layout ONNX's Conv and MaxPool take. Every weight is read from the flatbuffer with the ``tflite``
package and laid out for ONNX here. An operator, option or tensor type outside what is written below is refused
with its name: a converter that guessed would give wrong landmarks without a sign.
"""
from __future__ import annotations

import numpy as np
import onnx

from swapstream.services.triton.onnx_graph import Graph

VERSION = 1  # of the conversion: a cached conversion of another version is redone
BATCH = "K"
NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


def _schema():
    """The ``tflite`` flatbuffer package, imported when a conversion runs: importing it takes half a second,
    which a repository build from the cached conversion should not pay."""
    import tflite
    return tflite


class ConversionError(ValueError):
    """The TFLite file holds something this converter does not translate exactly."""


class _Reader:
    """The flatbuffer's first subgraph: tensors by index, their constant data, operator names and options."""

    def __init__(self, buffer: bytes):
        self.schema = _schema()
        self.model = self.schema.Model.GetRootAsModel(buffer, 0)
        if self.model.SubgraphsLength() != 1:
            raise ConversionError(f"expected one subgraph, found {self.model.SubgraphsLength()}")
        self.graph = self.model.Subgraphs(0)
        codes = [self.model.OperatorCodes(i) for i in range(self.model.OperatorCodesLength())]
        # Files written since schema v3a keep codes above 127 in BuiltinCode and a placeholder (127) in the
        # deprecated byte; older files fill only the deprecated byte: the larger of the two is the operator.
        self.codes = [max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) for c in codes]

    def tflite_name(self, index: int) -> str:
        return self.graph.Tensors(index).Name().decode()

    def name(self, index: int) -> str:
        """The ONNX value of a tensor inside the graph (NCHW); the NHWC inputs and outputs keep the file's names."""
        return f"{self.tflite_name(index)}:nchw"

    def shape(self, index: int) -> list[int]:
        return self.graph.Tensors(index).ShapeAsNumpy().tolist()

    def constant(self, index: int, dtype=np.float32) -> np.ndarray | None:
        tensor = self.graph.Tensors(index)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:  # flatbuffers gives 0 for an absent vector
            return None
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(self.shape(index))

    def operators(self):
        names = {code: name for name, code in vars(self.schema.BuiltinOperator).items() if not name.startswith("_")}
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            code = self.codes[op.OpcodeIndex()]
            yield names.get(code, f"builtin code {code}"), op

    def check_float32(self) -> None:
        for i in range(self.graph.TensorsLength()):
            tensor = self.graph.Tensors(i)
            if tensor.Type() != self.schema.TensorType.FLOAT32 and not self._is_pad_amounts(i):
                raise ConversionError(f"tensor {self.tflite_name(i)!r} is of TFLite type {tensor.Type()}, not float32 "
                                      "(a quantised model is not handled)")

    def _is_pad_amounts(self, index: int) -> bool:
        return any(name == "PAD" and op.Inputs(1) == index for name, op in self.operators())


def _stem(value: str) -> str:
    return value.split(":")[0]


def _options(op, kind: str):
    table = op.BuiltinOptions()
    options = getattr(_schema(), kind)()
    options.Init(table.Bytes, table.Pos)
    return options


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding: the odd pixel goes after (stride 2 on an even size pads 0 before, 1 after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(padding: int, hw: list[int], kernel: list[int], strides: list[int], dilations: list[int]):
    if padding == _schema().Padding.VALID:
        return [0, 0, 0, 0]
    if padding != _schema().Padding.SAME:
        raise ConversionError(f"padding mode {padding} is neither SAME nor VALID")
    (top, bottom), (left, right) = (_same_pads(*args) for args in zip(hw, kernel, strides, dilations))
    return [top, left, bottom, right]


def _no_activation(name: str, options, where: str) -> None:
    if options.FusedActivationFunction() != _schema().ActivationFunctionType.NONE:
        raise ConversionError(f"{name} {where!r} has fused activation {options.FusedActivationFunction()}, "
                              "which this converter does not translate")


def _conv(g: Graph, r: _Reader, op, out: str, depthwise: bool) -> None:
    x, kernel_index, bias_index = (op.Inputs(i) for i in range(3))
    options = _options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
    _no_activation("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", options, out)
    kernel = r.constant(kernel_index)
    if kernel is None:
        raise ConversionError(f"convolution {out!r} has a computed kernel; only constant kernels are handled")
    channels_in = r.shape(x)[3]
    if depthwise:
        # [1,H,W,C*multiplier] -> [C*multiplier,1,H,W], one group per input channel
        weight = kernel[0].transpose(2, 0, 1)[:, None]
        group = channels_in
        if kernel.shape[3] != channels_in * options.DepthMultiplier():
            raise ConversionError(f"DEPTHWISE_CONV_2D {out!r}: kernel {kernel.shape} does not match "
                                  f"{channels_in} channels x multiplier {options.DepthMultiplier()}")
    else:
        weight, group = kernel.transpose(0, 3, 1, 2), 1  # [O,H,W,I] -> [O,I,H,W]
    strides = [options.StrideH(), options.StrideW()]
    dilations = [options.DilationHFactor(), options.DilationWFactor()]
    pads = _spatial_pads(options.Padding(), r.shape(x)[1:3], list(weight.shape[2:]), strides, dilations)
    inputs = [r.name(x), g.const(weight, hint=f"{_stem(out)}_weight")]
    bias = r.constant(bias_index) if bias_index >= 0 else None
    if bias is not None:
        inputs.append(g.const(bias, hint=f"{_stem(out)}_bias"))
    g.op("Conv", *inputs, out=out, strides=strides, dilations=dilations, pads=pads, group=group)


def _prelu(g: Graph, r: _Reader, op, out: str) -> None:
    alpha = r.constant(op.Inputs(1))
    if alpha is None or alpha.shape[-1] != r.shape(op.Inputs(0))[3] or np.prod(alpha.shape) != alpha.shape[-1]:
        raise ConversionError(f"PRELU {out!r}: alpha of shape {None if alpha is None else alpha.shape} is not one "
                              "constant slope per channel")
    g.op("PRelu", r.name(op.Inputs(0)), g.const(alpha.reshape(-1, 1, 1), hint=f"{_stem(out)}_alpha"), out=out)


def _add(g: Graph, r: _Reader, op, out: str) -> None:
    _no_activation("ADD", _options(op, "AddOptions"), out)
    a, b = op.Inputs(0), op.Inputs(1)
    if r.constant(a) is not None or r.constant(b) is not None or r.shape(a) != r.shape(b):
        raise ConversionError(f"ADD {out!r}: only the sum of two computed tensors of one shape is handled")
    g.op("Add", r.name(a), r.name(b), out=out)


def _max_pool(g: Graph, r: _Reader, op, out: str) -> None:
    options = _options(op, "Pool2DOptions")
    _no_activation("MAX_POOL_2D", options, out)
    kernel = [options.FilterHeight(), options.FilterWidth()]
    strides = [options.StrideH(), options.StrideW()]
    pads = _spatial_pads(options.Padding(), r.shape(op.Inputs(0))[1:3], kernel, strides, [1, 1])
    g.op("MaxPool", r.name(op.Inputs(0)), out=out, kernel_shape=kernel, strides=strides, pads=pads)


def _pad(g: Graph, r: _Reader, op, out: str) -> None:
    amounts = r.constant(op.Inputs(1), np.int32)
    if amounts is None or amounts.shape != (4, 2):
        raise ConversionError(f"PAD {out!r}: expected constant [4,2] pad amounts")
    if amounts[0].any():
        raise ConversionError(f"PAD {out!r} pads the batch axis")
    nchw = amounts[NHWC_TO_NCHW]  # rows N,H,W,C -> N,C,H,W (here it pads the channels of a residual shortcut)
    pads = np.concatenate([nchw[:, 0], nchw[:, 1]]).astype(np.int64)
    g.op("Pad", r.name(op.Inputs(0)), g.const(pads, "int64", hint=f"{_stem(out)}_pads"), out=out)


OPERATORS = {
    "CONV_2D": lambda g, r, op, out: _conv(g, r, op, out, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda g, r, op, out: _conv(g, r, op, out, depthwise=True),
    "PRELU": _prelu,
    "ADD": _add,
    "MAX_POOL_2D": _max_pool,
    "PAD": _pad,
}


def convert(buffer: bytes, doc: str = "", metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The TFLite model in ``buffer`` as ONNX: same input and output names, NHWC, batch dimension ``K``."""
    r = _Reader(buffer)
    unknown = sorted({name for name, _ in r.operators()} - OPERATORS.keys())
    if unknown:
        raise ConversionError(f"operator(s) {', '.join(unknown)} not handled (this converter knows "
                              f"{', '.join(OPERATORS)})")
    r.check_float32()
    g = Graph("facemesh_network")
    inputs, outputs = r.graph.InputsAsNumpy().tolist(), r.graph.OutputsAsNumpy().tolist()
    for index in inputs:
        name, shape = r.tflite_name(index), r.shape(index)
        if len(shape) != 4 or shape[0] != 1:
            raise ConversionError(f"input {name!r} of shape {shape}: expected one NHWC image [1,H,W,C]")
        g.op("Transpose", g.input(name, "float32", [BATCH, *shape[1:]]), out=r.name(index), perm=NHWC_TO_NCHW)
    for op_name, op in r.operators():
        if op.OutputsLength() != 1:
            raise ConversionError(f"{op_name} with {op.OutputsLength()} outputs is not handled")
        OPERATORS[op_name](g, r, op, r.name(op.Outputs(0)))
    for index in outputs:
        shape = r.shape(index)
        if len(shape) != 4:
            raise ConversionError(f"output {r.tflite_name(index)!r} of shape {shape}: expected NHWC")
        g.output(g.op("Transpose", r.name(index), perm=NCHW_TO_NHWC), r.tflite_name(index), "float32",
                 [BATCH, *shape[1:]])
    return g.model(doc, metadata)
