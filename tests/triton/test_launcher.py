"""The launcher: a model that fails to load is named with its reason; ``swapstream triton`` runs in the
foreground, prints its endpoints and model table, and stops cleanly on SIGTERM."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.server import EmbeddedTriton, TritonStartError


def test_load_failure_names_the_model_and_reason(triton_repository, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(triton_repository / "identity_postprocess", broken / "identity_postprocess")
    (broken / "identity_postprocess" / "1" / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(TritonStartError) as error:
        EmbeddedTriton(broken, startup_timeout=60).start()
    message = str(error.value)
    assert "model 'identity_postprocess'" in message
    assert "Protobuf parsing failed" in message or "INVALID_PROTOBUF" in message or "Load model" in message


def test_cli_serves_until_sigterm(tmp_path):
    command = [sys.executable, "-m", "swapstream.services.cli", "triton", "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "swapstream triton exited early:\n" + "".join(lines)
            lines.append(line)
            if line.strip().startswith("yunet"):
                break
        output = "".join(lines)
        grpc_url = next(line.split()[1] for line in lines if line.strip().startswith("gRPC"))
        assert grpc_url.startswith("127.0.0.1:")
        assert "stand-in" in output and "real" in output
        assert len(SwapstreamClient(grpc_url).detect(np.zeros((1, 64, 64, 3), np.uint8))) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_tritonserver_dies_with_a_killed_parent(tmp_path):
    """A service killed with SIGKILL must not leave its embedded tritonserver holding ports and memory."""
    command = [sys.executable, "-m", "swapstream.services.cli", "triton", "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any(line.startswith("Triton ready") for line in lines):
            line = process.stdout.readline()
            assert line, "swapstream triton exited early:\n" + "".join(lines)
            lines.append(line)
        reapers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        server_pids = subprocess.run(["pgrep", "-P", ",".join(reapers), "tritonserver"], capture_output=True,
                                     text=True).stdout.split()  # tritonserver runs under its reaper
        assert len(server_pids) == 1
        process.kill()
        process.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(int(server_pids[0])):
            time.sleep(0.2)
        assert not _alive(int(server_pids[0])), "tritonserver outlived its killed parent"
    finally:
        if process.poll() is None:
            process.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
