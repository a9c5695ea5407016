"""A real PostgreSQL server for tests, started in a temporary folder on a free port.

``from tests.helpers.postgres_server import postgres_url, postgres_database_url`` gives a test module the fixtures: the URL
of a database on one server per session, and of a database of its own per test (dropped afterwards).
PostgreSQL refuses to run as root, so as root the server runs as ``nobody`` in a folder that user owns.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

SUPERUSER = "postgres"


def find_postgres_bin() -> Path | None:
    """The folder holding initdb and postgres: on PATH, else the newest Debian /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name))
    candidates += [Path(path) for path in reversed(debian)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """``with PostgresServer() as server:`` runs initdb and postgres; ``server.url(db)`` connects as superuser."""

    def __init__(self, bin_dir: Path, *, address: str = "127.0.0.1", wrap: list[str] = (), allow: str | None = None):
        """``wrap``: a command prefix that runs postgres elsewhere (another network namespace: ``ip netns exec``);
        ``allow``: a network (CIDR) whose clients may connect, besides loopback."""
        self.bin_dir = bin_dir
        self.address = address
        self.wrap = list(wrap)
        self.allow = allow
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="swapstream-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self._process: subprocess.Popen | None = None
        # Root may not run PostgreSQL: run it as nobody, in a folder nobody owns (/tmp lets it reach the folder).
        self._as = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.address}:{self.port}/{database}"

    def __enter__(self) -> "PostgresServer":
        try:
            self._run(["initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                       "--locale=C", "--no-sync"])
            if self.allow:
                with open(self.data / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all {self.allow} trust\n")
            command = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-h", self.address, "-p", str(self.port),
                       "-k", str(self.folder), "-F", "-c", "max_connections=60", "-c", "shared_buffers=16MB"]
            user = self._as
            if self.wrap and self._as:  # the wrapper needs root: it drops to nobody itself
                command = ["setpriv", f"--reuid={self._as['user']}", f"--regid={self._as['group']}",
                           "--clear-groups", *command]
                user = {}
            with open(self.log, "wb") as log:
                self._process = subprocess.Popen(self.wrap + command, stdout=log, stderr=subprocess.STDOUT,
                                                 cwd=self.folder, **user)
            self._wait_ready(timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients, no waiting on them
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, command: list[str]) -> None:
        done = subprocess.run([str(self.bin_dir / command[0]), *command[1:]], capture_output=True, text=True,
                              cwd=self.folder, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}:\n{self.log.read_text()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after {timeout} s:\n{self.log.read_text()}") from None
                time.sleep(0.1)


def create_database(server_url: str, name: str) -> str:
    """Creates database ``name`` on the server of ``server_url`` and returns its URL."""
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a fresh database on a real PostgreSQL server that lives for the test session."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin; install Debian's postgresql package (.ci/run does)")
    with PostgresServer(bin_dir) as server:
        yield create_database(server.url(), "swapstream_test")


@pytest.fixture
def postgres_database_url(postgres_url):
    """URL of a new database for one test on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield create_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # FORCE: connections a test left open
