"""Issue 18, item 11: SIGKILL of the reaper takes its ``tritonserver`` with it (the kernel's parent-death signal),
and the service's supervisor (``TritonSupervisor``, as ``swapstream serve`` runs it) starts a new server on the same
ports, which answers. The embedded server runs the session's repository (a ``serve`` would build its own first)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from swapstream.services.jobs.serve import TritonSupervisor
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.server import EmbeddedTriton
from tests.helpers import processes


def test_sigkill_of_the_reaper_takes_its_server_and_the_supervisor_restarts_it(triton_repository):
    server = EmbeddedTriton(triton_repository).start()
    supervisor = TritonSupervisor(server, interval=0.5, unresponsive_after=5)
    supervisor.start()
    try:
        reaper, tree = server.process.pid, processes.descendants(server.process.pid)
        assert server.server_pid in tree
        os.kill(reaper, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(processes.alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in tree if processes.alive(pid)]
        assert left == [], f"the server's processes outlived their reaper: {left}"
        deadline = time.monotonic() + 180
        while supervisor.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert supervisor.restarts >= 1 and server.process.pid != reaper, "the server was not started again"
        found = SwapstreamClient(server.grpc_url).detect(np.zeros((1, 64, 64, 3), np.uint8))
        assert len(found.boxes) == 0  # the new server answers on the same address
    finally:
        supervisor.stopping.set()
        supervisor.join(30)
        server.stop()
