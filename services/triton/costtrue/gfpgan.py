"""GFPGAN v1.4 (``GFPGANv1Clean``: 512 px, 512-d styles, channel multiplier 2, ``sft_half``), cost-true.

U-Net: 1x1 conv to 32 channels, seven down ResBlocks (conv, bilinear /2, conv, plus a 1x1 skip) to 256
channels at 4x4, a 3x3 conv; a linear layer from the 4x4x256 map to 16 styles of 512 (``different_w``); seven
up ResBlocks back to 32 channels at 512 with the encoder's features added, each level giving an SFT scale and
shift (two 3x3 convs each). Decoder: StyleGAN2 (``StyleGAN2GeneratorClean``) from a learned 4x4x512 constant,
two modulated 3x3 convolutions per resolution (8 .. 512 px; 512 channels up to 64 px, then 256, 128, 64), each
modulated by a style (a linear layer, bias 1), demodulated, scaled by sqrt(2), plus its noise (a fixed
buffer per layer, as an export with ``randomize_noise=False`` holds) and bias, leaky ReLU; the SFT conditions
scale and shift half of the channels after the first conv of each resolution; a modulated 1x1 to-RGB layer
per resolution (not demodulated) accumulates the image, upsampled bilinearly. The style MLP is not part of
the graph (GFPGAN feeds its styles as latents) and neither are the U-Net's to-RGB heads (training only).

The modulated convolutions are written as the PyTorch export writes them: the per-sample weights
``W * style`` reshaped to ``[B*out, in, k, k]``, the activations to ``[1, B*in, H, W]``, one grouped
convolution with ``group = B``, so the batch (1) is frozen into the graph. ``services/triton/batching.py``
rewrites that form into one that batches.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from swapstream.services.triton.costtrue.nn import Net
from swapstream.services.triton.standins import _dims

STYLE = 512
LOG_SIZE = 9  # 512 px
UNET = {4: 256, 8: 256, 16: 256, 32: 256, 64: 256, 128: 128, 256: 64, 512: 32}
DECODER = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
NOISE_STRENGTH = 0.05


class _Gfpgan:
    def __init__(self, net: Net):
        self.net, self.g = net, net.g

    def res_block(self, x: str, cin: int, cout: int, scale: float) -> str:
        net = self.net
        y = net.resize(net.lrelu(net.conv(x, cin, cin, 3)), scale)
        y = net.lrelu(net.conv(y, cin, cout, 3, gain=1.0))
        skip = net.conv(net.resize(x, scale), cin, cout, 1, bias=False, gain=1.0)
        return self.g.mul(self.g.add(y, skip), self.g.const(1 / math.sqrt(2)))

    def modulated_conv(self, x: str, style: str, cin: int, cout: int, k: int, size: int, demodulate: bool,
                       upsample: bool, gain: float = 1.0) -> str:
        net, g = self.net, self.g
        s = net.linear(style, STYLE, cin, bias_value=1.0)          # [B, in]
        weight = net.randn((cout, cin, k, k), gain / math.sqrt(cin * k * k))
        if upsample:
            x = net.resize(x, 2.0)
        w = g.mul(g.op("Unsqueeze", weight, g.const([0], "int64")),
                  g.op("Reshape", s, g.const([1, 1, cin, 1, 1], "int64")))  # [1, out, in, k, k]
        if demodulate:
            energy = g.op("ReduceSum", g.mul(w, w), g.const([2, 3, 4], "int64"), keepdims=1)
            w = g.mul(w, g.op("Reciprocal", g.op("Sqrt", g.add(energy, g.const(1e-8)))))
        w = g.op("Reshape", w, g.const([cout, cin, k, k], "int64"))
        x = g.op("Reshape", x, g.const([1, cin, size, size], "int64"))
        out = g.op("Conv", x, w, kernel_shape=[k, k], pads=[k // 2] * 4, group=1)
        return g.op("Reshape", out, g.const([1, cout, size, size], "int64"))

    def style_conv(self, x: str, style: str, cin: int, cout: int, size: int, upsample: bool) -> str:
        net, g = self.net, self.g
        out = g.mul(self.modulated_conv(x, style, cin, cout, 3, size, True, upsample), g.const(math.sqrt(2)))
        noise = g.const(net.rng.standard_normal((1, 1, size, size), dtype=np.float32), hint="noise")
        out = g.add(out, g.mul(noise, g.const(np.float32(NOISE_STRENGTH), hint="noise_weight")))
        return net.lrelu(g.add(out, net.zeros((1, cout, 1, 1))))

    def to_rgb(self, x: str, style: str, cin: int, size: int, skip: str | None) -> str:
        out = self.g.add(self.modulated_conv(x, style, cin, 3, 1, size, False, False, gain=0.1),
                         self.net.zeros((1, 3, 1, 1)))
        return out if skip is None else self.g.add(out, self.net.resize(skip, 2.0))


def build(entry, width: float = 1.0, seed: int = 3) -> onnx.ModelProto:
    net = Net("gfpgan_cost_true", seed, width)
    g = net.g
    m = _Gfpgan(net)
    unet = {size: net.ch(c) for size, c in UNET.items()}
    dec = {size: net.ch(c) for size, c in DECODER.items()}
    spec = entry.inputs[0]
    shape = _dims(spec.shape)
    x = g.input(spec.name, "float32", shape)

    feat = net.lrelu(net.conv(x, 3, unet[512], 1))
    skips = []
    for size in (512, 256, 128, 64, 32, 16, 8):
        feat = m.res_block(feat, unet[size], unet[size // 2], 0.5)
        skips.insert(0, feat)
    feat = net.lrelu(net.conv(feat, unet[4], unet[4], 3))
    styles = (LOG_SIZE * 2 - 2)
    latent = net.linear(g.op("Flatten", feat, axis=1), unet[4] * 16, styles * STYLE)
    latent = g.op("Reshape", latent, g.const([-1, styles, STYLE], "int64"))
    conditions = []
    for level, size in enumerate((8, 16, 32, 64, 128, 256, 512)):
        feat = m.res_block(g.add(feat, skips[level]), unet[size // 2], unet[size], 2.0)
        for _ in ("scale", "shift"):
            c = net.lrelu(net.conv(feat, unet[size], unet[size], 3))
            conditions.append(net.conv(c, unet[size], dec[size] // 2, 3, gain=0.5))

    def style(index: int) -> str:
        return g.op("Gather", latent, g.const(index, "int64"), axis=1)

    out = g.op("Expand", net.randn((1, dec[4], 4, 4), 1.0),
               g.op("Concat", g.dim(x, 0), g.const([1, 1, 1], "int64"), axis=0))
    out = m.style_conv(out, style(0), dec[4], dec[4], 4, False)
    skip = m.to_rgb(out, style(1), dec[4], 4, None)
    index = 1
    for level, size in enumerate((8, 16, 32, 64, 128, 256, 512)):
        out = m.style_conv(out, style(index), dec[size // 2], dec[size], size, True)
        same, sft = g.op("Split", out, g.const([dec[size] - dec[size] // 2, dec[size] // 2], "int64"), axis=1,
                         n_out=2)
        sft = g.add(g.mul(sft, conditions[2 * level]), conditions[2 * level + 1])
        out = g.op("Concat", same, sft, axis=1)
        out = m.style_conv(out, style(index + 1), dec[size], dec[size], size, False)
        skip = m.to_rgb(out, style(index + 2), dec[size], size, skip)
        index += 2
    result = entry.outputs[0]
    g.output(skip, result.name, "float32", _dims(result.shape))
    return g.model("cost-true GFPGAN v1.4 (GFPGANv1Clean): published architecture, generated weights")
