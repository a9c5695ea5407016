"""BiSeNet face parsing with a ResNet-34 backbone (yakhyo/face-parsing, after face-parsing.PyTorch), cost-true.

Backbone: torchvision's ResNet-34 without its classifier (7x7 stride-2 stem, max pool, 3/4/6/3 basic blocks at
64/128/256/512 channels; batch norms folded). Context path: attention refinement modules on the 1/32 and 1/16
features (3x3 conv-BN-ReLU, then a global-pool 1x1 conv-BN-sigmoid attention), the global context of the 1/32
map added, each upsampled (nearest) and passed through a 3x3 conv head. Feature fusion: the 1/8 spatial
feature and the context feature concatenated, 1x1 conv-BN-ReLU, squeeze-excite style attention (1x1 to 1/4
channels, ReLU, 1x1, sigmoid), ``x * a + x``. Output: 3x3 conv-BN-ReLU, 1x1 conv to 19 classes, bilinear
upsample (align corners) to the input size. The two auxiliary heads the training graph has (1/16, 1/32) are
left out: the swap ensemble reads only the main output.
"""
from __future__ import annotations

import onnx

from swapstream.services.triton.costtrue.nn import Net
from swapstream.services.triton.standins import _dims

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))
CLASSES = 19


def _basic_block(net: Net, x: str, cin: int, cout: int, stride: int) -> str:
    y = net.relu(net.conv(x, cin, cout, 3, stride))
    y = net.conv(y, cout, cout, 3, gain=0.3)
    shortcut = x if stride == 1 and cin == cout else net.conv(x, cin, cout, 1, stride, bias=True, gain=1.0)
    return net.relu(net.g.add(y, shortcut))


def _global_pool(net: Net, x: str) -> str:
    return net.g.op("GlobalAveragePool", x)


def _attention_refinement(net: Net, x: str, cin: int, cout: int) -> str:
    feat = net.relu(net.conv(x, cin, cout, 3))
    attention = net.g.op("Sigmoid", net.conv(_global_pool(net, feat), cout, cout, 1, gain=1.0))
    return net.g.mul(feat, attention)


def build(entry, width: float = 1.0, seed: int = 4) -> onnx.ModelProto:
    net = Net("bisenet_cost_true", seed, width)
    g = net.g
    spec = entry.inputs[0]
    shape = _dims(spec.shape)
    image = g.input(spec.name, "float32", shape)
    cin = net.ch(64)
    x = g.op("MaxPool", net.relu(net.conv(image, 3, cin, 7, 2)), kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    features = []
    for stage, (channels, blocks) in enumerate(STAGES):
        cout = net.ch(channels)
        for index in range(blocks):
            x = _basic_block(net, x, cin, cout, 2 if index == 0 and stage > 0 else 1)
            cin = cout
        features.append((x, cout))
    (feat8, c8), (feat16, c16), (feat32, c32) = features[1:]
    c128 = net.ch(128)
    context = net.relu(net.conv(_global_pool(net, feat32), c32, c128, 1))
    up32 = net.resize(g.add(_attention_refinement(net, feat32, c32, c128), context), 2.0, mode="nearest")
    up32 = net.relu(net.conv(up32, c128, c128, 3))
    up16 = net.resize(g.add(_attention_refinement(net, feat16, c16, c128), up32), 2.0, mode="nearest")
    up16 = net.relu(net.conv(up16, c128, c128, 3))
    c256 = net.ch(256)
    fused = net.relu(net.conv(g.op("Concat", feat8, up16, axis=1), c8 + c128, c256, 1))
    attention = net.relu(net.conv(_global_pool(net, fused), c256, c256 // 4, 1, bias=False))
    attention = g.op("Sigmoid", net.conv(attention, c256 // 4, c256, 1, bias=False, gain=1.0))
    fused = g.add(g.mul(fused, attention), fused)
    logits = net.conv(net.relu(net.conv(fused, c256, c256, 3)), c256, CLASSES, 1, bias=False, gain=1.0)
    scores = net.resize_to(logits, shape[-1])
    out = entry.outputs[0]
    g.output(scores, out.name, "float32", _dims(out.shape))
    return g.model("cost-true BiSeNet (ResNet-34): published architecture, generated weights")
