"""Follow-up phantoms: the same patient and knee later, with a known cartilage loss per region."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from pipeline.phantom import (
    Followup,
    followup_of,
    make_phantom,
    parse_loss,
    write_followup_pair,
)
from pipeline.phantom.geometry import REGION_CODES

LOSS = {"med_wb_fem_cart": 0.3, "med_tib_cart": 0.4}


def test_followup_thins_only_the_named_regions_and_keeps_the_bones() -> None:
    base = make_phantom(5, "small", side="left")
    fu = make_phantom(5, "small", side="left", followup=Followup(LOSS, interval_days=400))
    bt, ft = base.truth["thickness_mm"], fu.truth["thickness_mm"]
    for region in REGION_CODES:
        expected = bt[f"{region}_mm_mean"] - LOSS.get(region, 0.0)
        assert ft[f"{region}_mm_mean"] == pytest.approx(expected, abs=1e-9), region
    for label in (1, 2, 3):  # femur, tibia, patella: not one voxel moves
        assert np.array_equal(base.labels == label, fu.labels == label), label
    for key in ("femur_ml", "tibia_ml", "patella_ml", "lat_tib_cart_ml", "pat_cart_ml"):
        assert fu.truth["volumes_ml"][key] == base.truth["volumes_ml"][key], key
    assert fu.truth["volumes_ml"]["med_tib_cart_ml"] < 0.9 * base.truth["volumes_ml"]["med_tib_cart_ml"]
    rec = fu.truth["followup"]
    assert rec["loss_mm"] == {r: LOSS.get(r, 0.0) for r in REGION_CODES}
    assert rec["study_date"] == "2027-02-05" and rec["baseline_study_date"] == "2026-01-01"
    assert rec["baseline_thickness_mm"]["med_tib_cart"] == bt["med_tib_cart_mm_mean"]
    assert (base.study_date, fu.study_date) == ("20260101", "20270205")
    assert "followup" not in base.truth
    assert not np.array_equal(base.image, fu.image)  # a new noise realisation too


def test_written_pair_is_one_patient_two_studies(tmp_path: Path) -> None:
    pair = write_followup_pair(tmp_path, seed=7, preset="small", side="right")
    a, b = (pydicom.dcmread(p.dicom_files[0]) for p in (pair.baseline, pair.followup))
    assert (a.PatientID, str(a.PatientName)) == (b.PatientID, str(b.PatientName))
    assert a.get("IssuerOfPatientID") == b.get("IssuerOfPatientID")
    assert (a.StudyDate, b.StudyDate) == ("20260101", "20270101")
    assert a.Laterality == b.Laterality == "R"
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a.get(uid) != b.get(uid), uid
    truth = json.loads(pair.followup.truth_json.read_text())
    assert truth["followup"]["loss_mm"] == pair.loss_mm
    assert pair.loss_mm["med_wb_fem_cart"] == 0.3 and pair.loss_mm["lat_tib_cart"] == 0.0
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dicom3tools) is required"
    report = subprocess.run([exe, str(pair.followup.dicom_files[0])], check=False,
                            capture_output=True, text=True, timeout=60)
    assert "Error" not in report.stdout + report.stderr


def test_enhanced_followup_dates_every_frame(tmp_path: Path) -> None:
    pair = write_followup_pair(tmp_path, seed=8, enhanced=True, interval_days=30)
    ds = pydicom.dcmread(pair.followup.dicom_files[0], stop_before_pixels=True)
    assert ds.StudyDate == "20260131" and ds.AcquisitionDateTime.startswith("20260131")
    frame = ds.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0]
    assert frame.FrameAcquisitionDateTime.startswith("20260131")


def test_followup_of_rebuilds_the_baseline_knee_from_its_truth(tmp_path: Path) -> None:
    base = make_phantom(9, "small", orientation="coronal", qdess=True,
                        thickness={"pat_cart": 2.2}, rotation_deg=(1.0, 2.0, 3.0))
    fu = followup_of(base.truth, loss_mm={"pat_cart": 0.5}, interval_days=200)
    direct = make_phantom(9, "small", orientation="coronal", qdess=True, thickness={"pat_cart": 2.2},
                          rotation_deg=(1.0, 2.0, 3.0),
                          followup=Followup({"pat_cart": 0.5}, interval_days=200))
    assert fu.truth == direct.truth and np.array_equal(fu.labels, direct.labels)
    assert fu.truth["thickness_mm"]["pat_cart_mm_mean"] == pytest.approx(1.7)
    second = followup_of(fu.truth, loss_mm={"pat_cart": 0.8}, interval_days=400)
    assert second.followup.visit == 2  # losses stay relative to the baseline knee
    assert second.truth["thickness_mm"]["pat_cart_mm_mean"] == pytest.approx(1.4)


def test_bad_followups_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown cartilage regions"):
        Followup({"meniscus": 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        Followup({"pat_cart": -0.2})
    with pytest.raises(ValueError, match="less than 0.2 mm"):
        make_phantom(1, followup=Followup({"lat_wb_fem_cart": 5.0}))
    assert parse_loss(["medial=0.3", "pat_cart=0.1"]) == {
        "med_wb_fem_cart": 0.3, "med_tib_cart": 0.3, "pat_cart": 0.1}
    assert parse_loss("lateral=0.2") == {"lat_wb_fem_cart": 0.2, "lat_tib_cart": 0.2}
    for bad in ("medial", "medial=x", "tibia=0.1"):
        with pytest.raises(ValueError, match="--loss"):
            parse_loss(bad)
    with pytest.raises(ValueError, match="no phantom arguments"):
        followup_of({"seed": 1}, loss_mm={})


def test_cli_writes_a_followup(tmp_path: Path) -> None:
    from kneenode.cli_app import app
    from kneenode.commands import analysis  # noqa: F401  (registers the command)

    base, fu = tmp_path / "base", tmp_path / "fu"
    assert CliRunner().invoke(app, ["phantom", str(base), "--seed", "4", "--side", "left"]).exit_code == 0
    res = CliRunner().invoke(app, ["phantom", str(fu), "--followup-of", str(base), "--loss",
                                   "medial=0.3", "--loss", "pat_cart=0.2", "--interval-days", "500"])
    assert res.exit_code == 0, res.output
    assert "follow-up of 20270516" in res.output and "med_tib_cart=0.3" in res.output
    truth = json.loads((fu / "truth" / "truth.json").read_text())
    assert truth["side"] == "left" and truth["seed"] == 4
    assert truth["followup"]["loss_mm"]["pat_cart"] == 0.2 and truth["followup"]["interval_days"] == 500
    ds = pydicom.dcmread(min((fu / "dicom").glob("*.dcm")), stop_before_pixels=True)
    assert ds.StudyDate == "20270516" and ds.PatientID == "KNEENODE-PHANTOM-000004"
    for args, message in (
        (["--followup-of", str(base), "--seed", "2"], "--seed"),
        (["--followup-of", str(base), "--loss", "knee=1"], "unknown region"),
        (["--loss", "medial=0.1"], "--loss needs --followup-of"),
        (["--followup-of", str(tmp_path / "none")], "not a phantom folder"),
    ):
        bad = CliRunner().invoke(app, ["phantom", str(tmp_path / "x"), *args])
        assert bad.exit_code == 1 and message in " ".join(bad.output.split()), (args, bad.output)
