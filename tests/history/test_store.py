"""The history store on SQLite and on a real PostgreSQL: recording, versions, per-patient and
per-knee queries, priors; and both backends holding the same history."""

from __future__ import annotations

import dataclasses
import os
import stat
from datetime import date

import pytest

from kneenode.errors import ErrorCode, NodeError
from kneenode.history import model_key, open_history, pseudonym
from kneenode.history.store import secret_path
from tests.history.conftest import CARD, history_settings

D = date


def test_record_is_idempotent_per_job_and_exams_are_oldest_first(history, make_exam):
    p = history.pseudonym("P1", "HOSP")
    history.record(make_exam("j2", p, "left", D(2025, 6, 1), thickness=1.8))
    history.record(make_exam("j1", p, "left", D(2024, 6, 1), thickness=2.0))
    history.record(make_exam("j3", p, "left", None, thickness=1.7))  # undated: last
    history.record(make_exam("j2", p, "left", D(2025, 6, 1), thickness=1.9))  # re-recorded
    found = history.exams(p, "left")
    assert [e.job_id for e in found] == ["j1", "j2", "j3"]
    assert found[1].measurements["med_wb_fem_cart_mm_mean"] == 1.9  # replaced, not doubled
    assert history.measurement_rows("j2") == found[1].measurements  # the SQL table agrees
    assert found[0].recorded_at is not None and found[0].recorded_at.tzinfo is not None
    assert all(e.model_key == model_key(CARD) for e in found)


def test_left_and_right_knees_are_separate_series_of_exams(history, make_exam):
    p = history.pseudonym("P1", "HOSP")
    history.record(make_exam("left-1", p, "left", D(2024, 1, 1)))
    history.record(make_exam("right-1", p, "right", D(2024, 1, 1)))
    history.record(make_exam("right-2", p, "right", D(2025, 1, 1)))
    assert [e.job_id for e in history.exams(p, "left")] == ["left-1"]
    assert [e.job_id for e in history.exams(p, "right")] == ["right-1", "right-2"]
    assert history.latest_prior(p, "left", model_key(CARD), D(2025, 1, 1)).job_id == "left-1"
    assert history.latest_prior(p, "right", model_key(CARD), D(2025, 1, 1)).job_id == "right-1"


def test_same_id_from_two_issuers_and_two_ids_are_different_patients(history, make_exam):
    a, b = history.pseudonym("12345", "HOSP_A"), history.pseudonym("12345", "HOSP_B")
    c = history.pseudonym("12346", "HOSP_A")
    assert len({a, b, c}) == 3 and all(len(x) == 64 for x in (a, b, c))
    assert history.pseudonym("12345 ", "HOSP_A") == a  # DICOM padding does not matter
    for i, p in enumerate((a, b, c)):
        history.record(make_exam(f"j{i}", p, "left", D(2024, 1, 1 + i)))
    assert [[e.job_id for e in history.exams(p, "left")] for p in (a, b, c)] == [["j0"], ["j1"],
                                                                                 ["j2"]]


def test_latest_prior_is_strictly_earlier_and_of_the_same_model(history, make_exam):
    p = history.pseudonym("P1", "")
    other = {"model_version": "2.0", "model_checksum": "b" * 64}
    history.record(make_exam("base", p, "right", D(2023, 3, 1)))
    history.record(make_exam("year1", p, "right", D(2024, 3, 1)))
    history.record(make_exam("year1-v2", p, "right", D(2024, 3, 2), **other))
    history.record(make_exam("today", p, "right", D(2025, 3, 1)))
    key = model_key(CARD)
    assert history.latest_prior(p, "right", key, D(2025, 3, 1)).job_id == "year1"
    assert history.latest_prior(p, "right", key, D(2024, 3, 1)).job_id == "base"  # same day: no
    assert history.latest_prior(p, "right", key, D(2023, 3, 1)) is None
    v2 = "kneenode-demo@2.0#" + "b" * 16
    assert history.latest_prior(p, "right", v2, D(2025, 3, 1)).job_id == "year1-v2"
    assert history.latest_prior(p, "right", None, D(2025, 3, 1)).job_id == "year1-v2"
    assert [e.job_id for e in history.exams(p, "right", key)] == ["base", "year1", "today"]


def test_a_later_job_of_the_same_series_and_model_supersedes_the_earlier(history, make_exam):
    p = history.pseudonym("P1", "")
    first = make_exam("job-a", p, "left", D(2024, 1, 1), series_uid="1.2.3.4", thickness=2.0)
    history.record(first)
    history.record(dataclasses.replace(first, job_id="job-b", series_version=2,
                                       results={**first.results, "med_wb_fem_cart_mm_mean": 2.1}))
    other_model = dataclasses.replace(first, job_id="job-c", model_version="2.0")
    history.record(other_model)  # another model: kept beside, not superseding
    current = history.exams(p, "left")
    assert sorted(e.job_id for e in current) == ["job-b", "job-c"]
    old = history.get("job-a")
    assert old is not None and old.superseded_by == "job-b"
    assert {e.job_id for e in history.all_exams(include_superseded=True)} == {"job-a", "job-b",
                                                                               "job-c"}


def test_non_finite_numbers_are_stored_as_null(history, make_exam):
    p = history.pseudonym("P1", "")
    doc = {"schema_version": 1, "model": CARD, "med_wb_fem_cart_mm_mean": float("nan"),
           "pat_cart_mm_mean": 2.5, "t2_protocol": {"x": float("inf")}}
    history.record(make_exam("j", p, "left", D(2024, 1, 1), results=doc))
    got = history.get("j")
    assert got.results["med_wb_fem_cart_mm_mean"] is None and got.results["t2_protocol"]["x"] is None
    assert got.measurements == {"pat_cart_mm_mean": 2.5}


def test_sqlite_and_postgresql_give_the_same_history(tmp_path, postgres_url, make_exam):
    """The same recordings on both backends read back identical (apart from the clock)."""
    stores = [open_history(history_settings(tmp_path / "lite")),
              open_history(history_settings(tmp_path / "pg", postgres_url,
                                            secret_file=secret_path(history_settings(tmp_path / "lite"))))]
    try:
        assert [s.dialect for s in stores] == ["sqlite", "postgresql"]
        pseud = [stores[0].pseudonym(pid, iss) for pid, iss in (("A", "H1"), ("A", "H2"), ("B", ""))]
        assert pseud == [stores[1].pseudonym(pid, iss) for pid, iss in (("A", "H1"), ("A", "H2"),
                                                                        ("B", ""))]
        exams = [make_exam("j1", pseud[0], "left", D(2024, 1, 1), thickness=2.123456789012345),
                 make_exam("j2", pseud[0], "right", D(2024, 1, 1), acquisition_date=D(2024, 1, 1)),
                 make_exam("j3", pseud[0], "left", D(2025, 1, 1), qc_outcome="fail",
                           qc_decision="released", laterality="L"),
                 make_exam("j4", pseud[1], "left", None, acquisition_date=D(2023, 5, 5)),
                 make_exam("j5", pseud[2], None, D(2022, 2, 2), qc_outcome=None)]
        exams.append(dataclasses.replace(exams[0], job_id="j6", series_version=2))
        for store in stores:
            for exam in exams:
                store.record(exam)
        lite, pg = ([dataclasses.replace(e, recorded_at=None) for e in s.all_exams(True)]
                    for s in stores)
        assert lite == pg and len(lite) == 6
        for p in pseud:
            for side in ("left", "right"):
                assert ([e.job_id for e in stores[0].exams(p, side)]
                        == [e.job_id for e in stores[1].exams(p, side)])
        assert stores[0].exams(pseud[0], "left")[0].results == stores[1].exams(pseud[0], "left")[0].results
        assert [stores[0].measurement_rows(e.job_id) for e in exams] == [
            stores[1].measurement_rows(e.job_id) for e in exams]
    finally:
        for store in stores:
            store.close()


def test_the_secret_is_generated_once_0600_and_keys_the_pseudonym(tmp_path):
    settings = history_settings(tmp_path)
    with open_history(settings) as store:
        p = store.pseudonym("P1", "H")
    path = secret_path(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_bytes()) == 32
    with open_history(settings) as again:
        assert again.pseudonym("P1", "H") == p  # the same secret on every open
    assert pseudonym(path.read_bytes(), "P1", "H") == p
    assert pseudonym(b"another node's secret!!", "P1", "H") != p  # keyed: not guessable
    with pytest.raises(ValueError, match="empty Patient ID"):
        pseudonym(path.read_bytes(), "  ", "H")


def test_an_unreachable_database_is_a_retried_history_error(tmp_path):
    from tests.support.procs import free_port

    settings = history_settings(tmp_path, f"postgresql://nobody@127.0.0.1:{free_port()}/x",
                                connect_timeout_s=2)
    with pytest.raises(NodeError) as err:
        open_history(settings)
    assert err.value.code == ErrorCode.HISTORY_UNAVAILABLE and err.value.retryable
    assert "postgresql+psycopg://nobody@127.0.0.1" in err.value.message


def test_the_password_comes_from_its_file_and_is_never_shown(tmp_path, postgres_server):
    from kneenode.history import database_url

    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    url = database_url(history_settings(tmp_path, postgres_server.url("postgres"),
                                        password_file=pw))
    assert url.password == "s3cret" and "s3cret" not in str(url)
