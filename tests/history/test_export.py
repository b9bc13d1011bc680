"""``kneenode history export --csv``: one row per exam and knee with the old pipeline's column
names, and it round-trips (read back equal to the database) on both backends."""

from __future__ import annotations

import io
import subprocess
from datetime import date

import pytest

from kneenode.configfile import toml_document
from kneenode.history import open_history
from kneenode.history.export import columns, compare, csv_text, exam_row, read_csv
from pipeline.results import CSV_COLUMNS
from tests.support.node import KNEENODE, node_env


def _fill(store, make_exam) -> None:
    a, b = store.pseudonym("A", "H1"), store.pseudonym("B", "H1")
    store.record(make_exam("j1", a, "left", date(2024, 1, 2), thickness=0.1 + 0.2))
    store.record(make_exam("j2", a, "right", date(2024, 1, 2), acquisition_date=date(2024, 1, 2),
                           qc_outcome="warn"))
    store.record(make_exam("j3", b, None, None, qc_outcome=None, laterality="R"))
    store.record(make_exam("j4", a, "left", date(2025, 1, 3), qc_outcome="fail",
                           qc_decision="released", thickness=1.0 / 3.0))


def test_the_table_has_the_research_columns_and_round_trips(history, make_exam):
    _fill(history, make_exam)
    exams = history.all_exams()
    text = csv_text(exams)
    header = text.splitlines()[0].split(",")
    assert header == list(columns())
    # every column of the research pipeline's results.csv, in its order
    assert [c for c in header if c in CSV_COLUMNS] == list(CSV_COLUMNS)
    assert len(text.splitlines()) == 1 + 4  # one row per exam and knee
    rows = read_csv(io.StringIO(text))
    assert compare(exams, rows) == []
    by_job = {r["job_id"]: r for r in rows}
    assert by_job["j1"]["med_wb_fem_cart_mm_mean"] == 0.1 + 0.2  # bit for bit, not 0.3
    assert by_job["j3"]["side"] is None and by_job["j4"]["qc_decision"] == "released"
    assert rows == [exam_row(e) for e in exams]
    changed = text.replace(repr(1.0 / 3.0), "0.333")
    assert compare(exams, read_csv(io.StringIO(changed)))  # a changed value is caught


def test_a_foreign_csv_is_refused_naming_the_column():
    with pytest.raises(ValueError, match="column 0: 'patient_name'"):
        read_csv(io.StringIO("patient_name,side\nX,left\n"))


def test_cli_export_and_list(backend_settings, make_exam, tmp_path):
    with open_history(backend_settings) as store:
        _fill(store, make_exam)
        exams = store.all_exams()
        first = store.pseudonym("A", "H1")
    config = tmp_path / "kneenode.toml"
    config.write_text(toml_document({"data_dir": str(backend_settings.data_dir),
                                     "history": {"url": backend_settings.history.url}}))
    env = node_env(KNEENODE_CONFIG=str(config))
    out = tmp_path / "cohort.csv"
    run = subprocess.run([KNEENODE, "history", "export", "--csv", str(out)], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "wrote 4 exams" in run.stdout and "identical" in run.stdout
    assert compare(exams, read_csv(out)) == []
    stdout = subprocess.run([KNEENODE, "history", "export", "--csv"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert stdout.returncode == 0 and stdout.stdout == out.read_text()
    listing = subprocess.run([KNEENODE, "history", "list", "--pseudonym", first[:12]], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert listing.returncode == 0, listing.stderr
    assert first[:16] in listing.stdout and "j1" in listing.stdout
    assert "PHANTOM" not in listing.stdout and "A" not in listing.stdout.split()
