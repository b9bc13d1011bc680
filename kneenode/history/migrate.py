"""Schema migrations of the history database with alembic, run programmatically at open.

Every process that opens the history runs :func:`upgrade` (to ``head`` by default); concurrent
openers are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite: an exclusive
``flock`` on a file beside the database), so a fresh database is created exactly once. The
revisions live in ``migrations/versions/``; ``alembic`` is never run from the command line
against a node's database (there is no ``alembic.ini`` holding a URL).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "history_schema_version"
#: pg_advisory_xact_lock key of the history's migrations (any constant; "knee" in ASCII).
_PG_LOCK = 0x6B6E6565


def alembic_config() -> Config:
    """An alembic configuration for the history's scripts (no ini file)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head() -> str:
    """The newest revision of the scripts."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(engine: sa.Engine) -> str | None:
    """The database's revision (None: not created yet)."""
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


@contextmanager
def _sqlite_lock(engine: sa.Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock = Path(database).with_suffix(".migrate.lock")
    with open(lock, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (a no-op when it is there already)."""
    cfg = alembic_config()
    if engine.dialect.name == "sqlite":
        with _sqlite_lock(engine), engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
