"""The history store: record exams, and read a patient's exams per knee and model.

:func:`open_history` resolves the database (``history.url``; SQLite under the data folder by
default), runs the migrations and loads the node secret. :class:`HistoryStore` is the only way
the node reads or writes the history (SQLAlchemy Core, the same statements on SQLite and
PostgreSQL; ordering is done in Python so both give the same order, NULL dates included).

Recording is idempotent per job: recording a job again replaces its row. A later job that
measures the same series with the same model (a reprocess, a retry, a late-arrival version)
*supersedes* the earlier rows: they stay, with ``superseded_by`` naming the newer job, and
queries return only current rows (``include_superseded`` for the export's ``--all``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from kneenode.errors import ErrorCode, NodeError
from kneenode.history import migrate
from kneenode.history.pseudonym import load_secret, pseudonym
from kneenode.history.record import ExamRecord, finite
from kneenode.history.tables import exams, measurements
from kneenode.settings import HistorySettings, Settings

HISTORY_DIR = "history"
SQLITE_FILE = "history.sqlite"
SECRET_FILE = "secret.key"
_COLUMNS = ("job_id", "study_uid", "series_uid", "series_version", "pseudonym", "side",
            "laterality", "study_date", "acquisition_date", "profile", "model_name",
            "model_version", "model_checksum", "qc_outcome", "qc_decision", "superseded_by")
_MIGRATED: set[str] = set()


def history_dir(settings: Settings) -> Path:
    """``data_dir/history``: the default SQLite database and secret (never removed by
    retention, which only removes job and spool folders)."""
    return Path(settings.data_dir) / HISTORY_DIR


def secret_path(settings: Settings) -> Path:
    """The node secret's file (``history.secret_file`` or ``data_dir/history/secret.key``)."""
    return settings.history.secret_file or history_dir(settings) / SECRET_FILE


def database_url(settings: Settings) -> sa.URL:
    """The history's SQLAlchemy URL: ``history.url`` (password from ``history.password_file``
    when the URL has none; plain ``postgresql://`` gets the psycopg 3 driver), else SQLite
    ``data_dir/history/history.sqlite``.

    Raises
    ------
    NodeError
        CONFIG_ERROR for a malformed URL or an unreadable password file.
    """
    cfg: HistorySettings = settings.history
    if not cfg.url:
        path = (history_dir(settings) / SQLITE_FILE).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return sa.URL.create("sqlite", database=str(path))
    try:
        url = sa.make_url(cfg.url)
    except sa.exc.ArgumentError:
        raise NodeError(ErrorCode.CONFIG_ERROR, "history.url is not a database URL",
                        hint="e.g. postgresql+psycopg://kneenode@db-host:5432/kneenode") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if cfg.password_file is not None and url.password is None:
        try:
            url = url.set(password=Path(cfg.password_file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise NodeError(ErrorCode.CONFIG_ERROR, f"history.password_file unreadable: "
                            f"{exc.strerror}", hint="fix the path or its permissions") from None
    return url


def _engine(url: sa.URL, timeout_s: float) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": timeout_s})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the one writer
            cur.close()

        return engine
    args = {"connect_timeout": max(1, int(timeout_s))} if url.get_backend_name() == "postgresql" else {}
    return sa.create_engine(url, connect_args=args, pool_pre_ping=True)


def _unavailable(url: sa.URL, exc: Exception) -> NodeError:
    where = url.render_as_string(hide_password=True)
    return NodeError(ErrorCode.HISTORY_UNAVAILABLE,
                     f"history database {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}"[:400])


def open_history(settings: Settings) -> HistoryStore:
    """Open (and create or migrate) the history of these settings.

    Raises
    ------
    NodeError
        HISTORY_UNAVAILABLE (retried) when the database cannot be reached or migrated;
        CONFIG_ERROR for a bad URL, password file or secret.
    """
    url = database_url(settings)
    engine = _engine(url, settings.history.connect_timeout_s)
    key = url.render_as_string(hide_password=False)
    try:
        if key not in _MIGRATED:
            migrate.upgrade(engine)
            _MIGRATED.add(key)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _unavailable(url, exc) from None
    return HistoryStore(engine, load_secret(secret_path(settings)))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _order(exam: ExamRecord) -> tuple[Any, ...]:
    when = exam.exam_date
    return (when is None, when or date.min, exam.acquisition_date or date.min,
            exam.recorded_at or datetime.min.replace(tzinfo=UTC), exam.job_id)


class HistoryStore:
    """Read and write the history (see the module docstring). Use as a context manager or
    :meth:`close` it."""

    def __init__(self, engine: sa.Engine, secret: bytes) -> None:
        self.engine = engine
        self._secret = secret

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def pseudonym(self, patient_id: str, issuer: str) -> str:
        """The pseudonym of a Patient ID + Issuer under this node's secret."""
        return pseudonym(self._secret, patient_id, issuer)

    # -- writing -----------------------------------------------------------------------------
    def record(self, exam: ExamRecord) -> None:
        """Store ``exam`` (replacing an earlier record of the same job) and mark earlier jobs
        of the same series and model as superseded by it.

        Raises
        ------
        NodeError
            HISTORY_UNAVAILABLE when the database refuses the write (retried by the stage).
        """
        results = finite(exam.results)
        row = {c: getattr(exam, c) for c in _COLUMNS}
        row.update(superseded_by=None, model_key=exam.model_key, results=results,
                   results_schema=int(results.get("schema_version") or 1),
                   recorded_at=datetime.now(UTC))
        values = [{"job_id": exam.job_id, "key": k, "value": v}
                  for k, v in replace(exam, results=results).measurements.items()]
        try:
            with self.engine.begin() as conn:
                conn.execute(measurements.delete().where(measurements.c.job_id == exam.job_id))
                conn.execute(exams.delete().where(exams.c.job_id == exam.job_id))
                conn.execute(exams.insert().values(**row))
                if values:
                    conn.execute(measurements.insert(), values)
                conn.execute(exams.update().where(
                    exams.c.series_uid == exam.series_uid, exams.c.model_key == exam.model_key,
                    exams.c.job_id != exam.job_id, exams.c.superseded_by.is_(None),
                ).values(superseded_by=exam.job_id))
        except SQLAlchemyError as exc:
            raise _unavailable(self.engine.url, exc) from None

    # -- reading -----------------------------------------------------------------------------
    def _select(self, where: Iterable[Any], include_superseded: bool = False) -> list[ExamRecord]:
        clauses = list(where)
        if not include_superseded:
            clauses.append(exams.c.superseded_by.is_(None))
        query = sa.select(exams).where(*clauses)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise _unavailable(self.engine.url, exc) from None
        return sorted((self._exam(r) for r in rows), key=_order)

    @staticmethod
    def _exam(row: Any) -> ExamRecord:
        fields = {c: row[c] for c in _COLUMNS}
        return ExamRecord(**fields, results=dict(row["results"]), recorded_at=_utc(row["recorded_at"]))

    def exams(self, pseudonym: str, side: str, model: str | None = None) -> list[ExamRecord]:
        """The current exams of one patient's knee, oldest first (by Study Date, else
        Acquisition Date; undated exams last); only those of ``model`` (a model key) if given."""
        where = [exams.c.pseudonym == pseudonym, exams.c.side == side]
        if model is not None:
            where.append(exams.c.model_key == model)
        return self._select(where)

    def latest_prior(self, pseudonym: str, side: str, model: str | None, before: date
                     ) -> ExamRecord | None:
        """The most recent current exam of the knee dated strictly before ``before`` (an exam
        of the same day is not a prior: it is the same visit), measured by ``model``."""
        dated = [e for e in self.exams(pseudonym, side, model)
                 if e.exam_date is not None and e.exam_date < before]
        return dated[-1] if dated else None

    def get(self, job_id: str) -> ExamRecord | None:
        """The record of one job (current or superseded)."""
        found = self._select([exams.c.job_id == job_id], include_superseded=True)
        return found[0] if found else None

    def all_exams(self, include_superseded: bool = False) -> list[ExamRecord]:
        """Every exam, ordered by pseudonym, side, then date (the export's order)."""
        found = self._select([], include_superseded)
        return sorted(found, key=lambda e: (e.pseudonym, e.side or "", *_order(e)))

    def measurement_rows(self, job_id: str) -> dict[str, float]:
        """The measurements table's values of one job (what SQL queries see)."""
        query = sa.select(measurements.c.key, measurements.c.value).where(
            measurements.c.job_id == job_id)
        with self.engine.connect() as conn:
            return {k: float(v) for k, v in conn.execute(query)}

    def patients(self) -> Iterator[dict[str, Any]]:
        """Per pseudonym and side: exam count, first and last exam date, model keys."""
        groups: dict[tuple[str, str], list[ExamRecord]] = {}
        for exam in self.all_exams():
            groups.setdefault((exam.pseudonym, exam.side or ""), []).append(exam)
        for (pseud, side), found in groups.items():
            dates = [e.exam_date for e in found if e.exam_date is not None]
            yield {"pseudonym": pseud, "side": side or None, "exams": len(found),
                   "first": min(dates) if dates else None, "last": max(dates) if dates else None,
                   "models": sorted({e.model_key for e in found})}
