"""The query/retrieve SCU (scp/priors.py) and the lookup (workers/priors.py) against a real
Orthanc holding several patients' knee exams; a PACS that is down, refuses or is slow.

Orthanc holds, for the current exam of patient P-A (issuer HOSPITAL_A, left knee, 2025-06-01):
an earlier left knee and an earlier right knee of P-A, an older left knee outside the window,
the left knee of P-B who has the same name, and a left knee of P-A issued by HOSPITAL_B
(another patient with the same ID). Only P-A's earlier left knee may ever be picked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from kneenode.orthanc import start_orthanc
from kneenode.settings import PriorsSettings, SelectionSettings
from pipeline.phantom import make_phantom, write_phantom
from scp.priors import (
    PacsPeer,
    PacsStatus,
    find_series,
    find_studies,
    get_series,
    move_series,
)
from scp.sender import Destination
from scp.spool import Spool
from tests.priors.exams import Exam, write_exam
from tests.priors.faults import SlowFindScp
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.procs import free_port, port_open, start, stop, wait_for
from workers.priors import Current, lookup, pick_series
from workers.selection import rules_for

NAME = "DOE^JANE"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Orthanc with the exams above; a DCMTK storescp as the C-MOVE destination KNEENODE."""
    root = tmp_path_factory.mktemp("pacs")
    left = write_phantom(make_phantom(21, "small", side="left"), root / "left")
    right = write_phantom(make_phantom(22, "small", side="right"), root / "right")
    lf, rf = list(left.dicom_files), list(right.dicom_files)
    exams = {
        "a_left": write_exam(lf, root / "a_left", patient_id="P-A", name=NAME,
                             study_date="20240115"),
        "a_right": write_exam(rf, root / "a_right", patient_id="P-A", name=NAME,
                              study_date="20240116"),
        "a_old": write_exam(lf, root / "a_old", patient_id="P-A", name=NAME,
                            study_date="20100101"),
        "b_left": write_exam(lf, root / "b_left", patient_id="P-B", name=NAME,
                             study_date="20240301"),
        "a_other_issuer": write_exam(lf, root / "a_hb", patient_id="P-A", name=NAME,
                                     study_date="20240601", issuer="HOSPITAL_B"),
    }
    sink_port = free_port()
    sink_dir = root / "sink"
    sink_dir.mkdir()
    sink = start(["storescp", "-aet", "KNEENODE", "-od", str(sink_dir), str(sink_port)],
                 log=root / "storescp.log", env=dcmtk_env())
    orthanc = start_orthanc(root / "orthanc", modalities={
        "kneenode": ["KNEENODE", "127.0.0.1", sink_port]})
    try:
        wait_for(lambda: port_open(sink_port), 60, what="storescp")
        for exam in exams.values():
            assert storescu(orthanc.dicom_port, exam.files, aet="KNEENODE",
                            aec="ORTHANC").returncode == 0
        yield {"orthanc": orthanc, "exams": exams, "sink": sink_dir,
               "peer": PacsPeer(Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),
                                "KNEENODE")}
    finally:
        orthanc.stop()
        stop(sink)


def _current() -> Current:
    return Current(patient_id="P-A", issuer="HOSPITAL_A", study_uid="2.25.1",
                   study_date="20250601", side="left", description="SAG 3D DESS KNEE PHANTOM")


def test_find_studies_same_patient_and_issuer_in_window(pacs: dict[str, Any]) -> None:
    exams: dict[str, Exam] = pacs["exams"]
    found = find_studies(pacs["peer"], patient_id="P-A", issuer="HOSPITAL_A",
                         study_date="20250601", max_age_days=3650, timeout=30)
    assert found.status.ok, found.status
    uids = [s.study_uid for s in found.studies]
    # newest first; P-B (same name), HOSPITAL_B's P-A and the 2010 exam are not there
    assert uids == [exams["a_right"].study_uid, exams["a_left"].study_uid], found.studies
    assert all(s.issuer in ("HOSPITAL_A", "") for s in found.studies)


def test_pick_takes_the_same_knee_only(pacs: dict[str, Any]) -> None:
    exams: dict[str, Exam] = pacs["exams"]
    rules = rules_for(SelectionSettings())
    studies = find_studies(pacs["peer"], patient_id="P-A", issuer="HOSPITAL_A",
                           study_date="20250601", max_age_days=3650, timeout=30).studies
    by_uid = {s.study_uid: s for s in studies}
    right = find_series(pacs["peer"], by_uid[exams["a_right"].study_uid], timeout=30)
    left = find_series(pacs["peer"], by_uid[exams["a_left"].study_uid], timeout=30)
    assert right.status.ok and left.status.ok
    chosen, why = pick_series(right.series, "left", rules)
    assert chosen is None and "the right knee (current: left)" in why[0], why
    chosen, why = pick_series(left.series, "left", rules)
    assert chosen is not None and chosen.series_uid == exams["a_left"].series_uid


def test_lookup_moves_the_earlier_same_knee(pacs: dict[str, Any]) -> None:
    """The whole lookup: find, pick (the right knee passed over), C-MOVE to KNEENODE."""
    exams: dict[str, Exam] = pacs["exams"]
    asked: list[str] = []

    def retrieve(series: Any) -> PacsStatus:
        return move_series(pacs["peer"], series, move_destination="KNEENODE", timeout=120)

    outcome = lookup(PriorsSettings(max_priors=2), pacs["peer"], _current(),
                     rules_for(SelectionSettings()), known=lambda c, s: False,
                     retrieve=retrieve, ask=lambda s, st: asked.append(s.series_uid))
    assert outcome.status == "found", outcome
    assert asked == [exams["a_left"].series_uid]
    assert [r["retrieve"]["state"] for r in outcome.requested] == ["ok"]
    assert any("right knee" in w for w in outcome.passed_over)
    got = list(pacs["sink"].glob("MR.*"))
    assert len(got) == len(exams["a_left"].files)


def test_move_to_an_unknown_destination_is_a_failed_status(pacs: dict[str, Any]) -> None:
    exams: dict[str, Exam] = pacs["exams"]
    studies = find_studies(pacs["peer"], patient_id="P-A", issuer="HOSPITAL_A",
                           study_date="20250601", max_age_days=3650, timeout=30).studies
    study = next(s for s in studies if s.study_uid == exams["a_left"].study_uid)
    series = find_series(pacs["peer"], study, timeout=30).series[0]
    status = move_series(pacs["peer"], series, move_destination="NOWHERE", timeout=60)
    assert status.state == "failed" and status.code is not None and status.code != 0, status
    assert f"0x{status.code:04X}" in status.message


def test_lookup_skips_what_the_history_holds_with_this_model(pacs: dict[str, Any]) -> None:
    exams: dict[str, Exam] = pacs["exams"]
    retrieved: list[str] = []
    outcome = lookup(PriorsSettings(), pacs["peer"], _current(), rules_for(SelectionSettings()),
                     known=lambda c, s: s.series_uid == exams["a_left"].series_uid,
                     retrieve=lambda s: retrieved.append(s.series_uid) or PacsStatus("ok"),
                     ask=lambda s, st: None)
    assert outcome.status == "found" and not retrieved
    assert [r["series_uid"] for r in outcome.in_history] == [exams["a_left"].series_uid]


def test_get_series_into_the_spool(pacs: dict[str, Any], tmp_path: Path) -> None:
    from kneenode.settings import Settings
    from workers.priors import _cget_writer

    exams: dict[str, Exam] = pacs["exams"]
    settings = Settings(data_dir=tmp_path / "data")
    studies = find_studies(pacs["peer"], patient_id="P-B", issuer="HOSPITAL_A",
                           study_date="20250601", max_age_days=3650, timeout=30).studies
    series = find_series(pacs["peer"], studies[0], timeout=30).series
    status = get_series(pacs["peer"], series[0], timeout=120,
                        on_instance=_cget_writer(settings, pacs["peer"]))
    assert status.ok, status
    spool = Spool(settings.spool_dir)
    stored = list(spool.incoming.glob(f"*/{exams['b_left'].series_uid}/*.dcm"))
    assert len(stored) == len(exams["b_left"].files)


def test_pacs_down_is_unreachable_at_once() -> None:
    peer = PacsPeer(Destination("NOBODY", "127.0.0.1", free_port()), "KNEENODE")
    started = time.monotonic()
    found = find_studies(peer, patient_id="P-A", issuer="", study_date="20250601",
                         max_age_days=365, timeout=20)
    assert found.status.state == "unreachable" and not found.studies
    assert time.monotonic() - started < 20


def test_pacs_refusing_the_association_is_refused() -> None:
    port = free_port()
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.require_calling_aet = ["SOMEONE_ELSE"]
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        found = find_studies(PacsPeer(Destination("PICKY", "127.0.0.1", port), "KNEENODE"),
                             patient_id="P-A", issuer="", study_date="20250601",
                             max_age_days=365, timeout=20)
        assert found.status.state == "refused", found.status
    finally:
        server.shutdown()


def test_pacs_slow_times_out_within_the_limit() -> None:
    scp = SlowFindScp(free_port(), delay_s=120).start()
    try:
        started = time.monotonic()
        outcome = lookup(PriorsSettings(find_timeout_s=3), PacsPeer(
            Destination("SLOWPACS", "127.0.0.1", scp.port), "KNEENODE"), _current(),
            rules_for(SelectionSettings()), known=lambda c, s: False,
            retrieve=lambda s: PacsStatus("ok"), ask=lambda s, st: None)
        took = time.monotonic() - started
        assert outcome.status == "timeout", outcome
        assert scp.finds == 1
        assert took < 60, took  # 3 s limit; generous for a loaded machine
    finally:
        scp.stop()



