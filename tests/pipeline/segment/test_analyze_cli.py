"""``kneenode analyze``: NIfTI, NRRD and DICOM inputs, outputs and error codes.

The chain-level checks (same results as the node, selection, refusals, ``--encode``) are in
``tests/workers/test_analyze_chain.py``.
"""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from kneenode.cli import app
from pipeline.results import validate_results

from .conftest import SPACING, blob_volume

runner = CliRunner()


def _write(tmp_path, name: str) -> sitk.Image:
    img = sitk.GetImageFromArray(blob_volume())
    img.SetSpacing(tuple(reversed(SPACING)))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / name))
    return img


def test_analyze_nifti_nrrd_and_metaimage(tiny_model, tmp_path):
    for name in ("knee.nii.gz", "knee.nrrd", "knee.mha"):
        image = _write(tmp_path, name)
        out = tmp_path / f"out-{name}"
        result = runner.invoke(app, ["analyze", str(tmp_path / name), "--out", str(out),
                                     "--model-dir", str(tiny_model), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        labels = sitk.ReadImage(str(out / "segment" / "labels.nii.gz"))
        assert labels.GetSize() == image.GetSize()
        assert np.allclose(labels.GetOrigin(), image.GetOrigin())
        results = json.loads((out / "results.json").read_text())
        assert results == validate_results(results)  # the schema, every field present
        assert results["input"]["size"] == list(image.GetSize())
        assert results["input"]["kind"] == {"nii": "nifti", "nrrd": "nrrd", "mha": "image"}[name.split(".")[1]]
        assert results["study_uid"] is None and results["selection"] is None
        assert results["model"]["dataset"] == "Dataset900_Tiny"
        assert results["segmentation"]["labels"]["1"] == "femur"
        assert (out / "results.csv").read_text().startswith("study_uid,series_uid,side,")


def test_analyze_writes_a_fresh_record_over_an_old_one(tiny_model, tmp_path):
    """A rerun into the same folder replaces results.json (a stale key would fail the schema)."""
    _write(tmp_path, "knee.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"quantify": {"x": 1}}))
    result = runner.invoke(app, ["analyze", str(tmp_path / "knee.nii.gz"), "-o", str(out),
                                 "--set", f"segment.model_dir={tiny_model}",
                                 "--set", "segment.device=cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert "quantify" not in results and results["schema_version"] == 1


def test_analyze_dicom_folder(tiny_model, tmp_path):
    from pipeline.phantom import make_phantom, write_phantom

    ph = make_phantom(7, "small", side="right", orientation="coronal")
    write_phantom(ph, tmp_path / "ph")
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(tmp_path / "ph" / "dicom"), "--out", str(out),
                                 "--model-dir", str(tiny_model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    labels = sitk.ReadImage(str(out / "segment" / "labels.nii.gz"))
    truth = sitk.ReadImage(str(tmp_path / "ph" / "truth" / "labels.nii.gz"))
    assert labels.GetSize() == truth.GetSize()
    assert np.allclose(labels.GetOrigin(), truth.GetOrigin(), atol=1e-3)
    assert np.allclose(labels.GetDirection(), truth.GetDirection(), atol=1e-5)
    assert json.loads((out / "results.json").read_text())["input"]["kind"] == "dicom"
    assert len(list((out / "series").glob("*.dcm"))) == len(list((tmp_path / "ph" / "dicom").iterdir()))


def test_analyze_errors(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        ([str(tmp_path / "missing.nii.gz")], "FILE_NOT_FOUND"),
        ([str(tmp_path / "notes.txt")], "INVALID_FORMAT"),
    ]
    _write(tmp_path, "knee.nii.gz")
    cases.append(([str(tmp_path / "knee.nii.gz"), "--model-dir", str(tmp_path)], "CONFIG_ERROR"))
    cases.append(([str(tmp_path / "knee.nii.gz"), "--encode"], "INVALID_FORMAT: --encode needs a DICOM"))
    for args, code in cases:
        result = runner.invoke(app, ["analyze", *args, "--out", str(tmp_path / "o"),
                                     "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert code in " ".join(result.output.split())
    bad_options = [(["--set", "segment.nope=1"], "segment.nope"),
                   (["--set", "jobs.selection.nope=1"], "jobs.selection.nope"),
                   (["--set", "tta"], "CONFIG_ERROR: --set 'tta': expected KEY=VALUE"),
                   (["--set", "segment.tile_step_size=2"], "segment.tile_step_size"),
                   (["--profile", "research"], "CONFIG_ERROR: no profile 'research'")]
    for args, text in bad_options:
        result = runner.invoke(app, ["analyze", str(tmp_path / "knee.nii.gz"), *args])
        assert result.exit_code == 2, result.output
        assert text in " ".join(result.output.split())
