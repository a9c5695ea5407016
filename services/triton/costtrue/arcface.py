"""SimSwap's ArcFace, cost-true: a ResNet-50 IR (insightface's ``iresnet50`` layout) at 112x112 -> 512.

Stem: 3x3 conv to 64 channels, PReLU. Four stages of improved residual blocks (3, 4, 14, 3 blocks at 64, 128,
256, 512 channels; the first block of each stage has stride 2 and a 1x1 projection shortcut); a block is
BN, 3x3 conv, PReLU, 3x3 conv (stride), BN folded, plus the shortcut. Head: BN, flatten of the 512x7x7 map,
a 25088 -> 512 linear layer, BN: the raw 512-d embedding (the caller L2-normalises it). The flatten is
``Reshape [1, -1]`` as a fixed-batch export writes it: the repository's batching step has work to do.
"""
from __future__ import annotations

import onnx

from swapstream.services.triton.costtrue.nn import Net
from swapstream.services.triton.standins import _dims

STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))
EMBEDDING = 512


def _block(net: Net, x: str, cin: int, cout: int, stride: int) -> str:
    y = net.conv(net.batch_norm(x, cin), cin, cout, 3)
    y = net.conv(net.prelu(y, cout), cout, cout, 3, stride, gain=0.3)  # a small residual keeps 24 blocks finite
    shortcut = x if stride == 1 and cin == cout else net.conv(x, cin, cout, 1, stride, gain=1.0)
    return net.g.add(y, shortcut)


def build(entry, width: float = 1.0, seed: int = 2) -> onnx.ModelProto:
    net = Net("arcface_cost_true", seed, width)
    g = net.g
    spec = entry.inputs[0]
    shape = _dims(spec.shape)
    x = g.input(spec.name, "float32", shape)
    cin = net.ch(64)
    x = net.prelu(net.conv(x, 3, cin, 3), cin)
    for channels, blocks in STAGES:
        cout = net.ch(channels)
        for index in range(blocks):
            x = _block(net, x, cin, cout, 2 if index == 0 else 1)
            cin = cout
    x = net.batch_norm(x, cin)
    x = g.op("Reshape", x, g.const([shape[0] if shape[0] != "K" else -1, -1], "int64"))
    spatial = (shape[2] // 16) ** 2
    embedding = net.linear(x, cin * spatial, EMBEDDING)
    embedding = g.op("Squeeze", net.batch_norm(g.op("Unsqueeze", embedding, g.const([2], "int64")), EMBEDDING),
                     g.const([2], "int64"))
    out = entry.outputs[0]
    g.output(embedding, out.name, "float32", _dims(out.shape))
    return g.model("cost-true ArcFace (ResNet-50 IR): published architecture, generated weights")
