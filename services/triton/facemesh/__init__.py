"""MediaPipe's Face Mesh network in Triton: the TFLite file from its wheel, converted to ONNX by our own
converter (``convert``), found, verified and cached (``source``), served as ``facemesh`` on FFHQ-512 crops
(``served``)."""
from __future__ import annotations

from pathlib import Path

import onnx

from swapstream.services.triton.facemesh import served, source
from swapstream.services.triton.facemesh.source import FaceMeshUnavailable

__all__ = ["FaceMeshUnavailable", "build"]


def build(models_dir: Path | None = None) -> tuple[onnx.ModelProto, str]:
    """The served ``facemesh`` graph and where its network came from (converted now, or the cached conversion)."""
    network, how = source.network(models_dir)
    return served.model(network), how
