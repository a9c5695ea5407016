"""A real ``prometheus`` server for tests, configured from ``deploy/prometheus.yml``.

    with running_prometheus(service="127.0.0.1:8080", triton="127.0.0.1:8002") as prometheus:
        prometheus.wait_for_target("swapstream")
        series = prometheus.wait_for('swapstream_stage_seconds_count{stage="detect"} > 0')

Each keyword names a scrape job of ``deploy/prometheus.yml`` (``service`` is the job ``swapstream``);
only the jobs given are scraped, at ``scrape_interval``. Skips the test when Prometheus is not installed.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from swapstream.services.triton.server import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"


def find_binary(name: str) -> str:
    """``name`` on PATH or in /usr/bin (the Debian package); skips the test when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if not found:
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return found


def scrape_config(targets: dict[str, str], scrape_interval: str = "1s") -> dict:
    """``deploy/prometheus.yml`` scraping only the jobs in ``targets`` (job name -> host:port)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise ValueError(f"no scrape job {sorted(unknown)} in {PROMETHEUS_CONFIG} (jobs: {sorted(jobs)})")
    config["global"].update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    config["scrape_configs"] = [{**jobs[name], "static_configs": [{"targets": [target]}]}
                                for name, target in targets.items()]
    return config


class PrometheusServer:
    """One ``prometheus`` process on a free 127.0.0.1 port with its own storage, until ``stop()``."""

    def __init__(self, config: dict, startup_timeout: float = 30.0):
        self.config = config
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def log_path(self) -> Path:
        return Path(self._workdir.name) / "prometheus.log"

    def start(self) -> "PrometheusServer":
        binary = find_binary("prometheus")
        self._workdir = tempfile.TemporaryDirectory(prefix="swapstream-prometheus-")
        workdir = Path(self._workdir.name)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        command = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
                   f"--web.listen-address={self.url.removeprefix('http://')}"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self.process.returncode}:\n{self.log()}")
            try:
                if self._http.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {self.startup_timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self._workdir else ""

    def _api(self, path: str, **params) -> dict | list:
        response = self._http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus /api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr`` now: ``[{"metric": {labels}, "value": [time, "value"]}, ...]``."""
        data = self._api("query", query=expr)
        if data["resultType"] != "vector":
            raise ValueError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return data["result"]

    def targets(self) -> list[dict]:
        """The active scrape targets (``labels.job``, ``health`` "up"/"down"/"unknown", ``lastError``, ...)."""
        return self._api("targets", state="active")["activeTargets"]

    def _wait(self, ready, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            result = ready()
            if result:
                return result
            if time.monotonic() > deadline:
                states = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
                raise TimeoutError(f"{what} not seen within {timeout:.0f} s; targets: {states}")
            time.sleep(0.25)

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """The result of ``expr`` once it is not empty (a series exists, or a filter like ``> 0`` holds)."""
        return self._wait(lambda: self.query(expr), timeout, f"a series for {expr!r}")

    def wait_for_target(self, job: str, timeout: float = 30.0) -> dict:
        """The target of ``job`` once its last scrape succeeded."""
        def up():
            return next((t for t in self.targets() if t["labels"]["job"] == job and t["health"] == "up"), None)

        return self._wait(up, timeout, f"target {job!r} up")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._http.close()
        if self._workdir:
            self._workdir.cleanup()
            self._workdir = None


@contextmanager
def running_prometheus(*, service: str | None = None, triton: str | None = None, scrape_interval: str = "1s"):
    """A started ``PrometheusServer`` scraping the service and/or Triton's metrics (``host:port``)."""
    targets = {job: target for job, target in (("swapstream", service), ("triton", triton)) if target}
    server = PrometheusServer(scrape_config(targets, scrape_interval)).start()
    try:
        yield server
    finally:
        server.stop()
