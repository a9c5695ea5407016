"""The embedded server's whole process tree and its shared memory go when the server goes, however it goes
(issue 10, item 7): tritonserver killed with SIGKILL mid-call, and the process that owns it killed with SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from swapstream.services.triton.client import SwapstreamClient, TritonCallError
from swapstream.services.triton.server import EmbeddedTriton
from tests.helpers import processes

STUB = "triton_python_backend_stub"


def _stubs_and_regions(root: int) -> tuple[list[int], set[str]]:
    """The stub processes under ``root`` and the /dev/shm regions they were given (their third argument)."""
    stubs, regions = [], set()
    for pid in processes.descendants(root):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if args and args[0].endswith(STUB.encode()):
            stubs.append(pid)
            regions.add(args[2].decode())
    return stubs, regions


def _busy(url: str, stop: threading.Event) -> None:
    """Keeps the swap ensemble's stubs working, as a job does, until the server dies."""
    client = SwapstreamClient(url, timeout=30)
    while not stop.is_set():
        try:
            client.swap(np.zeros((4, 512, 512, 3), np.uint8), np.full(512, 512 ** -0.5, np.float32))
        except TritonCallError:
            return


def _wait_gone(pids: list[int], regions: set[str], timeout: float = 30.0) -> tuple[list[int], list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if processes.alive(pid)]
        left = [name for name in regions if (Path("/dev/shm") / name).exists()]
        if not alive and not left:
            break
        time.sleep(0.2)
    return alive, left


def test_sigkill_of_a_busy_server_leaves_no_stub_and_no_shared_memory(triton_repository):
    server = EmbeddedTriton(triton_repository).start()
    stop = threading.Event()
    try:
        stubs, regions = _stubs_and_regions(server.process.pid)
        assert stubs and regions and all(name.startswith(server.shm_prefix) for name in regions)
        load = threading.Thread(target=_busy, args=(server.grpc_url, stop))
        load.start()
        time.sleep(1.0)
        os.kill(server.server_pid, signal.SIGKILL)
        server.process.wait(60)  # the reaper ends with its server
        alive, left = _wait_gone(stubs, regions)
        assert alive == [], f"stubs outlived their server: {alive}"
        assert left == [], f"shared memory regions left: {left}"
        assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*")) == []
        stop.set()
        load.join(60)
    finally:
        stop.set()
        server.stop()


def test_sigkill_of_the_owner_leaves_no_server_stub_or_shared_memory(tmp_path):
    command = [sys.executable, "-m", "swapstream.services.cli", "triton", "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0"]
    owner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    try:
        lines = []
        while not any(line.startswith("Triton ready") for line in lines):
            line = owner.stdout.readline()
            assert line, "swapstream triton exited early:\n" + "".join(lines)
            lines.append(line)
        grpc_url = next(line.split()[1] for line in iter(owner.stdout.readline, "") if line.strip().startswith("gRPC"))
        tree = processes.descendants(owner.pid)
        stubs, regions = _stubs_and_regions(owner.pid)
        assert stubs and regions
        load = threading.Thread(target=_busy, args=(grpc_url, stop))
        load.start()
        time.sleep(1.0)
        owner.kill()
        owner.wait(10)
        alive, left = _wait_gone(tree, regions)
        assert alive == [], f"processes of the server's tree outlived their owner: {alive}"
        assert left == [], f"shared memory regions left: {left}"
        stop.set()
        load.join(60)
    finally:
        stop.set()
        if owner.poll() is None:
            owner.kill()
            owner.wait()
