"""SimSwap-256's generator (``Generator_Adain_Upsample``, ``n_blocks=9``, ``deep=False``), cost-true.

Encoder: reflection-padded 7x7 conv to 64 channels, three stride-2 convs to 128, 256, 512 (batch norms folded,
ReLU). Bottleneck: 9 AdaIN residual blocks at 512 channels; each has two (reflection pad, 3x3 conv, instance
norm, style) units, the style being ``x * (1 + gamma) + beta`` with ``[gamma, beta]`` from a per-unit linear
layer on the 512-d identity (the export's 18 ``Gemm`` on ``onnx::Gemm_1``). Decoder: three (bilinear x2
upsample, 3x3 conv, ReLU) stages back to 64 channels, reflection-padded 7x7 conv to RGB. The output is mapped
to [0,1] (SimSwap's ``(x + 1) / 2`` after a tanh, here so that untrained weights keep the real range).
"""
from __future__ import annotations

import onnx

from swapstream.services.triton.costtrue.nn import Net
from swapstream.services.triton.standins import _dims

BLOCKS = 9
LATENT = 512


def _instance_norm(net: Net, x: str) -> str:
    """SimSwap's own InstanceNorm (no affine): (x - mean) / sqrt(mean((x - mean)^2) + 1e-8)."""
    g = net.g
    centred = g.sub(x, g.op("ReduceMean", x, g.const([2, 3], "int64"), keepdims=1))
    energy = g.op("ReduceMean", g.mul(centred, centred), g.const([2, 3], "int64"), keepdims=1)
    return g.mul(centred, g.op("Reciprocal", g.op("Sqrt", g.add(energy, g.const(1e-8)))))


def _apply_style(net: Net, x: str, latent: str, channels: int) -> str:
    g = net.g
    style = g.op("Reshape", net.linear(latent, LATENT, 2 * channels, gain=0.5),
                 g.const([-1, 2, channels, 1, 1], "int64"))
    gamma = g.op("Squeeze", g.op("Slice", style, g.const([0], "int64"), g.const([1], "int64"),
                                 g.const([1], "int64")), g.const([1], "int64"))
    beta = g.op("Squeeze", g.op("Slice", style, g.const([1], "int64"), g.const([2], "int64"),
                                g.const([1], "int64")), g.const([1], "int64"))
    return g.add(g.mul(x, g.add(gamma, g.const(1.0))), beta)


def _adain_block(net: Net, x: str, latent: str, channels: int) -> str:
    y = _instance_norm(net, net.conv(net.reflect_pad(x, 1), channels, channels, 3, pad=0))
    y = net.relu(_apply_style(net, y, latent, channels))
    y = _instance_norm(net, net.conv(net.reflect_pad(y, 1), channels, channels, 3, pad=0))
    y = _apply_style(net, y, latent, channels)
    return net.g.add(x, net.g.mul(y, net.g.const(0.3)))  # the residual's scale keeps 9 untrained blocks finite


def build(entry, width: float = 1.0, seed: int = 1) -> onnx.ModelProto:
    net = Net("simswap_cost_true", seed, width)
    g = net.g
    target_spec = next(spec for spec in entry.inputs if len(spec.shape) == 4)
    source_spec = next(spec for spec in entry.inputs if len(spec.shape) == 2)
    x = g.input(target_spec.name, "float32", _dims(target_spec.shape))
    latent = g.input(source_spec.name, "float32", _dims(source_spec.shape))
    c64, c128, c256, c512 = (net.ch(c) for c in (64, 128, 256, 512))
    x = net.relu(net.conv(net.reflect_pad(x, 3), 3, c64, 7, pad=0))
    x = net.relu(net.conv(x, c64, c128, 3, 2))
    x = net.relu(net.conv(x, c128, c256, 3, 2))
    x = net.relu(net.conv(x, c256, c512, 3, 2))
    for _ in range(BLOCKS):
        x = _adain_block(net, x, latent, c512)
    for cin, cout in ((c512, c256), (c256, c128), (c128, c64)):
        x = net.relu(net.conv(net.resize(x, 2.0), cin, cout, 3))
    x = net.conv(net.reflect_pad(x, 3), c64, 3, 7, pad=0, gain=1.0)
    y = g.mul(g.add(g.op("Tanh", x), g.const(1.0)), g.const(0.5))
    out = entry.outputs[0]
    g.output(y, out.name, "float32", _dims(out.shape))
    return g.model("cost-true SimSwap-256 generator: published architecture, generated weights")
