"""Layers for the cost-true networks, written on the project's ONNX ``Graph`` helper.

Weights are drawn from one seeded generator per network (He/Xavier scale, so activations stay finite with
no training); batch norms that follow a convolution are folded into its bias, as an exported eval model
is after ONNX Runtime's optimisation. ``width`` scales every channel count (1.0 is the published network;
the tests build the same graph at a fraction of it).
"""
from __future__ import annotations

import math

import numpy as np

from swapstream.services.triton.onnx_graph import Graph


class Net:
    def __init__(self, name: str, seed: int, width: float = 1.0):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.width = width

    def ch(self, channels: int) -> int:
        """``channels`` scaled by the width, even (SFT splits channels in half) and at least 2."""
        return channels if self.width == 1.0 else max(2, 2 * round(channels * self.width / 2))

    def randn(self, shape, std: float) -> str:
        return self.g.const(self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std), hint="w")

    def zeros(self, shape) -> str:
        return self.g.const(np.zeros(shape, np.float32), hint="b")

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None, *,
             bias: bool = True, gain: float = math.sqrt(2.0)) -> str:
        pad = k // 2 if pad is None else pad
        inputs = [x, self.randn((cout, cin, k, k), gain / math.sqrt(cin * k * k))]
        if bias:
            inputs.append(self.zeros(cout))
        return self.g.op("Conv", *inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def linear(self, x: str, fin: int, fout: int, *, gain: float = 1.0, bias_value: float = 0.0) -> str:
        bias = self.g.const(np.full(fout, bias_value, np.float32), hint="b")
        return self.g.op("Gemm", x, self.randn((fout, fin), gain / math.sqrt(fin)), bias, transB=1)

    def batch_norm(self, x: str, channels: int) -> str:
        """A batch norm that cannot be folded (it precedes its convolution): inference form, 4 tensors."""
        ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        return self.g.op("BatchNormalization", x, self.g.const(ones), self.g.const(zeros), self.g.const(zeros),
                         self.g.const(ones), epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.g.op("Relu", x)

    def lrelu(self, x: str, slope: float = 0.2) -> str:
        return self.g.op("LeakyRelu", x, alpha=slope)

    def prelu(self, x: str, channels: int) -> str:
        return self.g.op("PRelu", x, self.g.const(np.full((channels, 1, 1), 0.25, np.float32)))

    def reflect_pad(self, x: str, pad: int) -> str:
        return self.g.op("Pad", x, self.g.const([0, 0, pad, pad, 0, 0, pad, pad], "int64"), mode="reflect")

    def resize(self, x: str, scale: float, mode: str = "linear", align_corners: bool = False) -> str:
        transform = "align_corners" if align_corners else ("asymmetric" if mode == "nearest" else "half_pixel")
        return self.g.op("Resize", x, "", self.g.const([1.0, 1.0, scale, scale]), mode=mode,
                         coordinate_transformation_mode=transform, nearest_mode="floor")

    def resize_to(self, x: str, size: int, align_corners: bool = True) -> str:
        """Bilinear resize of an NCHW tensor to ``size`` x ``size`` (any batch)."""
        sizes = self.g.op("Concat", self.g.op("Shape", x, start=0, end=2), self.g.const([size, size], "int64"),
                          axis=0)
        return self.g.op("Resize", x, "", "", sizes, mode="linear",
                         coordinate_transformation_mode="align_corners" if align_corners else "half_pixel")
