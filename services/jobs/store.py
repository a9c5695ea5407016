"""The ingestion service's job store: jobs, their options, progress and results in a real database.

SQLite (WAL) in the data folder by default; PostgreSQL by URL when several machines share one queue. Both run
the same statements: the SQL is written once with ``?`` placeholders and the few dialect differences live in
``_Dialect`` (how a write transaction starts, how a row is locked, the identity column, advisory locks).

Workers claim the oldest queued job atomically (SQLite: ``BEGIN IMMEDIATE`` takes the database write lock;
PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets workers claim different jobs at once). A worker that dies leaves its
job ``running``; ``recover()`` re-queues it (or fails it after ``max_attempts`` claims) when the service comes back.
Invariant: ``worker`` is set exactly while a job is ``running``.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

from swapstream.services.engine.errors import ErrorCode

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = {"done", "failed", "cancelled"}
_DRIVER_ERRORS = (sqlite3.Error, psycopg.Error)


class QueueFull(Exception):
    """create() refused: ``max_queued`` jobs already wait."""


class JobStoreError(RuntimeError):
    """The database is unreachable or not writable."""


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    options: dict
    inputs: dict
    attempts: int
    max_attempts: int
    worker: str | None
    heartbeat_at: float | None
    frames_done: int
    frames_total: int | None
    faces_swapped: int
    fps: float | None
    result: str | None
    error: str | None
    cancel_requested: bool
    stats: dict
    error_code: str | None  # the machine-readable kind of ``error`` (engine/errors.py ErrorCode), or None
    names: dict  # the files as the client named them ({"target": ..., "sources": [...]}): shown, never a path

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = tuple(field.name for field in fields(Job))
_JSON_COLUMNS = {"options", "inputs", "stats", "names"}
_SELECT = ", ".join(_COLUMNS)


def _job_from_row(row) -> Job:
    values = dict(zip(_COLUMNS, row))
    for name in _JSON_COLUMNS:
        values[name] = json.loads(values[name])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


@dataclass(frozen=True)
class _Dialect:
    placeholder: str
    begin_write: str
    for_update: str          # appended to a SELECT that locks the rows it reads
    skip_locked: str         # appended to the claim's SELECT
    identity: str            # the insertion-order column, which orders the queue
    advisory_lock: str | None  # serialises schema creation and queue-limited creates (SQLite: the write lock does)

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)


_SQLITE = _Dialect(placeholder="?", begin_write="BEGIN IMMEDIATE", for_update="", skip_locked="",
                   identity="INTEGER PRIMARY KEY", advisory_lock=None)
_POSTGRES = _Dialect(placeholder="%s", begin_write="BEGIN", for_update=" FOR UPDATE",
                     skip_locked=" FOR UPDATE SKIP LOCKED", identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                     advisory_lock="SELECT pg_advisory_xact_lock(?)")
_SCHEMA_LOCK, _CREATE_LOCK = 0x5357_0001, 0x5357_0002

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        seq {identity},
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        options TEXT NOT NULL,
        inputs TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        worker TEXT,
        heartbeat_at DOUBLE PRECISION,
        frames_done INTEGER NOT NULL DEFAULT 0,
        frames_total INTEGER,
        faces_swapped INTEGER NOT NULL DEFAULT 0,
        fps DOUBLE PRECISION,
        result TEXT,
        error TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        stats TEXT NOT NULL DEFAULT '{{}}',
        error_code TEXT,
        names TEXT NOT NULL DEFAULT '{{}}'
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq)",
    """CREATE TABLE IF NOT EXISTS job_store_health (
        id INTEGER PRIMARY KEY, checked_at DOUBLE PRECISION NOT NULL, checked_by TEXT NOT NULL
    )""",
    # Live tickets by their SHA-256 (the ticket itself is a secret): any replica redeems what another issued.
    """CREATE TABLE IF NOT EXISTS live_tickets (
        digest TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL
    )""",
)
# Columns added since a store was first created: added to an older store when it is opened.
_ADDED_COLUMNS = {"error_code": "TEXT", "names": "TEXT NOT NULL DEFAULT '{}'"}


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class _Transaction:
    """A cursor inside one transaction that speaks the store's single SQL spelling."""

    def __init__(self, cursor, dialect: _Dialect):
        self._cursor = cursor
        self._dialect = dialect

    def execute(self, statement: str, params: tuple = ()):
        self._cursor.execute(self._dialect.sql(statement), params)
        return self._cursor

    def row(self, statement: str, params: tuple = ()) -> tuple | None:
        # fetchall, not fetchone: SQLite cannot commit while a RETURNING statement is left unfinished.
        rows = self.execute(statement, params).fetchall()
        return rows[0] if rows else None

    def jobs(self, statement: str, params: tuple = ()) -> list[Job]:
        return [_job_from_row(row) for row in self.execute(statement, params).fetchall()]

    def job(self, statement: str, params: tuple = ()) -> Job | None:
        jobs = self.jobs(statement, params)
        return jobs[0] if jobs else None

    def lock_running(self, job_id: str, worker: str) -> Job | None:
        """The job if ``worker`` holds it, locked until the transaction ends."""
        return self.job(f"SELECT {_SELECT} FROM jobs WHERE id = ? AND state = 'running' AND worker = ?"
                        f"{self._dialect.for_update}", (job_id, worker))


class JobStore:
    def __init__(self, url: str, *, busy_timeout: float = 30.0):
        """``sqlite:////abs/path/jobs.db`` or ``postgresql://user@host:port/db``; creates the schema if absent.

        ``busy_timeout``: how long SQLite waits for another writer before giving up.
        """
        self.url = url
        self._busy_timeout = busy_timeout
        if url.startswith("sqlite:///"):
            self._sqlite_path = url[len("sqlite:///"):]
            self._dialect = _SQLITE
            self.where = f"SQLite database {self._sqlite_path}"
        elif url.startswith(("postgresql://", "postgres://")):
            self._dialect = _POSTGRES
            self.where = f"PostgreSQL database {_redacted(url)}"
        else:
            raise ValueError(f"job store URL must start with sqlite:/// or postgresql://, got {_redacted(url)!r}")
        self._local = threading.local()
        self._connections: list = []
        self._connections_lock = threading.Lock()
        self._create_schema()

    @classmethod
    def in_folder(cls, data_dir: Path) -> "JobStore":
        return cls(f"sqlite:///{Path(data_dir).resolve() / 'jobs.db'}")

    # --- connections and transactions -------------------------------------------------------------------------

    def _open(self):
        if self._dialect is _POSTGRES:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        # Autocommit (isolation_level=None): transactions are the explicit BEGIN ... COMMIT below.
        connection = sqlite3.connect(self._sqlite_path, timeout=self._busy_timeout, isolation_level=None,
                                     check_same_thread=False)
        self._use_wal(connection)
        return connection

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self._busy_timeout
        while connection.execute("PRAGMA journal_mode").fetchall()[0][0] != "wal":
            try:
                connection.execute("PRAGMA journal_mode=WAL").fetchall()
            except sqlite3.OperationalError:
                # The switch needs the file to itself and SQLite's busy handler does not wait for that: when
                # several processes create the database at once, retry until the busy timeout.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _connection(self):
        # The pid check: a forked child must not share its parent's socket or SQLite handle.
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.connection = None
            self._local.connection = self._open()
            self._local.pid = os.getpid()
            with self._connections_lock:
                self._connections.append(self._local.connection)
        return self._local.connection

    def _forget_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.pid = None
        if connection is not None:
            with self._connections_lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            try:
                connection.close()
            except _DRIVER_ERRORS:
                pass

    @contextmanager
    def _transaction(self, *, write: bool = False, lock: int | None = None) -> Iterator[_Transaction]:
        """One transaction on this thread's connection; driver errors become JobStoreError.

        A failed connection is dropped, so the next call reconnects (e.g. after a PostgreSQL restart).
        """
        try:
            cursor = self._begin(self._dialect.begin_write if write else "BEGIN")
            transaction = _Transaction(cursor, self._dialect)
            if lock is not None and self._dialect.advisory_lock:
                transaction.execute(self._dialect.advisory_lock, (lock,))
            try:
                yield transaction
                cursor.execute("COMMIT")
            except BaseException:
                try:
                    cursor.execute("ROLLBACK")
                except _DRIVER_ERRORS:
                    self._forget_connection()
                raise
        except _DRIVER_ERRORS as error:
            self._forget_connection()
            raise JobStoreError(f"job store ({self.where}): {error}".rstrip()) from error

    def _begin(self, statement: str):
        reusing = getattr(self._local, "pid", None) == os.getpid()
        try:
            cursor = self._connection().cursor()
            cursor.execute(statement)
            return cursor
        except psycopg.OperationalError:
            # The server dropped an idle connection (restart, idle timeout), which psycopg only notices when it
            # is used. Nothing ran yet, so one more try on a new connection is safe.
            if not reusing:
                raise
            self._forget_connection()
        cursor = self._connection().cursor()
        cursor.execute(statement)
        return cursor

    def _create_schema(self) -> None:
        with self._transaction(write=True, lock=_SCHEMA_LOCK) as tx:
            for statement in _SCHEMA:
                tx.execute(statement.format(identity=self._dialect.identity))
            present = {column[0] for column in tx.execute("SELECT * FROM jobs LIMIT 0").description}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    tx.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.close()
            except _DRIVER_ERRORS:
                pass
        self._local = threading.local()

    def ping(self) -> None:
        """Proves the store is reachable and writable; raises JobStoreError saying what is wrong."""
        with self._transaction(write=True) as tx:
            tx.execute("INSERT INTO job_store_health (id, checked_at, checked_by) VALUES (1, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, "
                       "checked_by = excluded.checked_by", (time.time(), worker_id()))

    # --- reading ----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._transaction() as tx:
            return tx.job(f"SELECT {_SELECT} FROM jobs WHERE id = ?", (job_id,))

    def list(self, state: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """Newest first, and how many jobs match in all."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown job state {state!r}; one of {', '.join(STATES)}")
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._transaction() as tx:
            jobs = tx.jobs(f"SELECT {_SELECT} FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                           params + (limit, offset))
            total = tx.row(f"SELECT COUNT(*) FROM jobs {where}", params)[0]
        return jobs, total

    def input_folders(self) -> set[str]:
        """The upload folders (``inputs["folder"]``) of every job in the store."""
        with self._transaction() as tx:
            rows = tx.execute("SELECT inputs FROM jobs").fetchall()
        return {json.loads(row[0]).get("folder", "") for row in rows}

    def counts(self) -> dict[str, int]:
        with self._transaction() as tx:
            found = dict(tx.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: found.get(state, 0) for state in STATES}

    # --- the API's writes -------------------------------------------------------------------------------------

    def create(self, options: dict, inputs: dict, *, max_attempts: int = 3, max_queued: int | None = None,
               names: dict | None = None) -> Job:
        """A new queued job; QueueFull (nothing inserted) when ``max_queued`` jobs already wait. ``names``: the
        files' display names."""
        now = time.time()
        with self._transaction(write=True, lock=_CREATE_LOCK if max_queued is not None else None) as tx:
            if max_queued is not None:
                queued = tx.row("SELECT COUNT(*) FROM jobs WHERE state = 'queued'")[0]
                if queued >= max_queued:
                    raise QueueFull(f"{queued} jobs are already queued (the limit is {max_queued})")
            return tx.job(f"INSERT INTO jobs (id, state, created_at, updated_at, options, inputs, max_attempts, names) "
                          f"VALUES (?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING {_SELECT}",
                          (uuid.uuid4().hex, now, now, json.dumps(options), json.dumps(inputs), max_attempts,
                           json.dumps(names or {})))

    def cancel(self, job_id: str) -> Job | None:
        """Queued: cancelled now. Running: cancel requested (its worker stops and calls mark_cancelled)."""
        now = time.time()
        with self._transaction(write=True) as tx:
            job = tx.job(f"SELECT {_SELECT} FROM jobs WHERE id = ?{self._dialect.for_update}", (job_id,))
            if job is None or job.state in FINAL:
                return job
            if job.state == "queued":
                return tx.job(f"UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ? "
                              f"WHERE id = ? RETURNING {_SELECT}", (now, now, job_id))
            return tx.job(f"UPDATE jobs SET cancel_requested = TRUE, updated_at = ? WHERE id = ? RETURNING {_SELECT}",
                          (now, job_id))

    def delete(self, job_id: str) -> bool:
        """Deletes a job in a final state; False for unknown or unfinished jobs."""
        with self._transaction(write=True) as tx:
            placeholders = ", ".join("?" * len(FINAL))
            deleted = tx.execute(f"DELETE FROM jobs WHERE id = ? AND state IN ({placeholders})",
                                 (job_id, *sorted(FINAL)))
            return deleted.rowcount > 0

    # --- live tickets ---------------------------------------------------------------------------------------------

    def add_ticket(self, digest: str, expires_at: float, now: float) -> None:
        """Keeps a ticket until ``expires_at``; the tickets expired unused by ``now`` are removed on the way."""
        with self._transaction(write=True) as tx:
            tx.execute("DELETE FROM live_tickets WHERE expires_at <= ?", (now,))
            tx.execute("INSERT INTO live_tickets (digest, expires_at) VALUES (?, ?)", (digest, expires_at))

    def take_ticket(self, digest: str) -> float | None:
        """Removes a ticket and returns its expiry; None when it is unknown or already taken (by any replica)."""
        with self._transaction(write=True) as tx:
            row = tx.row("DELETE FROM live_tickets WHERE digest = ? RETURNING expires_at", (digest,))
        return row[0] if row else None

    # --- the workers' writes ----------------------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running for ``worker``; None when nothing waits."""
        now = time.time()
        with self._transaction(write=True) as tx:
            return tx.job(
                f"UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = ?, started_at = ?, "
                f"heartbeat_at = ?, updated_at = ?, frames_done = 0, faces_swapped = 0 "
                f"WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
                f"{self._dialect.skip_locked}) RETURNING {_SELECT}", (worker, now, now, now))

    def heartbeat(self, job_id: str, worker: str, frames_done: int, frames_total: int | None,
                  faces_swapped: int) -> bool:
        """Records progress; False when the worker must stop (job no longer its own, or cancel requested)."""
        now = time.time()
        with self._transaction(write=True) as tx:
            row = tx.row("UPDATE jobs SET frames_done = ?, frames_total = ?, faces_swapped = ?, heartbeat_at = ?, "
                             "updated_at = ? WHERE id = ? AND state = 'running' AND worker = ? "
                             "RETURNING cancel_requested",
                             (frames_done, frames_total, faces_swapped, now, now, job_id, worker))
        return row is not None and not row[0]

    def complete(self, job_id: str, worker: str, result: str, *, frames: int, faces_swapped: int, fps: float,
                 stats: dict) -> bool:
        """running (by ``worker``) -> done; False if it is not this worker's running job."""
        now = time.time()
        with self._transaction(write=True) as tx:
            done = tx.execute("UPDATE jobs SET state = 'done', worker = NULL, result = ?, frames_done = ?, "
                              "frames_total = ?, faces_swapped = ?, fps = ?, stats = ?, finished_at = ?, "
                              "updated_at = ? WHERE id = ? AND state = 'running' AND worker = ?",
                              (result, frames, frames, faces_swapped, fps, json.dumps(stats), now, now, job_id,
                               worker))
            return done.rowcount > 0

    def fail(self, job_id: str, worker: str, error: str, *, retry: bool = False, code: str | None = None) -> str:
        """Re-queued when ``retry`` and attempts remain, else failed (cancelled if a cancel was requested).

        Returns the job's state afterwards (unchanged if it was not this worker's running job).
        """
        with self._transaction(write=True) as tx:
            job = tx.lock_running(job_id, worker)
            if job is None:
                current = tx.row("SELECT state FROM jobs WHERE id = ?", (job_id,))
                if current is None:
                    raise KeyError(f"no job {job_id}")
                return current[0]
            return self._release(tx, job, error, retry=retry, failure=error, code=code).state

    def postpone(self, job_id: str, worker: str, reason: str, code: str | None = None) -> str:
        """running (by ``worker``) -> queued again without spending an attempt: the machine failed, not the job
        (e.g. its disk is full). Cancelled instead if a cancel was requested. Returns the state afterwards."""
        now = time.time()
        with self._transaction(write=True) as tx:
            job = tx.lock_running(job_id, worker)
            if job is None:
                current = tx.row("SELECT state FROM jobs WHERE id = ?", (job_id,))
                return current[0] if current else "deleted"
            if job.cancel_requested:
                return self._release(tx, job, reason, retry=False, failure=reason, code=code).state
            return tx.job(f"UPDATE jobs SET state = 'queued', attempts = attempts - 1, error = ?, error_code = ?, "
                          f"worker = NULL, heartbeat_at = NULL, updated_at = ? WHERE id = ? RETURNING {_SELECT}",
                          (reason, code, now, job_id)).state

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        """The worker stopped after a cancel request: running (by ``worker``) -> cancelled. False when the job was
        not this worker's any more (re-queued after a stale heartbeat)."""
        now = time.time()
        with self._transaction(write=True) as tx:
            return tx.execute("UPDATE jobs SET state = 'cancelled', worker = NULL, finished_at = ?, updated_at = ? "
                       "WHERE id = ? AND state = 'running' AND worker = ?", (now, now, job_id, worker)).rowcount > 0

    def recover(self, is_dead: Callable[[str], bool], stale_after: float) -> list[Job]:
        """Releases running jobs whose worker is dead or silent for ``stale_after`` seconds.

        Each is re-queued while attempts remain (``error`` says why), else failed with the reason; a job whose
        cancel was requested becomes cancelled. Returns the changed jobs in their new state.
        """
        with self._transaction() as tx:
            running = tx.jobs(f"SELECT {_SELECT} FROM jobs WHERE state = 'running' ORDER BY seq")
        changed = []
        for seen in running:
            with self._transaction(write=True) as tx:
                job = tx.lock_running(seen.id, seen.worker)  # it may have finished or moved on meanwhile
                why = self._why_abandoned(job, is_dead, stale_after) if job else None
                if why:
                    attempt = f"attempt {job.attempts} of {job.max_attempts}"
                    changed.append(self._release(
                        tx, job, f"re-queued after {attempt}: {why}", retry=True,
                        failure=f"{why} on {attempt}; giving up after {job.attempts} attempts",
                        code=ErrorCode.WORKER_LOST))
        return changed

    @staticmethod
    def _why_abandoned(job: Job, is_dead: Callable[[str], bool], stale_after: float) -> str | None:
        if is_dead(job.worker):
            return f"its worker {job.worker} stopped (killed or crashed)"
        silent = time.time() - job.heartbeat_at
        if silent > stale_after:
            return f"its worker {job.worker} sent no heartbeat for {silent:.0f} s"
        return None

    @staticmethod
    def _release(tx: _Transaction, job: Job, requeue_error: str, *, retry: bool, failure: str,
                 code: str | None = None) -> Job:
        """Takes a running job from its worker: cancelled, re-queued or failed (``code``: the error's kind)."""
        now = time.time()
        if job.cancel_requested:
            state, error, code = "cancelled", job.error, job.error_code
        elif retry and job.attempts < job.max_attempts:
            state, error = "queued", requeue_error
        else:
            state, error = "failed", failure
        return tx.job(f"UPDATE jobs SET state = ?, error = ?, error_code = ?, worker = NULL, heartbeat_at = NULL, "
                      f"finished_at = ?, updated_at = ? WHERE id = ? RETURNING {_SELECT}",
                      (state, error, code, now if state in FINAL else None, now, job.id))


# --- worker identity -----------------------------------------------------------------------------------------

# Tells this process from an earlier one with the same pid (containers restart with the same hostname and pids).
_PROCESS_TOKEN = uuid.uuid4().hex[:8]


def worker_id(slot: int | str | None = None) -> str:
    """``host:pid:process-token:slot``; the slot defaults to the calling thread's native id."""
    slot = threading.get_native_id() if slot is None else slot
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}:{slot}"


def local_worker_is_dead(worker: str) -> bool:
    """True for a worker of this host whose process is gone; other hosts' workers rely on heartbeat staleness."""
    host, pid, token = (worker.split(":") + ["", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return token != _PROCESS_TOKEN
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False
