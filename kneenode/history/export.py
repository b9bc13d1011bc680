"""The research cohort table: one CSV row per exam and knee, the old pipeline's column names.

Columns: ``pseudonym, study_date, acquisition_date``, then the research pipeline's
``<prefix>_thickness_results.csv`` columns as ``results.csv`` writes them
(``pipeline.results.CSV_COLUMNS``: ``study_uid, series_uid, side``, ``<region>_mm_{mean,std,
median}``, ``<region>[_deep|_superficial]_t2_ms_*``, ``<tissue>_ml``, ``bscore``,
``nsm_assd_*``), then provenance: ``job_id, series_version, profile, model_name,
model_version, model_checksum, qc_outcome, qc_decision, superseded_by``. Empty cell = null.

:func:`read_csv` parses such a file back into the same typed rows :func:`exam_row` makes, so a
written table can be compared with the database (:func:`compare`): numbers are written with
Python's shortest round-tripping repr, so they read back bit for bit.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from kneenode.history.record import ExamRecord, measurement_keys

HEAD = ("pseudonym", "study_date", "acquisition_date", "study_uid", "series_uid", "side")
PROVENANCE = ("job_id", "series_version", "profile", "model_name", "model_version",
              "model_checksum", "qc_outcome", "qc_decision", "superseded_by")
_TEXT_NOT_NULL = {"pseudonym", "study_uid", "series_uid", "job_id", "profile", "model_name",
                  "model_version", "model_checksum"}


def columns() -> tuple[str, ...]:
    """The export's header, in order."""
    return (*HEAD, *measurement_keys(), *PROVENANCE)


def exam_row(exam: ExamRecord) -> dict[str, Any]:
    """The typed row of one exam (None = empty cell)."""
    row: dict[str, Any] = {c: getattr(exam, c) for c in (*HEAD, *PROVENANCE)}
    measured = exam.measurements
    row.update({k: measured.get(k) for k in measurement_keys()})
    return row


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(exams: Iterable[ExamRecord], out: TextIO) -> int:
    """Write the table to ``out``; returns the number of rows."""
    header = columns()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    n = 0
    for exam in exams:
        row = exam_row(exam)
        writer.writerow([_cell(row[c]) for c in header])
        n += 1
    return n


def _parser(column: str) -> Callable[[str], Any]:
    if column in ("study_date", "acquisition_date"):
        return lambda s: date.fromisoformat(s) if s else None
    if column == "series_version":
        return int
    if column in _TEXT_NOT_NULL:
        return str
    if column in (*HEAD, *PROVENANCE):
        return lambda s: s or None
    return lambda s: float(s) if s else None


def read_csv(source: Path | TextIO) -> list[dict[str, Any]]:
    """The typed rows of an exported table (as :func:`exam_row` makes them).

    Raises
    ------
    ValueError
        When the header is not the export's, naming the first difference.
    """
    if isinstance(source, Path):
        with open(source, encoding="utf-8", newline="") as fh:
            return read_csv(fh)
    reader = csv.reader(source)
    header = tuple(next(reader, ()))
    if header != columns():
        wrong = next((f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(header, columns()))
                      if a != b), f"{len(header)} columns, expected {len(columns())}")
        raise ValueError(f"not a kneenode history export (column {wrong})")
    parsers = [_parser(c) for c in header]
    return [{c: p(v) for c, p, v in zip(header, parsers, row, strict=True)} for row in reader]


def compare(exams: Sequence[ExamRecord], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Differences between database records and read-back rows (empty: identical)."""
    expected = [exam_row(e) for e in exams]
    problems = [] if len(expected) == len(rows) else [
        f"{len(rows)} rows in the file, {len(expected)} exams in the history"]
    for want, got in zip(expected, rows):
        for key in columns():
            if want[key] != got[key]:
                problems.append(f"job {want['job_id']}: {key} {got[key]!r} != {want[key]!r}")
    return problems


def csv_text(exams: Iterable[ExamRecord]) -> str:
    """The table as a string."""
    buf = io.StringIO()
    write_csv(exams, buf)
    return buf.getvalue()
