"""The embedded Triton Inference Server: the real ``tritonserver`` binary shipped in nvidia-pytriton.

``EmbeddedTriton`` prepares a backend folder (the Python backend with the stub built for the running
interpreter, and our Python-based ``onnxruntime`` backend), starts the server on a model repository,
waits until every model is ready and stops it cleanly. It is the one launcher that the CLI, the
services and the tests use.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from swapstream.services.triton import reaper

BACKEND_SOURCES = Path(__file__).resolve().parent / "backends"
# The Python backend keeps each tensor in shared memory; the default 1 MiB region, grown 1 MiB at a
# time, is far too small for batches of 512x512 faces.
SHM_BYTES = 64 * 1024 * 1024
CALL_SECONDS = 5.0  # deadline of the launcher's own health calls


class TritonStartError(RuntimeError):
    """The server did not become ready; the message carries the reason from the server log."""


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _wheel_paths() -> tuple[Path, Path, Path]:
    # Only the wheel's files are used: importing pytriton itself costs seconds (its client pulls in aiohttp).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonStartError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0")
    package = Path(spec.origin).resolve().parent
    root = package / "tritonserver"
    libs = package.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonStartError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    return root, libs, stub


def prepare_backends(directory: Path) -> Path:
    """Write ``python/`` (backend + stub for this interpreter) and ``onnxruntime/`` into ``directory``."""
    root, _, stub = _wheel_paths()
    python_dir = directory / "python"
    shutil.copytree(root / "backends" / "python", python_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    for backend in BACKEND_SOURCES.iterdir():
        if (backend / "model.py").exists():
            shutil.copytree(backend, directory / backend.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
    return directory


def _server_env() -> dict[str, str]:
    _, libs, _ = _wheel_paths()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [sysconfig.get_paths()["purelib"], env.get("PYTHONPATH")]))
    # The stub embeds libpython and finds its prefix (and so site-packages) from the python on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


_LOAD_FAILURE = re.compile(r"failed to load '([^']+)'[^:]*: (.*)")


def load_failures(log: str) -> dict[str, str]:
    """Model name -> reason, from the lines where Triton reports a failed model load."""
    return {m.group(1): m.group(2).strip() for m in _LOAD_FAILURE.finditer(log)}


class EmbeddedTriton:
    """Runs ``tritonserver`` on ``repository`` until ``stop()`` (or the end of a ``with`` block).

    ``process`` is the server's reaper (``swapstream.services.triton.reaper``): it exits when the server does, and
    takes the server's stubs and ``/dev/shm`` regions with it however the server ends. The kernel sends the reaper
    SIGTERM when the thread that called ``start()`` ends (PR_SET_PDEATHSIG), so that thread must live as long as
    the server is wanted.
    """

    def __init__(self, repository: Path, *, address: str = "127.0.0.1", ports: Ports | None = None,
                 log_verbose: int = 0, startup_timeout: float = 120.0, stop_grace: float = 20.0):
        self.repository = Path(repository)
        self.address = address
        self.ports = ports or Ports(free_port(address), free_port(address), free_port(address))
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.shm_prefix = ""  # unique per start: the python backend names its /dev/shm regions with it
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self.log_path: Path | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.ports.metrics}/metrics"

    def command(self, backend_dir: Path) -> list[str]:
        root, _, _ = _wheel_paths()
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.address}", f"--http-port={self.ports.http}",
            f"--grpc-address={self.address}", f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.address}", f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_BYTES}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            "--exit-on-error=true", "--strict-readiness=true",
            # Every config is complete. With auto-complete on, the Python backend starts one extra stub per model
            # (importing numpy and onnxruntime) only to ask for a config: 12 of the 24 stubs, 10 s of a 2-core start.
            "--disable-auto-complete-config",
        ]

    def start(self) -> "EmbeddedTriton":
        self._workdir = tempfile.TemporaryDirectory(prefix="swapstream-triton-")
        workdir = Path(self._workdir.name)
        backend_dir = prepare_backends(workdir / "backends")
        self.log_path = workdir / "tritonserver.log"
        self.shm_prefix = f"swapstream_{uuid.uuid4().hex[:12]}_"
        owner = [sys.executable, "-m", reaper.__name__, "--shm-prefix", self.shm_prefix,
                 "--grace", str(self.stop_grace), "--parent", str(os.getpid()), "--"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(owner + self.command(backend_dir), env=_server_env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(self._failure_message(f"tritonserver exited with code {self.process.returncode}"))
            # Triton listens only once its models are loaded. A gRPC call to a port not yet listening puts the
            # channel into reconnect backoff (1 s, 1.6 s, 2.6 s ...): readiness was seen up to 7 s late. So the
            # port is tried with a plain socket first, and gRPC asked only when it accepts. The metrics port opens a
            # moment after gRPC: ready means both, so that a scrape right after start is answered.
            if _accepts(self.address, self.ports.grpc) and _accepts(self.address, self.ports.metrics):
                try:
                    if client.is_server_ready(client_timeout=CALL_SECONDS):
                        return
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            time.sleep(0.05)
        raise TritonStartError(self._failure_message(f"tritonserver not ready after {self.startup_timeout:.0f} s"))

    def _failure_message(self, headline: str) -> str:
        log = self.log()
        failures = load_failures(log)
        if failures:
            lines = "\n".join(f"  model '{name}': {reason}" for name, reason in failures.items())
            return f"{headline}; models that failed to load:\n{lines}"
        tail = "\n".join(log.splitlines()[-30:])
        return f"{headline}. Last lines of the server log ({self.log_path}):\n{tail}"

    @property
    def server_pid(self) -> int | None:
        """The ``tritonserver`` process (the reaper's child), while it runs."""
        if not self.process:
            return None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except FileNotFoundError:
            return None
        return int(children[0]) if children else None

    def is_live(self, timeout: float = CALL_SECONDS) -> bool:
        """The server answers a liveness call within ``timeout`` seconds (False when it is frozen or gone)."""
        import tritonclient.grpc as grpcclient

        try:
            with grpcclient.InferenceServerClient(self.grpc_url) as client:
                return bool(client.is_server_live(client_timeout=timeout))
        except Exception:  # noqa: BLE001 - unreachable, deadline exceeded: not live
            return False

    def stop(self) -> None:
        """SIGTERM to the reaper: the server is stopped (SIGKILL after ``stop_grace`` s), its tree and regions removed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_grace + 15)
            except subprocess.TimeoutExpired:  # the reaper itself is stuck: end the server's group, then it
                server = self.server_pid
                if server:
                    reaper.kill_group(server)
                self.process.kill()
                self.process.wait()
        if self.shm_prefix:
            reaper.remove_regions(self.shm_prefix)
        if self._workdir:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "EmbeddedTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
