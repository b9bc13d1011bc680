"""Fixtures of the history tests: the same tests on the embedded SQLite and on a real
PostgreSQL server (tests.support.postgres, started once per session, stopped by PID)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from kneenode.history import ExamRecord, HistoryStore, open_history
from kneenode.settings import Settings
from tests.support.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.workers.conftest import cluster_factory  # noqa: F401  (fixture)

BACKENDS = ("sqlite", "postgresql")
CARD = {"algorithm_name": "kneenode-demo", "algorithm_version": "1.0",
        "checkpoint_sha256": ["a" * 64]}


def history_settings(tmp_path: Path, url: str = "", **history: Any) -> Settings:
    """Node settings whose history is ``url`` (empty: SQLite under ``tmp_path/data``)."""
    return Settings(data_dir=tmp_path / "data", history={"url": url, **history})


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for a fresh history on each backend (a new PostgreSQL database per test)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    return history_settings(tmp_path, url)


@pytest.fixture
def history(backend_settings: Settings) -> Iterator[HistoryStore]:
    """An open store on each backend."""
    with open_history(backend_settings) as store:
        yield store


def results(**measurements: float | None) -> dict[str, Any]:
    """A minimal results.json document with a model card and the given measurements."""
    return {"schema_version": 1, "model": CARD, "qc": {"outcome": "pass"}, **measurements}


@pytest.fixture
def make_exam() -> Callable[..., ExamRecord]:
    """``make_exam(job_id, pseudonym, side, study_date, **fields)`` with demo-model defaults."""

    def make(job_id: str, pseudonym: str, side: str | None, study_date: date | None,
             *, series_uid: str | None = None, thickness: float = 2.0, **fields: Any) -> ExamRecord:
        doc = fields.pop("results", None) or results(med_wb_fem_cart_mm_mean=thickness,
                                                     lat_tib_cart_mm_mean=thickness + 0.5,
                                                     femur_ml=60.25, bscore=None)
        base: dict[str, Any] = {"study_uid": f"1.2.826.0.1.{zlib.crc32(job_id.encode())}",
                                "model_name": CARD["algorithm_name"],
                                "model_version": CARD["algorithm_version"],
                                "model_checksum": CARD["checkpoint_sha256"][0],
                                "qc_outcome": "pass"}
        base.update(fields)
        return ExamRecord(job_id=job_id, series_uid=series_uid or f"{base['study_uid']}.1",
                          pseudonym=pseudonym, side=side, study_date=study_date, results=doc,
                          **base)

    return make
