"""SEG encoder: voxel-exact round trip through highdicom, dciodvfy, codes, references."""

from __future__ import annotations

import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import EncodeSettings
from pipeline.encode.seg import encode_seg, seg_bytes, segment_numbers
from tests.pipeline.encode.conftest import dciodvfy
from tests.pipeline.encode.synthetic import highdicom_reference_seg


def _reread(ds: Dataset, tmp_path: Path) -> hd.seg.Segmentation:
    path = tmp_path / "seg.dcm"
    path.write_bytes(seg_bytes(ds))
    return hd.seg.segread(path)


def _tissues(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[(out >= 11) & (out <= 15)] = 4  # the femoral cartilage segment covers its subregions
    return out


@pytest.mark.parametrize("keep_empty", [True, False])
def test_round_trip_voxel_for_voxel(series, labels, card, tmp_path, keep_empty):
    opts = EncodeSettings(seg_keep_empty_frames=keep_empty)
    seg = _reread(encode_seg(source=series, labels=labels, model=card, options=opts), tmp_path)
    uids = [d.SOPInstanceUID for d in series]
    back = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=list(range(1, 10)), combine_segments=True
    )
    np.testing.assert_array_equal(back, _tissues(labels))
    full = len(series) * 9
    assert (seg.NumberOfFrames == full) if keep_empty else (seg.NumberOfFrames < full)


def test_subregion_segments(series, labels, card, tmp_path):
    opts = EncodeSettings(seg_subregions=True)
    ds = encode_seg(source=series, labels=labels, model=card, options=opts)
    seg = _reread(ds, tmp_path)
    numbers = segment_numbers(include_subregions=True)
    assert seg.get_segment_numbers() == list(range(1, 15))
    assert ds.SegmentsOverlap == "YES"
    uids = [d.SOPInstanceUID for d in series]
    for label in range(11, 16):
        back = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[numbers[label]]
        )
        np.testing.assert_array_equal(back[..., 0].astype(bool), labels == label)
    assert [s.TrackingID for s in ds.SegmentSequence][9:] == [
        "ant_fem_cart",
        "med_wb_fem_cart",
        "lat_wb_fem_cart",
        "med_post_fem_cart",
        "lat_post_fem_cart",
    ]


def test_fast_path_matches_highdicom(series, labels, card):
    """Per-frame items and pixel data equal what highdicom.seg.Segmentation writes itself."""
    ours = encode_seg(source=series, labels=labels, model=card)
    ref = highdicom_reference_seg(series, labels, card)
    assert int(ours.NumberOfFrames) == int(ref.NumberOfFrames)
    assert ours.PixelData == ref.PixelData
    for a, b in zip(
        ours.PerFrameFunctionalGroupsSequence, ref.PerFrameFunctionalGroupsSequence, strict=True
    ):
        assert list(a.FrameContentSequence[0].DimensionIndexValues) == list(
            b.FrameContentSequence[0].DimensionIndexValues
        )
        assert (
            a.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            == b.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        )
        src_a = a.DerivationImageSequence[0].SourceImageSequence[0]
        src_b = b.DerivationImageSequence[0].SourceImageSequence[0]
        assert src_a.ReferencedSOPInstanceUID == src_b.ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in a.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in b.PlanePositionSequence[0].ImagePositionPatient],
        )
    assert ours.SharedFunctionalGroupsSequence == ref.SharedFunctionalGroupsSequence
    assert [
        i.ReferencedSOPInstanceUID
        for i in ours.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    ] == [
        i.ReferencedSOPInstanceUID
        for i in ref.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    ]


@pytest.mark.parametrize(
    "opts", [EncodeSettings(), EncodeSettings(seg_subregions=True, seg_keep_empty_frames=False)]
)
def test_dciodvfy_no_errors(series, labels, card, tmp_path, opts):
    errors, warnings = dciodvfy(
        encode_seg(source=series, labels=labels, model=card, side="left", options=opts), tmp_path
    )
    assert errors == []
    assert warnings == []


def test_identity_codes_and_algorithm(series, labels, card):
    ds = encode_seg(source=series, labels=labels, model=card, side="right")
    src = series[0]
    for kw in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "AccessionNumber",
        "FrameOfReferenceUID",
    ):
        assert ds[kw].value == src[kw].value
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.SeriesNumber == 301
    assert ds.SeriesDescription.startswith("KneeNode SEG")
    designators = set()

    def walk(d: Dataset) -> None:
        for elem in d:
            if elem.keyword == "CodingSchemeDesignator":
                designators.add(elem.value)
            elif elem.VR == "SQ":
                for item in elem.value:
                    walk(item)

    walk(ds)
    assert "SRT" not in designators and "SCT" in designators
    femur = ds.SegmentSequence[0]
    assert femur.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Femur.value
    assert femur.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert femur.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "24028007"
    algo = femur.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("kneenode-phantom-demo", "0.1.0")
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    medial = ds.SegmentSequence[4]
    assert (
        medial.SegmentedPropertyTypeCodeSequence[0]
        .SegmentedPropertyTypeModifierCodeSequence[0]
        .CodeValue
        == "255561001"
    )


def test_paths_in_any_order(series, labels, card, tmp_path):
    paths = []
    for i, d in enumerate(series):
        p = tmp_path / f"{i:03d}.dcm"
        d.save_as(p, enforce_file_format=True)
        paths.append(p)
    random.Random(1).shuffle(paths)
    # the series is stored in descending position order; paths are sorted ascending
    seg = _reread(encode_seg(source=paths, labels=labels[::-1].copy(), model=card), tmp_path)
    back = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in series],
        segment_numbers=list(range(1, 10)),
        combine_segments=True,
    )
    np.testing.assert_array_equal(back, _tissues(labels))


def test_rejects_bad_input(series, labels, card):
    with pytest.raises(NodeError) as err:
        encode_seg(source=series, labels=labels[:, :-1], model=card)
    assert err.value.code == ErrorCode.DICOM_ERROR
    with pytest.raises(NodeError):
        encode_seg(source=series[::2] + series[1::2], labels=labels, model=card)
    with pytest.raises(NodeError):
        encode_seg(source=series, labels=labels.astype(float), model=card)
    with pytest.raises(NodeError, match="canonical"):
        encode_seg(source=series, labels=labels + 200, model=card)
    with pytest.raises(NodeError):
        encode_seg(source=series, labels=labels, model={"algorithm_name": "x"})
    with pytest.raises(NodeError):
        encode_seg(source=series, labels=labels, model=card, side="up")


def test_rejects_multiframe_source_without_frame_geometry(series, labels, card):
    """Multi-frame sources are encoded frame by frame (test_encode_enhanced.py); one whose frames
    have no position is refused with the reason."""
    enhanced = Dataset({e.tag: e for e in series[0] if e.keyword != "ImagePositionPatient"})
    enhanced.PerFrameFunctionalGroupsSequence = [Dataset()]
    with pytest.raises(NodeError, match="multi-frame source.*ImagePositionPatient"):
        encode_seg(source=[enhanced], labels=labels[:1], model=card)
