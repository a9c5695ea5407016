"""``swapstream serve`` as a child process on a free port: started, waited for, stopped (benchmarks and tests)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from swapstream.services.triton.server import free_port


class ServiceProcess:
    def __init__(self, data: Path, *args: str, env: dict | None = None):
        self.data = data
        self.args = list(args)
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = data.parent / f"{data.name}-service-{self.port}.log"

    def start(self, timeout: float = 120.0) -> "ServiceProcess":
        command = [sys.executable, "-m", "swapstream.services.cli", "serve", "--port", str(self.port), "--data", str(self.data),
                   *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"swapstream serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"swapstream serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when the machine or the OOM killer ends it."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(client: httpx.Client, job_id: str, states: set[str], timeout: float = 240.0, **conditions) -> dict:
    """Polls a job until its state is in ``states`` (and each ``conditions`` key has a truthy test)."""
    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("state") in states and all(test(job[key]) for key, test in conditions.items()):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")
