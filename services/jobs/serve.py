"""``swapstream serve``: the ingestion service with its embedded Triton (or a running one)."""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
from contextlib import ExitStack
from pathlib import Path

from swapstream.pipelines.align import require_device
from swapstream.services.triton import repository
from swapstream.services.jobs.api import Service, ServiceConfig, create_app
from swapstream.services.triton.server import EmbeddedTriton

log = logging.getLogger("swapstream.serve")


class ServeError(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TritonSupervisor(threading.Thread):
    """Restarts the embedded tritonserver on its same ports when it dies; jobs it failed are retried.

    This thread starts every restarted server and lives as long as the service: the kernel ends a
    server when the thread that started it ends (see ``EmbeddedTriton``).
    """

    def __init__(self, server: EmbeddedTriton, interval: float = 1.0):
        super().__init__(name="triton-supervisor", daemon=True)
        self.server = server
        self.interval = interval
        self.restarts = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            if self.server.process.poll() is None:
                continue
            log.error("tritonserver exited with code %s; restarting it", self.server.process.returncode)
            try:
                self.server.stop()
                self.server.start()
                self.restarts += 1
                log.warning("tritonserver restarted (%d restarts)", self.restarts)
            except Exception:  # noqa: BLE001 - keep trying; /readyz reports Triton down meanwhile
                log.exception("restarting tritonserver failed; trying again")


def serve(config: ServiceConfig, host: str, port: int, weight_dirs: list[Path] | None = None) -> None:
    """Runs until SIGINT/SIGTERM. ``config.triton_url`` empty: an embedded Triton is started and supervised."""
    import uvicorn

    require_device(config.device)  # before anything starts: no GPU is a clear error, not a failed start-up
    if not is_loopback(host) and not config.token:
        raise ServeError(f"refusing to listen on {host} without a bearer token: anyone on the network could "
                         "submit jobs. Set SWAPSTREAM_TOKEN (or --token), or listen on 127.0.0.1")
    with ExitStack() as stack:
        if not config.triton_url:
            server, _ = stack.enter_context(repository.embedded_triton(weight_dirs))
            supervisor = TritonSupervisor(server)
            supervisor.start()
            stack.callback(supervisor.stopping.set)  # runs before the server is stopped
            config.triton_url = server.grpc_url
        app = create_app(Service(config))
        print(f"swapstream serving on http://{host}:{port} (API docs at /docs; Triton at {config.triton_url})",
              flush=True)

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:
                app.state.job_feed.close()  # uvicorn waits for open responses: the event streams end first
                super().handle_exit(sig, frame)

        Server(uvicorn.Config(app, host=host, port=port,
                              log_level=os.environ.get("SWAPSTREAM_LOG_LEVEL", "warning"))).run()
