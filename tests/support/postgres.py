"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, initdb + postgres on a
free loopback port in a private folder, stopped by PID.

PostgreSQL refuses to run as root (CI runs as root), so under root the server's folder belongs
to the ``postgres`` system user (the package creates it) and ``initdb`` / ``postgres`` run as
that user through ``setpriv`` (which execs: the PID we hold is the server's own). The folder is
made under the system temp dir, not pytest's (``/tmp/pytest-of-root`` is 0700: the postgres
user could not enter it), and removed afterwards.

Use the ``postgres_server`` fixture (one server per test session) and ``postgres_url`` (a fresh,
empty database per test), or :func:`start_postgres` directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import free_port, port_open, start, stop, wait_for

USER = "kneenode"  # the database superuser initdb creates (trust auth on loopback only)


def pg_bindir() -> Path:
    """The newest installed PostgreSQL's bin folder (``/usr/lib/postgresql/<N>/bin``)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make setup` (DEB_PACKAGES has "
                           "postgresql)")
    return found[-1].parent


def _as_server_user(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run as the ``postgres`` user when we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return list(cmd)
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]


@dataclass
class PostgresServer:
    """A running server: its port, folder and process (stop with :meth:`stop`)."""

    root: Path
    port: int
    proc: subprocess.Popen

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` maintenance database."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back clients, checkpoint), then remove the folder."""
        try:
            stop(self.proc, signal.SIGINT, timeout=30)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout: float = 120) -> PostgresServer:
    """initdb a fresh cluster in a private folder and start ``postgres`` on a free port."""
    bindir = pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="kneenode-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sockets):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    log = root / "postgres.log"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    try:
        init = subprocess.run(
            _as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", USER,
                             "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"]),
            capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        port = free_port()
        proc = start(_as_server_user([
            str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=40",
            "-c", "shared_buffers=16MB"]), log=log, env=env)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server = PostgresServer(root, port, proc)
    try:
        wait_for(lambda: proc.poll() is not None or (port_open(port) and _accepts(server)),
                 timeout, interval=0.2, what=f"postgres on port {port}")
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited {proc.returncode}: {log.read_text()[-2000:]}")
    except BaseException:
        server.stop()
        raise
    return server


def _accepts(server: PostgresServer) -> bool:
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=server.port, user=USER, dbname="postgres",
                             connect_timeout=2):
            return True
    except psycopg.OperationalError:  # still starting ("the database system is starting up")
        return False


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the test session, stopped by PID at the end."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server (SQLAlchemy URL, psycopg 3)."""
    return postgres_server.create_database()
