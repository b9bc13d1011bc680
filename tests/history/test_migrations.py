"""alembic migrations of the history, on SQLite and a real PostgreSQL: a fresh database goes to
head and matches the store's tables; a database left at the first revision, with exams in it,
upgrades and keeps them (the measurements table is backfilled from the documents)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime

import sqlalchemy as sa

from kneenode.history import migrate, open_history
from kneenode.history.store import _engine, database_url
from kneenode.history.tables import metadata


def _shape(engine: sa.Engine) -> dict[str, set[tuple[str, bool]]]:
    inspector = sa.inspect(engine)
    return {t: {(c["name"], bool(c["nullable"])) for c in inspector.get_columns(t)}
            for t in inspector.get_table_names() if t != migrate.VERSION_TABLE}


def test_a_fresh_database_is_migrated_to_head_and_matches_the_tables(backend_settings):
    with open_history(backend_settings) as store:
        assert migrate.current(store.engine) == migrate.head() == "0002"
        expected = {t.name: {(c.name, bool(c.nullable)) for c in t.columns}
                    for t in metadata.sorted_tables}
        assert _shape(store.engine) == expected
        indexes = {i["name"] for t in expected for i in sa.inspect(store.engine).get_indexes(t)}
        assert {i.name for t in metadata.sorted_tables for i in t.indexes} <= indexes


def test_an_upgrade_from_the_first_revision_keeps_and_backfills_exams(backend_settings):
    url = database_url(backend_settings)
    engine = _engine(url, 10)
    try:
        migrate.upgrade(engine, "0001")
        assert migrate.current(engine) == "0001"
        assert "measurements" not in sa.inspect(engine).get_table_names()
        doc = {"schema_version": 1, "med_wb_fem_cart_mm_mean": 1.875, "femur_ml": 61.5,
               "pat_cart_mm_mean": None}
        exams = sa.table("exams", *(sa.column(c) for c in (
            "job_id", "study_uid", "series_uid", "series_version", "pseudonym", "side",
            "study_date", "profile", "model_name", "model_version", "model_checksum",
            "model_key", "results_schema", "results", "recorded_at")))
        with engine.begin() as conn:  # written as a node on revision 0001 wrote it
            conn.execute(exams.insert().values(
                job_id="old-job", study_uid="1.2", series_uid="1.2.3", series_version=1,
                pseudonym="p" * 64, side="left", study_date=date(2024, 5, 6), profile="default",
                model_name="m", model_version="1", model_checksum="c" * 64, model_key="m@1#c",
                results_schema=1, results=json.dumps(doc), recorded_at=datetime.now(UTC)))
        migrate.upgrade(engine)
        assert migrate.current(engine) == "0002"
    finally:
        engine.dispose()
    with open_history(backend_settings) as store:
        exam = store.get("old-job")
        assert exam is not None and exam.study_date == date(2024, 5, 6) and exam.side == "left"
        assert exam.results == doc
        assert store.measurement_rows("old-job") == {"med_wb_fem_cart_mm_mean": 1.875,
                                                     "femur_ml": 61.5}


def test_concurrent_first_opens_create_the_schema_once(backend_settings):
    """Workers starting together on a fresh database: the migration lock serialises them."""
    from kneenode.history import store as store_module

    errors: list[BaseException] = []

    def open_once() -> None:
        try:
            engine = _engine(database_url(backend_settings), 30)
            try:
                migrate.upgrade(engine)
            finally:
                engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    store_module._MIGRATED.clear()
    with open_history(backend_settings) as store:
        assert migrate.current(store.engine) == migrate.head()
