"""One real tritonserver per test session, on free ports, serving the runtime repository (real YuNet, stand-ins)."""
from __future__ import annotations

from pathlib import Path

import pytest

from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.repository import build_repository
from swapstream.services.triton.server import EmbeddedTriton
from tests.helpers.media import MEDIA, SHARED, YUNET_REFERENCE


def pytest_sessionstart(session):
    if not (MEDIA.is_dir() and YUNET_REFERENCE.is_file()):
        raise pytest.UsageError(f"shared media and models not found at {SHARED}: put ../shared beside the "
                                "checkout or set SWAPSTREAM_SHARED")


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
