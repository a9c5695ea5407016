"""One real tritonserver per test session, on free ports, serving the runtime repository (real YuNet, stand-ins)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.repository import build_repository, shared_dir
from services.triton_client import SwapstreamClient
from services.triton_server import EmbeddedTriton

SHARED = shared_dir()
MEDIA = SHARED / "media"
YUNET_REFERENCE = SHARED / "models" / "face_detection_yunet_2023mar.onnx"


def pytest_sessionstart(session):
    if not (MEDIA.is_dir() and YUNET_REFERENCE.is_file()):
        raise pytest.UsageError(f"shared media and models not found at {SHARED}: put ../shared beside the "
                                "checkout or set SWAPSTREAM_SHARED")


def read_rgb(name: str) -> np.ndarray:
    image = cv2.imread(str(MEDIA / name), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {name}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repository")
    # Only the shared folder: a developer's fetched real models must not change what the tests see.
    build_repository(out, [SHARED / "models"])
    return out


@pytest.fixture(scope="session")
def triton(triton_repository):
    with EmbeddedTriton(triton_repository) as server:
        yield server


@pytest.fixture(scope="session")
def client(triton) -> SwapstreamClient:
    return SwapstreamClient(triton.grpc_url)
