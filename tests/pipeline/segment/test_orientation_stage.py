"""Model-card input orientation, the stage function and its outputs."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from pipeline.segment import folder as mf
from pipeline.segment import load_model, segment_image
from pipeline.segment.stage import segment_to_folder

from .conftest import SPACING, blob_volume, settings_for


def _image(array: np.ndarray, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(SPACING)))
    img.SetOrigin((3.0, -20.0, 7.5))
    img.SetDirection(direction)
    return img


def test_card_orientation_makes_prediction_independent_of_storage_order(tiny_model):
    mf.write_json(tiny_model / mf.MODEL_CARD, {"algorithm_name": "t", "input_orientation": "PIR"})
    model = load_model(settings_for(tiny_model, postprocess=False))
    pir = sitk.DICOMOrient(_image(blob_volume(seed=5)), "PIR")
    for code in ("LPS", "RAI", "LIP"):
        other = sitk.DICOMOrient(pir, code)
        labels = segment_image(other, model)
        assert labels.GetDirection() == other.GetDirection()
        assert labels.GetOrigin() == other.GetOrigin()
        back = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "PIR"))
        assert np.array_equal(back, sitk.GetArrayFromImage(segment_image(pir, model))), code


def test_oblique_image_round_trips_exactly(tiny_model):
    mf.write_json(tiny_model / mf.MODEL_CARD, {"input_orientation": "PIR"})
    model = load_model(settings_for(tiny_model))
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    image = _image(blob_volume(seed=6), direction)
    labels = segment_image(image, model)
    assert labels.GetSize() == image.GetSize()
    assert np.allclose(labels.GetDirection(), direction) and labels.GetOrigin() == image.GetOrigin()


def test_segment_to_folder_writes_labels_and_record(tiny_model, tmp_path):
    image = _image(blob_volume())
    record = segment_to_folder(image, tmp_path / "out", settings_for(tiny_model), device="cpu")
    labels = sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz"))
    assert labels.GetSize() == image.GetSize() and labels.GetOrigin() == image.GetOrigin()
    assert labels.GetPixelID() == sitk.sitkUInt8
    saved = json.loads((tmp_path / "out" / "segmentation.json").read_text())
    assert saved == record
    assert saved["model"]["dataset"] == "Dataset900_Tiny" and saved["model"]["is_demo"] is False
    counts = np.bincount(sitk.GetArrayFromImage(labels).ravel(), minlength=10)
    assert saved["voxels"]["femur"] == counts[1]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
