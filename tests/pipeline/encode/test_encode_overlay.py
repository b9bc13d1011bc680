"""Overlay series: one RGB Secondary Capture per slice, labels in colour, banner, dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from kneenode.errors import NodeError
from kneenode.settings import EncodeSettings
from pipeline.encode.common import COLORS
from pipeline.encode.overlay import encode_overlay
from tests.pipeline.encode.conftest import dciodvfy


def test_one_image_per_slice_rereadable(series, labels, card, tmp_path):
    images = encode_overlay(source=series, labels=labels, model=card, side="right")
    assert len(images) == len(series)
    assert len({d.SOPInstanceUID for d in images}) == len(images)
    assert len({d.SeriesInstanceUID for d in images}) == 1
    assert [int(d.InstanceNumber) for d in images] == list(range(1, len(series) + 1))
    for img, src in zip(images, series, strict=True):
        assert img.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert img.StudyInstanceUID == src.StudyInstanceUID and img.PatientID == src.PatientID
    path = tmp_path / "ov.dcm"
    images[6].save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    rgb = back.pixel_array
    assert rgb.shape == (int(back.Rows), int(back.Columns), 3)
    assert back.Laterality == "R" and back.SeriesNumber == 303
    assert (
        "NOT FOR DIAGNOSTIC USE" in back.ImageComments
        and "PHANTOM DEMO MODEL" in back.ImageComments
    )


def test_labels_drawn_in_colour_and_banner(series, labels, card):
    images = encode_overlay(source=series, labels=labels, model=card)
    demo = images[6].pixel_array
    plain = encode_overlay(source=series, labels=labels, model={**card, "is_demo": False})[
        6
    ].pixel_array

    def banner_rows(rgb: np.ndarray) -> int:
        return int(np.all(rgb[:, 0] == (160, 0, 0), axis=1).sum())

    top = banner_rows(demo)
    assert np.all(demo[:top, 0] == (160, 0, 0))  # the banner strip is on top
    assert top > banner_rows(plain) > 0  # the demo banner adds a line
    tile = demo[top : top + labels.shape[1], : labels.shape[2]].astype(int)
    grey = tile[..., 0] == tile[..., 1]
    lab = labels[6]
    assert np.all(grey[lab == 0] & (tile[..., 1] == tile[..., 2])[lab == 0])  # background untouched
    femur = lab == 1
    inner = (
        femur
        & np.roll(femur, 1, 0)
        & np.roll(femur, -1, 0)
        & np.roll(femur, 1, 1)
        & np.roll(femur, -1, 1)
    )
    r, g, b = COLORS[1]
    assert np.all(tile[inner][:, 0] >= tile[inner][:, 2])  # femur colour (warm) blended in
    edge = femur & ~inner
    np.testing.assert_array_equal(tile[edge][0], [r, g, b])  # outline opaque


def test_dciodvfy_no_errors(series, labels, card, tmp_path):
    images = encode_overlay(source=series, labels=labels, model=card, side="left")
    errors, warnings = dciodvfy(images[0], tmp_path)
    assert errors == [] and warnings == []


def test_needs_pixels_and_aligned_labels(series, labels, card):
    with pytest.raises(NodeError):
        encode_overlay(source=series, labels=labels[1:], model=card)
    bare = [pydicom.Dataset(dict(d.items())) for d in series]
    for d in bare:
        del d.PixelData
    with pytest.raises(NodeError):
        encode_overlay(source=bare, labels=labels, model=card)


def test_jpeg_option(series, labels, card, tmp_path):
    opts = EncodeSettings(overlay_jpeg_quality=90)
    images = encode_overlay(source=series, labels=labels, model=card, side="right", options=opts)
    plain = encode_overlay(source=series, labels=labels, model=card, side="right")
    errors, warnings = dciodvfy(images[6], tmp_path)
    assert errors == [] and warnings == []
    path = tmp_path / "jpeg.dcm"
    images[6].save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert back.LossyImageCompression == "01" and float(back.LossyImageCompressionRatio) > 1
    decoded = back.pixel_array.astype(int)  # converted to RGB by pydicom
    reference = plain[6].pixel_array.astype(int)
    assert decoded.shape == reference.shape
    assert np.abs(decoded - reference).mean() < 8  # lossy, but the same picture


@pytest.mark.parametrize("outcome", ["pass", "warn", "fail"])
def test_qc_outcome_banner_and_comments(series, labels, card, tmp_path, outcome):
    from pipeline.encode.common import QC_COLORS

    qc = {"outcome": outcome, "reasons": [] if outcome == "pass" else [
        {"severity": outcome, "message": "patellar cartilage missing (0 mm3) " * 6}]}
    plain = encode_overlay(source=series, labels=labels, model=card)[6].pixel_array
    flagged = encode_overlay(source=series, labels=labels, model=card, qc=qc)
    rgb = flagged[6].pixel_array
    assert rgb.shape[0] > plain.shape[0]  # one more banner strip above the image
    colour = np.array(QC_COLORS[outcome])
    is_colour = np.abs(rgb.astype(int) - colour).sum(axis=2) < 6
    strip_rows = np.flatnonzero(is_colour.mean(axis=1) > 0.5)
    assert len(strip_rows) >= 5 and strip_rows.max() < rgb.shape[0] - labels.shape[1]
    assert not (np.abs(plain.astype(int) - colour).sum(axis=2) < 6).mean(axis=1).max() > 0.5
    head = {"pass": "QC PASSED", "warn": "QC WARNING", "fail": "QC FAILED"}[outcome]
    assert all(head in d.ImageComments for d in flagged)
    errors, _ = dciodvfy(flagged[6], tmp_path, f"ov-{outcome}.dcm")
    assert errors == []
