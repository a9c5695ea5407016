"""The job store on both backends: SQLite (WAL, a file per test) and a real PostgreSQL (a database per test)."""
from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import threading
import time

import psycopg
import pytest

from swapstream.services.jobs.store import (STATES, JobStore, JobStoreError, QueueFull, local_worker_is_dead,
                                worker_id)
from swapstream.services.live.tickets import TicketStore
from tests.helpers.postgres_server import free_port, postgres_database_url, postgres_url  # noqa: F401 (fixtures)

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from pytest's process


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def store(store_url):
    store = JobStore(store_url)
    yield store
    store.close()


def _create(store: JobStore, count: int = 1, **kwargs) -> list[str]:
    return [store.create({"n": n}, {"target": f"inputs/{n}.mp4"}, **kwargs).id for n in range(count)]


def _dead_local_worker() -> str:
    """A worker id of this host whose process has exited."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    host, _pid, token, _slot = worker_id().split(":")
    return f"{host}:{exited.pid}:{token}:0"


def test_job_lifecycle(store):
    options = {"enhance": True, "faces": [0, 2], "label": "ü"}
    inputs = {"target": "inputs/a/target.mp4", "sources": ["inputs/a/s0.jpg"]}
    created = store.create(options, inputs, max_attempts=4)
    assert (created.state, created.attempts, created.max_attempts, created.worker) == ("queued", 0, 4, None)
    assert (created.options, created.inputs, created.stats, created.cancel_requested) == (options, inputs, {}, False)
    assert len(created.id) == 32 and created.started_at is None and created.result is None
    assert store.get(created.id) == created

    claimed = store.claim("w1")
    assert claimed.id == created.id
    assert (claimed.state, claimed.attempts, claimed.worker) == ("running", 1, "w1")
    assert claimed.started_at >= created.created_at and claimed.heartbeat_at is not None

    assert store.heartbeat(created.id, "w1", frames_done=10, frames_total=40, faces_swapped=9)
    progress = store.get(created.id)
    assert (progress.frames_done, progress.frames_total, progress.faces_swapped) == (10, 40, 9)
    assert not store.heartbeat(created.id, "w2", 11, 40, 10), "another worker's heartbeat must be refused"

    assert not store.complete(created.id, "w2", "results/x.mp4", frames=40, faces_swapped=38, fps=12.5, stats={})
    stats = {"stages": {"detect": 1.5}, "notes": ["audio copied"]}
    assert store.complete(created.id, "w1", "results/x.mp4", frames=40, faces_swapped=38, fps=12.5, stats=stats)
    done = store.get(created.id)
    assert (done.state, done.result, done.frames_done, done.faces_swapped, done.fps) == (
        "done", "results/x.mp4", 40, 38, 12.5)
    assert done.stats == stats and done.worker is None and done.finished_at >= done.started_at
    assert not store.complete(created.id, "w1", "results/y.mp4", frames=1, faces_swapped=0, fps=1.0, stats={})
    assert json.loads(json.dumps(done.to_dict())) == done.to_dict()
    assert store.claim("w1") is None
    assert store.get("0" * 32) is None


def test_claims_oldest_first(store):
    ids = _create(store, 3)
    assert [store.claim("w").id for _ in ids] == ids


def test_list_is_newest_first_paginated_and_filtered(store):
    ids = _create(store, 5)
    store.claim("w")
    store.claim("w")

    page, total = store.list(limit=2)
    assert ([job.id for job in page], total) == (ids[:2:-1], 5)
    page, total = store.list(limit=2, offset=4)
    assert ([job.id for job in page], total) == ([ids[0]], 5)
    running, total = store.list(state="running")
    assert ([job.id for job in running], total) == ([ids[1], ids[0]], 2)
    assert store.list(state="done") == ([], 0)
    with pytest.raises(ValueError, match="unknown job state"):
        store.list(state="finished")


def test_counts_every_state(store):
    assert store.counts() == dict.fromkeys(STATES, 0)
    first, second, third, _ = _create(store, 4)
    store.claim("w")
    store.claim("w")
    store.fail(second, "w", "broken input")
    store.cancel(third)
    assert store.counts() == {"queued": 1, "running": 1, "done": 0, "failed": 1, "cancelled": 1}


def test_queue_full_counts_only_queued_jobs(store):
    _create(store, 2, max_queued=2)
    with pytest.raises(QueueFull):
        store.create({}, {}, max_queued=2)
    assert store.counts()["queued"] == 2
    store.claim("w")
    store.create({}, {}, max_queued=2)
    assert store.counts()["queued"] == 2


def test_queue_limit_holds_under_concurrent_creates(store):
    accepted, refused = [], []
    start = threading.Barrier(6)

    def submit():
        start.wait()
        for _ in range(3):
            try:
                accepted.append(store.create({}, {}, max_queued=5).id)
            except QueueFull:
                refused.append(1)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(accepted), len(refused)) == (5, 13)
    assert store.counts()["queued"] == 5


def test_cancel_queued_job_is_immediate(store):
    job_id, other = _create(store, 2)
    cancelled = store.cancel(job_id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    assert store.claim("w").id == other
    assert store.cancel("0" * 32) is None


def test_cancel_running_job_asks_its_worker_to_stop(store):
    job_id, = _create(store)
    store.claim("w")
    assert store.heartbeat(job_id, "w", 1, 10, 1)
    requested = store.cancel(job_id)
    assert (requested.state, requested.cancel_requested) == ("running", True)
    assert not store.heartbeat(job_id, "w", 2, 10, 2), "the worker must learn it has to stop"
    store.mark_cancelled(job_id, "w")
    cancelled = store.get(job_id)
    assert (cancelled.state, cancelled.worker) == ("cancelled", None) and cancelled.finished_at is not None
    assert store.cancel(job_id) == cancelled, "a final state does not change"


def test_delete_only_final_jobs(store):
    done, running, queued = _create(store, 3)
    store.claim("w")
    store.complete(done, "w", "results/r.mp4", frames=1, faces_swapped=1, fps=1.0, stats={})
    store.claim("w")
    assert not store.delete(queued) and not store.delete(running)
    assert store.delete(done)
    assert store.get(done) is None and not store.delete(done)
    assert store.counts() == {"queued": 1, "running": 1, "done": 0, "failed": 0, "cancelled": 0}


def test_fail_retries_until_the_attempt_limit(store):
    job_id, = _create(store, max_attempts=2)
    store.claim("w1")
    assert store.fail(job_id, "w2", "not mine", retry=True) == "running"
    assert store.fail(job_id, "w1", "Triton unavailable", retry=True) == "queued"
    requeued = store.get(job_id)
    assert (requeued.worker, requeued.error, requeued.attempts) == (None, "Triton unavailable", 1)
    assert not store.heartbeat(job_id, "w1", 1, 1, 1), "the old worker no longer holds it"

    assert store.claim("w2").attempts == 2
    assert store.fail(job_id, "w2", "Triton unavailable again", retry=True) == "failed"
    failed = store.get(job_id)
    assert (failed.error, failed.attempts, failed.worker) == ("Triton unavailable again", 2, None)
    assert failed.finished_at is not None


def test_fail_without_retry_is_final(store):
    job_id, = _create(store)
    store.claim("w")
    assert store.fail(job_id, "w", "no face in the source image") == "failed"
    assert store.claim("w") is None


def test_recover_requeues_jobs_of_dead_workers_then_gives_up(store):
    orphan, alive = _create(store, 2, max_attempts=2)
    dead = _dead_local_worker()
    store.claim(dead)
    store.claim(worker_id())

    recovered = store.recover(local_worker_is_dead, stale_after=3600)
    assert [(job.id, job.state, job.attempts) for job in recovered] == [(orphan, "queued", 1)]
    assert "re-queued after attempt 1 of 2" in recovered[0].error and dead in recovered[0].error
    assert "killed or crashed" in recovered[0].error and recovered[0].worker is None
    assert store.get(alive).state == "running"

    assert store.claim(dead).id == orphan
    failed, = store.recover(local_worker_is_dead, stale_after=3600)
    assert (failed.id, failed.state, failed.attempts) == (orphan, "failed", 2)
    assert "stopped (killed or crashed) on attempt 2 of 2; giving up after 2 attempts" in failed.error
    assert store.recover(local_worker_is_dead, stale_after=3600) == []


def test_recover_requeues_jobs_with_a_stale_heartbeat(store):
    silent, fresh = _create(store, 2, max_attempts=1)
    store.claim("other-host:1:x:0")
    time.sleep(0.3)
    store.claim("other-host:2:x:0")

    failed, = store.recover(lambda worker: False, stale_after=0.2)
    assert (failed.id, failed.state) == (silent, "failed")
    assert "sent no heartbeat for" in failed.error and "giving up after 1 attempts" in failed.error
    assert store.get(fresh).state == "running"


def test_recover_finishes_a_requested_cancel(store):
    job_id, = _create(store)
    store.claim("gone")
    store.cancel(job_id)
    cancelled, = store.recover(lambda worker: worker == "gone", stale_after=3600)
    assert (cancelled.id, cancelled.state, cancelled.attempts) == (job_id, "cancelled", 1)


def _drain(url: str, workers: list[str]) -> dict[str, list[str]]:
    """Each worker, on its own thread, claims and completes jobs until none is left; returns who got what."""
    store = JobStore(url)
    claimed = {worker: [] for worker in workers}
    start = threading.Barrier(len(workers))

    def work(worker: str) -> None:
        start.wait()
        while (job := store.claim(worker)) is not None:
            claimed[worker].append(job.id)
            # Jobs take time: without it one thread can drain SQLite's queue while the others back off.
            time.sleep(0.002)
            store.complete(job.id, worker, f"results/{job.id}.mp4", frames=1, faces_swapped=1, fps=1.0,
                           stats={"worker": worker})

    threads = [threading.Thread(target=work, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    return claimed


def _join(processes) -> None:
    for process in processes:
        process.join(timeout=30)
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join()
            pytest.fail(f"{process.name} did not finish in 30 s")
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def _drain_in_process(url: str, workers: list[str], start, results) -> None:
    start.wait(timeout=30)
    results.put(_drain(url, workers))


def _assert_each_claimed_once(store: JobStore, ids: list[str], claimed: dict[str, list[str]]) -> None:
    every_claim = [job_id for jobs in claimed.values() for job_id in jobs]
    assert sorted(every_claim) == sorted(ids), "every job claimed exactly once"
    for worker, jobs in claimed.items():
        for job_id in jobs:
            job = store.get(job_id)
            assert (job.state, job.attempts, job.stats) == ("done", 1, {"worker": worker})


def test_threads_race_for_jobs(store, store_url):
    ids = _create(store, 60)
    claimed = _drain(store_url, [f"thread-{n}" for n in range(4)])
    _assert_each_claimed_once(store, ids, claimed)
    assert sum(1 for jobs in claimed.values() if jobs) >= 2, "the threads did not race"


def test_processes_race_for_jobs(store, store_url):
    ids = _create(store, 90)
    start, results = SPAWN.Barrier(3), SPAWN.Queue()
    processes = [SPAWN.Process(target=_drain_in_process, args=(store_url, [f"p{p}-t{t}" for t in range(2)],
                                                               start, results)) for p in range(3)]
    for process in processes:
        process.start()
    _join(processes)
    per_process = [results.get(timeout=5) for _ in processes]
    _assert_each_claimed_once(store, ids, {w: jobs for claims in per_process for w, jobs in claims.items()})
    assert sum(1 for claims in per_process if any(claims.values())) >= 2, "the processes did not race"


def _open_and_create(url: str, start, results) -> None:
    start.wait(timeout=30)
    store = JobStore(url)
    results.put(store.create({}, {}).id)
    store.close()


def test_schema_creation_is_safe_when_processes_start_at_once(store_url):
    start, results = SPAWN.Barrier(3), SPAWN.Queue()
    processes = [SPAWN.Process(target=_open_and_create, args=(store_url, start, results)) for _ in range(3)]
    for process in processes:
        process.start()
    _join(processes)
    created = {results.get(timeout=5) for _ in processes}
    store = JobStore(store_url)
    assert {job.id for job in store.list()[0]} == created and len(created) == 3
    store.close()


def test_ping_succeeds_on_a_healthy_store(store):
    store.ping()  # inserts the health row
    store.ping()  # updates it


def test_unreachable_sqlite_store_fails_clearly(tmp_path):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    with pytest.raises(JobStoreError, match=f"SQLite database {not_a_folder}/jobs.db.*unable to open"):
        JobStore.in_folder(not_a_folder)


def test_ping_fails_clearly_while_sqlite_is_locked_by_another_writer(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", busy_timeout=0.2)
    other_writer = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other_writer.execute("BEGIN EXCLUSIVE")
    with pytest.raises(JobStoreError, match="jobs.db.*database is locked"):
        store.ping()
    other_writer.execute("ROLLBACK")
    store.ping()
    other_writer.close()
    store.close()


def test_unreachable_postgresql_fails_clearly():
    port = free_port()
    with pytest.raises(JobStoreError, match=rf"PostgreSQL database postgresql://u:\*\*\*@127.0.0.1:{port}/db"):
        JobStore(f"postgresql://u:secret@127.0.0.1:{port}/db")


def test_ping_fails_clearly_on_a_read_only_postgresql(postgres_database_url):
    """As on a hot standby: reachable, readable, not writable."""
    store = JobStore(postgres_database_url)
    database = postgres_database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_database_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    store.close()  # new connections get the setting
    assert store.counts()["queued"] == 0
    with pytest.raises(JobStoreError, match="read-only transaction"):
        store.ping()
    store.close()


def test_postgresql_connection_dropped_by_the_server_is_reopened(postgres_database_url):
    url = postgres_database_url
    store = JobStore(url)
    job_id, = _create(store)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert store.get(job_id).state == "queued"
    store.ping()
    store.close()


def test_local_worker_is_dead():
    assert not local_worker_is_dead(worker_id())
    assert not local_worker_is_dead(worker_id(3))
    assert local_worker_is_dead(_dead_local_worker())
    host, pid, _token, slot = worker_id().split(":")
    assert local_worker_is_dead(f"{host}:{pid}:0ldt0ken:{slot}"), "an earlier process that had this pid"
    assert not local_worker_is_dead(f"another-{host}:1:token:0"), "other hosts rely on heartbeat staleness"


def test_live_tickets_are_single_use_across_replicas_and_expire(store, store_url):
    replica = JobStore(store_url)  # another service process on the same store
    now = [1000.0]
    issuing, redeeming = (TicketStore(s, 60, clock=lambda: now[0]) for s in (store, replica))
    try:
        first, second, third = issuing.issue(), issuing.issue(), issuing.issue()
        assert redeeming.redeem(first) is None
        assert "already used" in issuing.redeem(first)
        assert "unknown" in redeeming.redeem("made-up")
        now[0] = 1061.0
        assert "expired ticket" in redeeming.redeem(second)
        fourth = issuing.issue()  # removes the expired, unused third on the way
        with store._transaction() as tx:
            kept = [row[0] for row in tx.execute("SELECT digest FROM live_tickets").fetchall()]
        assert len(kept) == 1 and fourth not in kept[0] and third not in kept[0]  # digests only
        assert redeeming.redeem(fourth) is None
    finally:
        replica.close()
