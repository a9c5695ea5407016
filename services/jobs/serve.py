"""``swapstream serve``: the ingestion service with its embedded Triton (or a running one)."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from swapstream.pipelines.align import require_device
from swapstream.services.jobs.service import Service, ServiceConfig
from swapstream.services.triton import repository
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
    """Restarts the embedded tritonserver on its same ports when it dies or stops answering (frozen, hung):
    silent for ``unresponsive_after`` seconds of liveness calls. Jobs it failed are retried.

    This thread starts every restarted server and lives as long as the service: the kernel ends a
    server when the thread that started it ends (see ``EmbeddedTriton``).
    """

    def __init__(self, server: EmbeddedTriton, interval: float = 1.0, unresponsive_after: float = 30.0):
        super().__init__(name="triton-supervisor", daemon=True)
        self.server = server
        self.interval = interval
        self.unresponsive_after = unresponsive_after
        self.restarts = 0
        self.stopping = threading.Event()

    def _why_restart(self, silent_since: list[float]) -> str | None:
        if self.server.process.poll() is not None:
            return f"tritonserver exited with code {self.server.process.returncode}"
        if self.server.is_live(timeout=min(5.0, self.unresponsive_after)):
            silent_since.clear()
            return None
        if not silent_since:
            silent_since.append(time.monotonic())
        silent = time.monotonic() - silent_since[0]
        return f"tritonserver has not answered for {silent:.0f} s" if silent >= self.unresponsive_after else None

    def run(self) -> None:
        silent_since: list[float] = []
        while not self.stopping.wait(self.interval):
            reason = self._why_restart(silent_since)
            if reason is None or self.stopping.is_set():
                continue
            log.error("%s; restarting it", reason)
            silent_since.clear()
            try:
                self.server.stop()
                self.server.start()
                self.restarts += 1
                log.warning("tritonserver restarted (%d restarts)", self.restarts)
            except Exception:  # noqa: BLE001 - keep trying; /readyz reports Triton down meanwhile
                log.exception("restarting tritonserver failed; trying again")


def drain(service: Service, live, loop: asyncio.AbstractEventLoop, timeout: float) -> int:
    """A replica leaving (SIGTERM: a rolling update, a scale-down): readiness answers 503 first, no job is claimed
    and no stream accepted any more, the open live streams are closed with 1012 and a reason that says to reconnect
    (the clients come back through another replica with a new ticket), and the running jobs get ``timeout`` seconds
    to finish before they go back to the queue without spending an attempt. Returns the jobs re-queued."""
    started = time.monotonic()
    service.draining = True
    live.draining = True
    streams = len(live.sessions)
    loop.call_soon_threadsafe(live.close_all)
    running = service.pool.busy() if service.pool else 0
    requeued = service.pool.drain(timeout) if service.pool else 0
    log.warning("drained in %.1f s: %d live streams closed (1012, reconnect), %d running jobs, %d finished, "
                "%d re-queued", time.monotonic() - started, streams, running, running - requeued, requeued)
    return requeued


def serve(config: ServiceConfig, host: str, port: int, weight_dirs: list[Path] | None = None,
          triton_unresponsive_after: float = 30.0, drain_timeout: float = 0.0, *,
          create_app: Callable) -> None:
    """Runs until SIGINT/SIGTERM. ``config.triton_url`` empty: an embedded Triton is started and supervised.

    Both signals stop it cleanly: uvicorn shuts down, then re-raises the signal it caught; SIGTERM is mapped to
    KeyboardInterrupt like SIGINT, so that it unwinds through the clean-up here (Triton stopped with its
    stubs and shared memory, temporary folders removed) instead of killing the process on the spot.
    ``create_app(service)``: the HTTP app (``swapstream.services.http.app``, a room above this one).
    With ``drain_timeout`` > 0, SIGTERM first drains the replica (``drain``); a second signal stops it at once."""
    import uvicorn

    require_device(config.device)  # before anything starts: no GPU is a clear error, not a failed start-up
    if not is_loopback(host) and not config.token:
        raise ServeError(f"refusing to listen on {host} without a bearer token: anyone on the network could "
                         "submit jobs. Set SWAPSTREAM_TOKEN (or --token), or listen on 127.0.0.1")
    with ExitStack() as stack:
        if not config.triton_url:
            server, _ = stack.enter_context(repository.embedded_triton(weight_dirs))
            supervisor = TritonSupervisor(server, unresponsive_after=triton_unresponsive_after)
            supervisor.start()
            stack.callback(supervisor.stopping.set)  # runs before the server is stopped
            config.triton_url = server.grpc_url
        service = Service(config)
        app = create_app(service)
        print(f"swapstream serving on http://{host}:{port} (API docs at /docs; Triton at {config.triton_url})\n"
              f"default {service.swapper.reason}", flush=True)

        class Server(uvicorn.Server):
            draining = False

            def handle_exit(self, sig, frame) -> None:
                if sig == signal.SIGTERM and drain_timeout > 0 and not self.draining:
                    self.draining = True
                    loop = asyncio.get_running_loop()
                    threading.Thread(target=self._drain_then_exit, args=(sig, frame, loop), name="drain",
                                     daemon=True).start()
                    return
                app.state.job_feed.close()  # uvicorn waits for open responses: the event streams end first
                app.state.live.close_all()  # 1012 with a reason that says to reconnect (uvicorn's has none)
                super().handle_exit(sig, frame)

            def _drain_then_exit(self, sig, frame, loop) -> None:
                try:
                    drain(service, app.state.live, loop, drain_timeout)
                except Exception:  # noqa: BLE001 - stop anyway
                    log.exception("draining failed; stopping now")
                finally:
                    loop.call_soon_threadsafe(self.handle_exit, sig, frame)

        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            Server(uvicorn.Config(app, host=host, port=port,
                                  log_level=os.environ.get("SWAPSTREAM_LOG_LEVEL", "warning"))).run()
        except KeyboardInterrupt:
            print("swapstream stopped", flush=True)
