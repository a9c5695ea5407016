"""The rehearsal of a cluster on this machine: the same processes as on Kubernetes, on separate network hosts
(tests/helpers/hosts.py: network namespaces with their own host names; distinct loopback addresses where namespaces
cannot be made) — two Triton hosts, two service hosts and PostgreSQL on its own host, the services sharing one data
folder — and the faults a cluster sees: a Triton host frozen, a Triton host killed, a service host killed, a live
stream opened with another replica's ticket, a replica drained with a stream open.

Each fault's figures (what the job or stream saw, the time to recover) go to ``tests/artifacts/rehearsal.json``.
The module runs in about 3 minutes on 2 cores (two Tritons and two services start once); it is marked ``slow``
and left out of the default run: ``pytest -m slow tests/deploy/test_rehearsal.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import av
import httpx
import pytest
import tritonclient.grpc as grpcclient

from swapstream.benchmarks.media import cut
from swapstream.services.live.client import Connector, Frame, LiveRequest, LiveStream, read_input, start_stream
from tests.helpers.hosts import SUBNET, Network
from tests.helpers.media import MEDIA, SHARED
from tests.helpers.postgres_server import PostgresServer, create_database, find_postgres_bin
from tests.helpers.service import OBAMA, metric_values, submit

pytestmark = pytest.mark.slow

TOKEN = "rehearsal-token"
CLIP_FRAMES = 48
BATCH = 8              # frames per batch: progress (and a fault's chance to land mid-job) every 8 frames
STALE_AFTER = 15       # seconds without a heartbeat before another replica takes a job over
DRAIN_TIMEOUT = 3      # seconds a draining replica's jobs get before they go back to the queue
BOUND = 300            # seconds any wait of this module may take before it fails
ARTIFACTS = Path(os.environ.get("SWAPSTREAM_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
FIGURES: dict = {}


def _swapstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "swapstream.services.cli", *args]


def _wait(what: str, condition, timeout: float = BOUND, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {what}")


class Cluster:
    def __init__(self, net: Network, work: Path, stack: ExitStack):
        self.net, self.work, self.stack = net, work, stack
        self.data = work / "shared-data"
        self.data.mkdir()
        self.tritons = [net.host("triton-a", 11), net.host("triton-b", 12)]
        self.services = [net.host("svc-a", 21), net.host("svc-b", 22)]
        db_host = net.host("postgres", 10)
        bin_dir = find_postgres_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
        server = stack.enter_context(PostgresServer(bin_dir, address=db_host.address, wrap=db_host.wrap(),
                                                    allow=f"{SUBNET}.0/24" if net.mode == "netns" else "127.0.0.0/8"))
        self.store = create_database(server.url(), "swapstream")
        self.triton_url = ",".join(f"{t.address}:8001" for t in self.tritons)
        for triton in self.tritons:
            self.start_triton(triton)
        for triton in self.tritons:
            _wait(f"Triton on {triton.name} ready", lambda t=triton: self.triton_ready(t))
        for service in self.services:
            self.start_service(service)

    def log(self, host) -> Path:
        return self.work / f"{host.name}.log"

    def start_triton(self, host) -> None:
        with open(self.log(host), "ab") as log:
            host.start(_swapstream("triton", "--address", host.address, "--http-port", "8000", "--grpc-port", "8001",
                                   "--metrics-port", "8002", "--models", str(SHARED / "models")),
                       stdout=log, stderr=subprocess.STDOUT)

    def triton_ready(self, host) -> bool:
        try:
            with grpcclient.InferenceServerClient(f"{host.address}:8001") as client:
                return client.is_server_ready(client_timeout=2)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def start_service(self, host) -> None:
        env = dict(os.environ, SWAPSTREAM_TOKEN=TOKEN)
        with open(self.log(host), "ab") as log:
            process = host.start(_swapstream("serve", "--host", host.address, "--port", "8080", "--data", str(self.data),
                                             "--store", self.store, "--triton", self.triton_url, "--workers", "1",
                                             "--stale-after", str(STALE_AFTER), "--drain-timeout", str(DRAIN_TIMEOUT),
                                             "--triton-timeout", "120"),
                                 stdout=log, stderr=subprocess.STDOUT, env=env)

        def ready():
            assert process.poll() is None, f"serve on {host.name} exited:\n{self.log(host).read_text()[-3000:]}"
            try:
                return self.http(host).get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        _wait(f"service on {host.name} ready", ready)

    def url(self, host) -> str:
        return f"http://{host.address}:8080"

    def http(self, host) -> httpx.Client:
        return httpx.Client(base_url=self.url(host), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def back_up(self, triton) -> str:
        """After a freeze: the server answers again, or (its process having died meanwhile) it is started again, as
        the kubelet restarts a container whose liveness probe fails. Says which."""
        try:
            _wait(f"{triton.name} answering", lambda: self.readiness(self.services[0])["triton_servers"] == "2 of 2 up"
                  or not triton.pids(), timeout=60)
        except AssertionError:
            pass
        if self.readiness(self.services[0])["triton_servers"] == "2 of 2 up":
            return "answered again"
        triton.kill()
        self.start_triton(triton)
        _wait(f"{triton.name} restarted", lambda: self.readiness(self.services[0])["triton_servers"] == "2 of 2 up")
        tail = [line for line in self.log(triton).read_text(errors="replace").splitlines() if "exited" in line]
        return f"restarted ({tail[-1] if tail else 'not answering'})"

    def running_the_job(self):
        """The service host whose worker is busy (one job runs at a time in this module)."""
        [busy] = [h for h in self.services if metric_values(self.http(h))["swapstream_workers_busy"] == 1]
        return busy

    def readiness(self, host) -> dict:
        return self.http(host).get("/readyz").json()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the rehearsal makes network namespaces and test hosts: it runs as root")
    with ExitStack() as stack:
        net = stack.enter_context(Network())
        FIGURES["network"] = ("network namespaces (ip netns + veth on a bridge, own host names)" if net.mode == "netns"
                              else "distinct loopback addresses (network namespaces not allowed here)")
        yield Cluster(net, tmp_path_factory.mktemp("rehearsal"), stack)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "rehearsal.json").write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_FRAMES)


def frame_count(data: bytes, folder: Path) -> int:
    path = folder / "result.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


class JobWatch:
    """Polls a job (from any replica) and notes when its progress moved, to time a fault's recovery."""

    def __init__(self, cluster: Cluster, via, job_id: str):
        self.cluster, self.via, self.id = cluster, via, job_id
        self.moves: list[tuple[float, int]] = []   # (monotonic time, frames_done) at each change
        self.job: dict = {}

    def poll(self) -> dict:
        for host in [self.via] + [h for h in self.cluster.services if h is not self.via]:
            try:
                self.job = self.cluster.http(host).get(f"/v1/jobs/{self.id}").json()
                break
            except httpx.TransportError:
                continue
        if not self.moves or self.moves[-1][1] != self.job.get("frames_done"):
            self.moves.append((time.monotonic(), self.job.get("frames_done")))
        return self.job

    def until(self, what: str, condition) -> dict:
        return _wait(what, lambda: condition(self.poll()) and self.job)

    def recovered_after(self, fault_at: float) -> float | None:
        """Seconds from the fault to the first progress after it."""
        later = [t for t, frames in self.moves if t > fault_at and frames]
        return round(later[0] - fault_at, 1) if later else None


def run_job(cluster: Cluster, via) -> JobWatch:
    response = submit(cluster.http(via), cluster_clip(cluster), batch_size=BATCH)
    assert response.status_code == 201, response.text
    watch = JobWatch(cluster, via, response.json()["id"])
    watch.until("the job running with frames done", lambda j: j["state"] == "running" and j["frames_done"] > 0)
    return watch


def cluster_clip(cluster: Cluster) -> Path:
    return cluster.work / "clip.mp4"


def finished(watch: JobWatch, tmp_path: Path) -> dict:
    job = watch.until("the job done", lambda j: j["state"] in ("done", "failed", "cancelled"))
    assert job["state"] == "done", job
    result = watch.cluster.http(watch.via).get(f"/v1/jobs/{watch.id}/result")
    assert result.status_code == 200
    assert frame_count(result.content, tmp_path) == CLIP_FRAMES == job["frames_done"]
    return job


@pytest.fixture(autouse=True)
def _clip_in_place(cluster, clip):
    if not cluster_clip(cluster).exists():
        cluster_clip(cluster).write_bytes(clip.read_bytes())


def test_a_ticket_from_one_replica_opens_a_stream_on_the_other(cluster, tmp_path):
    a, b = cluster.services
    request = LiveRequest(sources=[OBAMA], input=str(cluster_clip(cluster)), url=f"ws://{b.address}:8080",
                          token=TOKEN, quality=70)
    connector = Connector(request)
    with cluster.http(a) as http:
        ticket = http.post("/v1/live/tickets").json()["ticket"]  # issued by replica a
    ws, ready = start_stream(f"ws://{b.address}:8080/v1/live", connector.source_id, ticket, quality=70)
    _, frames = read_input(request.input, 70, limit=10)
    stats = LiveStream(ws).run(frames)
    assert stats.received > 0 and stats.unaccounted == 0, stats.figures()
    assert stats.close.startswith("code 1000")
    # ... and only once, on any replica.
    with pytest.raises(Exception, match="unknown or already used ticket"):
        start_stream(f"ws://{a.address}:8080/v1/live", connector.source_id, ticket)
    FIGURES["ticket_across_replicas"] = {"issued_by": a.name, "stream_on": b.name, "answered": stats.received,
                                         "sent": stats.sent, "reused_ticket": "refused (1008) on the other replica"}


def test_a_frozen_triton_host_its_calls_move_to_the_other(cluster, tmp_path):
    frozen = cluster.tritons[0]
    watch = run_job(cluster, cluster.services[0])
    at = time.monotonic()
    frozen.signal(signal.SIGSTOP)
    try:
        _wait("a replica reporting 1 of 2 Triton servers up",
              lambda: cluster.readiness(cluster.services[0]).get("triton_servers") == "1 of 2 up")
        seen_down = round(time.monotonic() - at, 1)
        job = finished(watch, tmp_path)
    finally:
        frozen.signal(signal.SIGCONT)
    assert job["attempts"] == 1, job
    thawed = cluster.back_up(frozen)
    FIGURES["triton_frozen"] = {"job": "done, every frame, attempt 1", "frames": job["frames_done"],
                                "seconds_to_taken_out": seen_down, "seconds_to_next_progress": watch.recovered_after(at),
                                "after_SIGCONT": thawed}


def test_a_killed_triton_host_the_job_finishes_without_spending_an_attempt(cluster, tmp_path):
    killed = cluster.tritons[1]
    _wait("both Triton servers up", lambda: cluster.readiness(cluster.services[1])["triton_servers"] == "2 of 2 up")
    watch = run_job(cluster, cluster.services[1])
    at = time.monotonic()
    killed.kill()
    job = finished(watch, tmp_path)
    assert job["attempts"] == 1 and not job["error"], job
    readiness = cluster.readiness(cluster.services[1])
    assert readiness["ready"] and readiness["triton_servers"] == "1 of 2 up", readiness
    FIGURES["triton_killed"] = {"job": "done, every frame, attempt 1", "frames": job["frames_done"],
                                "seconds_to_next_progress": watch.recovered_after(at),
                                "readiness": readiness["triton_servers"]}


def test_a_killed_service_host_its_job_is_taken_over_by_the_other(cluster, tmp_path):
    watch = run_job(cluster, cluster.services[0])
    victim = cluster.running_the_job()
    survivor = next(h for h in cluster.services if h is not victim)
    watch.via = survivor
    at = time.monotonic()
    victim.kill()
    job = finished(watch, tmp_path)
    assert job["attempts"] == 2 and "heartbeat" in (job["error"] or ""), job
    FIGURES["service_killed"] = {"job": "done on the other replica, every frame, attempt 2 (a killed worker counts)",
                                 "requeue_reason": job["error"], "stale_after_s": STALE_AFTER,
                                 "seconds_to_next_progress": watch.recovered_after(at)}
    cluster.start_service(victim)  # back for the drain


def test_draining_a_replica_its_stream_reconnects_and_its_job_is_requeued(cluster, tmp_path):
    watch = run_job(cluster, cluster.services[0])
    leaving = cluster.running_the_job()  # the replica to drain: it runs the job, and it gets the stream
    staying = next(h for h in cluster.services if h is not leaving)
    watch.via = staying
    request = LiveRequest(sources=[OBAMA], input=str(MEDIA / "vid03_square_480_expressions.mp4"), token=TOKEN,
                          url=f"ws://{leaving.address}:8080,ws://{staying.address}:8080", quality=70)
    connector = Connector(request)
    ws, _ready = connector.open()  # on the first address: the leaving replica
    stream = LiveStream(ws, reconnect=connector.open)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(stats=stream.run(looped(request.input, 2))), daemon=True)
    runner.start()
    _wait("answers on the stream", lambda: stream.stats.received > 3)
    process = next(p for p in leaving.processes if p.poll() is None)
    at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _wait("the leaving replica not ready", lambda: _not_ready(cluster, leaving), timeout=10, every=0.05)
    not_ready_after = round(time.monotonic() - at, 2)
    assert process.wait(60) == 0, cluster.log(leaving).read_text()[-2000:]
    stopped_after = round(time.monotonic() - at, 1)
    runner.join(BOUND)
    assert not runner.is_alive()
    stats = result["stats"]
    assert len(stats.reconnects) == 1, stats.figures()
    assert "1012" in stats.reconnects[0]["why"] and "reconnect" in stats.reconnects[0]["why"]
    assert stats.close.startswith("code 1000") and stats.unaccounted == 0, stats.figures()
    job = finished(watch, tmp_path)
    assert job["attempts"] == 1 and "stopped before it finished" in job["error"], job
    FIGURES["drain"] = {"readiness_503_after_s": not_ready_after, "process_exited_after_s": stopped_after,
                        "stream": {"reconnects": stats.reconnects, "frames_sent": stats.sent,
                                   "answered": stats.received, "lost_in_flight": stats.lost, "dropped": stats.dropped},
                        "job": {"ran_on": leaving.name, "finished_on": staying.name, "attempts": job["attempts"],
                                "requeue_reason": job["error"]}}


def looped(path: str, times: int):
    """The clip's frames ``times`` over, numbered and timed on (a longer stream from a short clip)."""
    seq, offset = 0, 0.0
    for _ in range(times):
        info, frames = read_input(path, 70)
        last = 0.0
        for frame in frames:
            yield Frame(seq, offset + frame.due, frame.data)
            seq, last = seq + 1, frame.due
        offset += last + 1 / info.fps


def _not_ready(cluster: Cluster, host) -> bool:
    try:
        return cluster.http(host).get("/readyz").status_code == 503
    except httpx.TransportError:
        return True
