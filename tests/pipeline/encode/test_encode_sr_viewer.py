"""Viewer outlines in the SR (pipeline.encode.sr_viewer): what stock OHIF needs, still TID 1500.

The browser test (tests/viewer) proves OHIF opens the result; these tests pin the encoding itself:
every NUM of every volumetric group gains one INFERRED FROM SCOORD "Source of Measurement" that
outlines its segment on the segment's largest slice, SELECTED FROM that source image; nothing
else changes (results read back the same, dciodvfy finds no error).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from skimage.draw import polygon

from pipeline.encode.common import TISSUES
from pipeline.encode.seg import encode_seg
from pipeline.encode.sr import encode_sr, read_sr_measurements
from pipeline.encode.sr_viewer import add_measurement_sources, key_slice_outline, outlines_by_key
from tests.pipeline.encode.conftest import dciodvfy


@pytest.fixture
def seg(series, labels, card):
    return encode_seg(source=series, labels=labels, model=card, side="right")


@pytest.fixture
def sr(series, labels, seg, results, card, tmp_path):
    ds = encode_sr(source=series, seg=seg, results=results, model=card)
    add_measurement_sources(ds, source=series, labels=labels, seg=seg)
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_key_slice_outline_encloses_the_largest_cross_section():
    mask = np.zeros((5, 20, 30), bool)
    mask[1, 5:8, 5:9] = True      # 12 pixels
    mask[3, 4:14, 10:20] = True   # 100 pixels: the key slice
    mask[3, 0:2, 0:2] = True      # a smaller second region on the key slice, ignored
    k, points = key_slice_outline(mask)
    assert k == 3
    assert np.array_equal(points[0], points[-1])
    # Rasterise the outline (SCOORD pixel centres are at +0.5) and compare with the region.
    rr, cc = polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape=mask.shape[1:])
    drawn = np.zeros(mask.shape[1:], bool)
    drawn[rr, cc] = True
    region = np.zeros_like(drawn)
    region[4:14, 10:20] = True
    assert (drawn & region).sum() >= 0.8 * region.sum() and not (drawn & ~region).any()
    assert key_slice_outline(np.zeros((2, 4, 4), bool)) is None


def _groups(sr):
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return list(imaging.ContentSequence)


def test_every_measurement_has_a_source_outline(sr, series):
    uids = [d.SOPInstanceUID for d in series]
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert all(g.referenced_segment is not None  # still TID 1411 groups on SEG segments
               for g in doc.content.get_volumetric_roi_measurement_groups())
    groups = _groups(sr)
    assert groups
    for group in groups:
        nums = [i for i in group.ContentSequence if i.ValueType == "NUM"]
        assert nums
        for num in nums:
            scoords = [c for c in num.ContentSequence if c.ValueType == "SCOORD"]
            assert len(scoords) == 1
            item = scoords[0]
            assert item.RelationshipType == "INFERRED FROM"
            assert item.ConceptNameCodeSequence[0].CodeValue == "121112"  # Source of Measurement
            assert item.GraphicType == "POLYLINE"
            image = item.ContentSequence[0]
            assert image.RelationshipType == "SELECTED FROM"
            assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in uids


def test_outline_lies_on_the_segment(sr, series, labels):
    uids = [d.SOPInstanceUID for d in series]
    keys = {key: label for label, (key, _) in TISSUES.items()}
    for group in _groups(sr):
        key = next(str(i.TextValue) for i in group.ContentSequence if i.ValueType == "TEXT")
        if key not in keys or key == "fem_cart":
            continue
        num = next(i for i in group.ContentSequence if i.ValueType == "NUM")
        scoord = next(c for c in num.ContentSequence if c.ValueType == "SCOORD")
        k = uids.index(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        areas = (labels == keys[key]).reshape(len(uids), -1).sum(axis=1)
        assert areas[k] == areas.max()
        pts = np.asarray(scoord.GraphicData, float).reshape(-1, 2)
        # every vertex lies within half a pixel of a pixel of the segment on that slice
        mask = labels[k] == keys[key]
        for x, y in pts:
            r0 = int(np.clip(round(y - 0.5), 0, mask.shape[0] - 1))
            c0 = int(np.clip(round(x - 0.5), 0, mask.shape[1] - 1))
            window = mask[max(r0 - 1, 0):r0 + 2, max(c0 - 1, 0):c0 + 2]
            assert window.any(), (key, x, y)


def test_results_read_back_unchanged_and_evidence_lists_key_slices(sr, results, tmp_path):
    assert read_sr_measurements(sr) == results
    referenced = {r.ReferencedSOPInstanceUID
                  for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for r in series.ReferencedSOPSequence}
    for outlines in outlines_by_key(sr).values():
        assert outlines
    for group in _groups(sr):
        for num in (i for i in group.ContentSequence if i.ValueType == "NUM"):
            for c in num.ContentSequence:
                if c.ValueType == "SCOORD":
                    assert c.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID in referenced


def test_dciodvfy_finds_no_error(sr, tmp_path):
    errors, warnings = dciodvfy(sr, tmp_path, "sr-viewer.dcm")
    assert errors == []
    assert all("99KNEENODE" in w for w in warnings), warnings
