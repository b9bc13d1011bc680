"""``kneenode analyze`` runs the node's chain: selection, honest refusals, encode + verify.

The SR and SEG inputs are the node's own result objects (highdicom-built by ``pipeline.encode``)
of a phantom, written by ``analyze --encode``; the CT, blank and non-knee series are the same
phantom with pydicom edits. The node's stage ``prepare`` refuses blank volumes and non-image
objects itself (checked here without the CLI too).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from typer.testing import CliRunner

from kneenode.cli import app
from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import EncodeSettings, Settings
from pipeline.encode.verify import expected_outputs, verify_outputs
from pipeline.phantom import make_phantom, write_phantom
from pipeline.results import validate_results
from tests.support.mr import mr_series
from workers.analysis import prepare
from workers.stages import StageContext, fresh_work_dir

runner = CliRunner()
SLICES = 48  # the small phantom's slice count


def _analyze(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["analyze", *args, "--device", "cpu"])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(phantom DICOM folder, ``analyze --encode`` output folder), made once for the module."""
    root = tmp_path_factory.mktemp("analyze")
    paths = write_phantom(make_phantom(11, "small"), root / "ph")
    out = root / "out"
    code, output = _analyze(str(paths.dicom_dir), "--out", str(out), "--encode")
    assert code == 0, output
    return paths.dicom_dir, out


def _variant(src: Path, dst: Path, edit: Callable[[Dataset], None]) -> Path:
    dst.mkdir(parents=True)
    for path in sorted(src.glob("*.dcm")):
        ds = dcmread(path)
        edit(ds)
        ds.save_as(dst / path.name)
    return dst


def _orbit(ds: Dataset) -> None:
    ds.BodyPartExamined = "ORBIT"
    ds.SeriesDescription = ds.ProtocolName = "T1 MPRAGE SAG"
    ds.SequenceName = "tfl3d1_16ns"


def _blank(ds: Dataset) -> None:
    ds.PixelData = bytes(len(ds.PixelData))


def _ct(ds: Dataset) -> None:
    ds.Modality, ds.SOPClassUID = "CT", CTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage


def test_analyze_encode_writes_every_object_and_verifies_it(encoded: tuple[Path, Path]) -> None:
    _, out = encoded
    manifest = json.loads((out / "verify" / "manifest.json").read_text())
    assert manifest["expected"] == {"seg": 1, "sr": 1, "overlay": SLICES, "pdf": 1}
    assert {k: len(v) for k, v in manifest["files"].items()} == manifest["expected"]
    results = json.loads((out / "results.json").read_text())
    assert results == validate_results(results)
    seg = dcmread(next((out / "encode" / "seg").glob("*.dcm")))
    assert seg.StudyInstanceUID == results["study_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == results["series_uid"]


def test_analyze_refuses_what_the_node_refuses(encoded: tuple[Path, Path], tmp_path: Path) -> None:
    """SR, SEG, CT, a blank MR and a non-knee MR: each refused with its own code and reason,
    and no results.json is left behind."""
    dicom, out = encoded
    sr = tmp_path / "sr"
    shutil.copytree(out / "encode" / "sr", sr)
    seg = tmp_path / "seg"
    shutil.copytree(out / "encode" / "seg", seg)
    cases = {
        sr: ("NOT_AN_IMAGE", "not an image series: Comprehensive 3D SR Storage"),
        seg: ("NOT_AN_IMAGE", "not an image series: Segmentation Storage"),
        _variant(dicom, tmp_path / "ct", _ct): ("NOT_SELECTED", "modality CT is not one of ['MR']"),
        _variant(dicom, tmp_path / "blank", _blank): ("BLANK_IMAGE", "blank (every voxel is 0)"),
        _variant(dicom, tmp_path / "orbit", _orbit): ("NOT_KNEE", "body_part_examined='ORBIT'"),
    }
    for folder, (code, reason) in cases.items():
        target = tmp_path / f"out-{folder.name}"
        exit_code, output = _analyze(str(folder), "--out", str(target))
        assert exit_code == 1, output
        assert f"{code}: " in output and reason in output, (folder.name, output)
        assert not (target / "results.json").exists()


def test_force_analyses_a_non_knee_series_and_records_it(encoded: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    dicom, _ = encoded
    orbit = _variant(dicom, tmp_path / "orbit", _orbit)
    out = tmp_path / "out"
    code, output = _analyze(str(orbit), "--out", str(out), "--force")
    assert code == 0, output
    assert "forced: NOT_KNEE" in output
    results = json.loads((out / "results.json").read_text())
    assert results["selection"]["forced"] is True and results["selection"]["code"] == "NOT_KNEE"
    assert "ORBIT" in results["selection"]["reason"]
    assert results["segmentation"]["voxels"]["femur"] > 0 and results == validate_results(results)
    # --force overrides selection only: an SR or a blank volume is never analysed
    blank = _variant(dicom, tmp_path / "blank", _blank)
    code, output = _analyze(str(blank), "--out", str(tmp_path / "o2"), "--force")
    assert code == 1 and "BLANK_IMAGE" in output


def _ctx(tmp_path: Path, series: Path) -> StageContext:
    job = tmp_path / "job"
    return StageContext(job_id="j", job_dir=job, series_path=series,
                        work_dir=fresh_work_dir(job, "prepare"), summary={},
                        settings=Settings(data_dir=tmp_path))


def test_node_prepare_refuses_blank_volumes_and_non_images(encoded: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    """The node's own ``prepare`` (no selection in front of it) refuses them too."""
    _, out = encoded
    const = tmp_path / "const"
    paths = mr_series(const, slices=24)
    for p in paths:
        ds = dcmread(p)
        ds.PixelData = b"\x07\x00" * (len(ds.PixelData) // 2)
        ds.save_as(p)
    with pytest.raises(NodeError) as err:
        prepare(_ctx(tmp_path / "a", const))
    assert err.value.code is ErrorCode.BLANK_IMAGE and "constant (every voxel is 7)" in err.value.message
    assert not err.value.retryable
    pdf = tmp_path / "pdf"
    shutil.copytree(out / "encode" / "pdf", pdf)
    with pytest.raises(NodeError) as err:
        prepare(_ctx(tmp_path / "b", pdf))
    assert err.value.code is ErrorCode.NOT_AN_IMAGE and "Encapsulated PDF Storage" in err.value.message


def test_verify_finds_missing_short_unreadable_and_unasked_outputs(encoded: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    _, out = encoded
    study = json.loads((out / "results.json").read_text())["study_uid"]
    expected = expected_outputs(EncodeSettings(), SLICES)

    def broken(name: str, damage: Callable[[Path], None]) -> str:
        folder = tmp_path / name
        shutil.copytree(out / "encode", folder)
        damage(folder)
        with pytest.raises(NodeError) as err:
            verify_outputs(folder, expected, study_uid=study)
        assert err.value.code is ErrorCode.OUTPUT_MISSING and not err.value.retryable
        return err.value.message

    assert set(verify_outputs(out / "encode", expected, study_uid=study)) == set(expected)
    first_overlay = lambda f: min((f / "overlay").glob("*.dcm"))
    assert broken("short", lambda f: first_overlay(f).unlink()) == \
        f"overlay: {SLICES - 1} frames, expected {SLICES}"
    assert broken("nopdf", lambda f: shutil.rmtree(f / "pdf")) == "pdf: missing (encode.pdf is on)"
    sr_file = lambda f: next((f / "sr").glob("*.dcm"))
    message = broken("torn", lambda f: sr_file(f).write_bytes(sr_file(f).read_bytes()[:300]))
    assert message.startswith("sr/") and message.endswith("has no ContentSequence")
    message = broken("junk", lambda f: sr_file(f).write_bytes(b"not DICOM at all" * 20))
    assert message.startswith("sr/") and "does not re-read" in message
    no_pdf = expected_outputs(EncodeSettings(pdf=False), SLICES)
    with pytest.raises(NodeError) as err:
        verify_outputs(out / "encode", no_pdf, study_uid=study)
    assert err.value.message == "pdf: written but not asked for by the encode settings"
    with pytest.raises(NodeError) as err:
        verify_outputs(out / "encode", expected, study_uid="1.2.3")
    assert "not in the source study" in err.value.message


def test_analyze_encodes_and_verifies_an_enhanced_mr_qdess(tmp_path: Path) -> None:
    """One multi-frame object (two echoes as frames): the overlay frames add up to the slices."""
    ph = make_phantom(13, "small", orientation="coronal", qdess=True)
    paths = write_phantom(ph, tmp_path / "ph", enhanced=True)
    out = tmp_path / "out"
    code, output = _analyze(str(paths.dicom_dir), "--out", str(out), "--encode")
    assert code == 0, output
    manifest = json.loads((out / "verify" / "manifest.json").read_text())
    assert manifest["expected"]["overlay"] == ph.grid.size[2]
    results = json.loads((out / "results.json").read_text())
    assert results["input"]["kind"] == "dicom-multiframe" and len(results["input"]["echo_times_ms"]) == 2
    assert results["t2_protocol"] is not None


def test_analyze_takes_the_profile_its_route_gives_and_set_wins(encoded: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """Routing -> profile -> ``--set`` -> the job's snapshot, as for a node job."""
    dicom, _ = encoded
    config = tmp_path / "kneenode.toml"
    config.write_text('[profiles.segpdf]\nencode = {sr = false, overlay = false}\n\n'
                      '[[routes]]\nname = "knees"\nbody_part = "KNEE"\nprofile = "segpdf"\n',
                      encoding="utf-8")

    def run(out: Path, *args: str) -> tuple[dict, dict]:
        result = runner.invoke(app, ["--config", str(config), "analyze", str(dicom), "--out",
                                     str(out), "--encode", "--device", "cpu", *args])
        assert result.exit_code == 0, result.output
        snapshot = json.loads((out / "config.json").read_text())
        return json.loads((out / "verify" / "manifest.json").read_text())["expected"], snapshot

    expected, snapshot = run(tmp_path / "routed")
    assert expected == {"seg": 1, "pdf": 1}
    assert (snapshot["profile"], snapshot["route"]) == ("segpdf", "knees")
    expected, snapshot = run(tmp_path / "chosen", "--profile", "default", "--set", "encode.pdf=false")
    assert expected == {"seg": 1, "sr": 1, "overlay": SLICES} and snapshot["profile"] == "default"
    assert snapshot["sets"] == {"encode": {"pdf": False}, "segment": {"device": "cpu"}}


def test_analyze_refuses_what_an_ignore_route_ignores(encoded: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """An ``ignore`` route refuses like selection (``--force`` records it); a node-wide ``--set``
    (``jobs.selection.*``) applies before routing and selection."""
    dicom, _ = encoded
    config = tmp_path / "kneenode.toml"
    config.write_text('[[routes]]\nname = "orbits"\nbody_part = "ORBIT"\naction = "ignore"\n',
                      encoding="utf-8")
    orbit = _variant(dicom, tmp_path / "orbit", _orbit)
    refused = "NOT_SELECTED: route 'orbits' ignores this series (body_part 'ORBIT' ~ /ORBIT/)"
    result = runner.invoke(app, ["--config", str(config), "analyze", str(orbit), "--out",
                                 str(tmp_path / "o1"), "--device", "cpu"])
    assert result.exit_code == 1 and refused in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o1" / "results.json").exists()
    code, output = _analyze(str(dicom), "--out", str(tmp_path / "o2"),
                            "--set", 'jobs.selection.modalities=["CT"]')
    assert code == 1 and "NOT_SELECTED: modality MR is not one of ['CT']" in output, output
    out = tmp_path / "forced"
    result = runner.invoke(app, ["--config", str(config), "analyze", str(orbit), "--out",
                                 str(out), "--device", "cpu", "--force"])
    assert result.exit_code == 0, result.output
    assert "forced: NOT_SELECTED: route 'orbits'" in " ".join(result.output.split())
    selection = json.loads((out / "results.json").read_text())["selection"]
    assert selection == {"forced": True, "code": "NOT_SELECTED", "reason": refused.split(": ", 1)[1]}
    assert json.loads((out / "config.json").read_text())["route"] == "orbits"
