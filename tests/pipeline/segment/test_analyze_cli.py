"""``kneenode analyze``: NIfTI, NRRD and DICOM inputs, outputs and error codes."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from kneenode.cli import app

from .conftest import SPACING, blob_volume

runner = CliRunner()


def _write(tmp_path, name: str) -> sitk.Image:
    img = sitk.GetImageFromArray(blob_volume())
    img.SetSpacing(tuple(reversed(SPACING)))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / name))
    return img


def test_analyze_nifti_and_nrrd(tiny_model, tmp_path):
    for name in ("knee.nii.gz", "knee.nrrd"):
        image = _write(tmp_path, name)
        out = tmp_path / f"out-{name}"
        result = runner.invoke(app, ["analyze", str(tmp_path / name), "--out", str(out),
                                     "--model-dir", str(tiny_model), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        labels = sitk.ReadImage(str(out / "labels.nii.gz"))
        assert labels.GetSize() == image.GetSize()
        assert np.allclose(labels.GetOrigin(), image.GetOrigin())
        results = json.loads((out / "results.json").read_text())
        assert results["input"]["size"] == list(image.GetSize())
        assert results["segmentation"]["model"]["dataset"] == "Dataset900_Tiny"
        assert results["model"] == results["segmentation"]["model"]
        assert results["segmentation"]["labels"]["1"] == "femur"


def test_analyze_keeps_other_sections_of_results(tiny_model, tmp_path):
    _write(tmp_path, "knee.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"quantify": {"x": 1}}))
    result = runner.invoke(app, ["analyze", str(tmp_path / "knee.nii.gz"), "-o", str(out),
                                 "--model-dir", str(tiny_model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["quantify"] == {"x": 1}


def test_analyze_dicom_folder(tiny_model, tmp_path):
    from pipeline.phantom import make_phantom, write_phantom

    ph = make_phantom(7, "small", side="right", orientation="coronal")
    write_phantom(ph, tmp_path / "ph")
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(tmp_path / "ph" / "dicom"), "--out", str(out),
                                 "--model-dir", str(tiny_model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    truth = sitk.ReadImage(str(tmp_path / "ph" / "truth" / "labels.nii.gz"))
    assert labels.GetSize() == truth.GetSize()
    assert np.allclose(labels.GetOrigin(), truth.GetOrigin(), atol=1e-3)
    assert np.allclose(labels.GetDirection(), truth.GetDirection(), atol=1e-5)
    assert json.loads((out / "results.json").read_text())["input"]["kind"] == "dicom"


def test_analyze_errors(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        ([str(tmp_path / "missing.nii.gz")], "FILE_NOT_FOUND"),
        ([str(tmp_path / "notes.txt")], "INVALID_FORMAT"),
    ]
    _write(tmp_path, "knee.nii.gz")
    cases.append(([str(tmp_path / "knee.nii.gz"), "--model-dir", str(tmp_path)], "CONFIG_ERROR"))
    for args, code in cases:
        result = runner.invoke(app, ["analyze", *args, "--out", str(tmp_path / "o"),
                                     "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert code in result.output
