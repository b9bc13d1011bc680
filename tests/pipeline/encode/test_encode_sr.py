"""TID 1500 SR encoder: measurements re-read equal results.json, segment references, dciodvfy."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from kneenode.errors import NodeError
from kneenode.settings import EncodeSettings
from pipeline.encode.seg import encode_seg
from pipeline.encode.sr import PRIVATE_SCHEME, encode_sr, read_sr_measurements
from tests.pipeline.encode.conftest import dciodvfy


@pytest.fixture
def seg(series, labels, card):
    return encode_seg(source=series, labels=labels, model=card, side="right")


def _write_read(ds, tmp_path):
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_measurements_round_trip_exactly(series, seg, results, card, tmp_path):
    sr = _write_read(encode_sr(source=series, seg=seg, results=results, model=card), tmp_path)
    assert read_sr_measurements(sr) == results


def test_groups_reference_their_segments(series, seg, results, card):
    sr = hd.sr.Comprehensive3DSR.from_dataset(
        encode_sr(source=series, seg=seg, results=results, model=card)
    )
    by_id = {s.TrackingID: int(s.SegmentNumber) for s in seg.SegmentSequence}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    seen = {}
    for group in groups:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        seen[group.tracking_identifier] = ref.referenced_segment_numbers[0]
        names = [
            i.TextValue
            for i in group[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "111001"
        ]
        assert names == ["kneenode-phantom-demo"]  # Algorithm Name (TID 4019)
        assert group.finding_sites[0].laterality.meaning == "Right"
    for key, number in by_id.items():
        assert seen[key] == number
    # subregions without their own segments refer to the femoral cartilage segment
    assert seen["med_wb_fem_cart"] == by_id["fem_cart"]
    assert seen["femur_shape"] == by_id["femur"]
    units = {m.unit.value for g in groups for m in g.get_measurements()}
    assert units == {"ml", "mm", "ms", "1"}


def test_subregion_segments_referenced(series, labels, results, card):
    seg = encode_seg(
        source=series, labels=labels, model=card, options=EncodeSettings(seg_subregions=True)
    )
    sr = hd.sr.Comprehensive3DSR.from_dataset(
        encode_sr(source=series, seg=seg, results=results, model=card)
    )
    seen = {
        g.tracking_identifier: g.referenced_segment.referenced_segment_numbers[0]
        for g in sr.content.get_volumetric_roi_measurement_groups()
    }
    assert seen["ant_fem_cart"] == 10 and seen["lat_post_fem_cart"] == 14


def test_optional_groups_absent(series, seg, card, tmp_path):
    minimal = {"femur_ml": 80.0, "med_tib_cart_mm_mean": 2.0}
    sr = _write_read(encode_sr(source=series, seg=seg, results=minimal, model=card), tmp_path)
    assert read_sr_measurements(sr) == minimal  # no side, no T2, no BScore group


def test_dciodvfy_no_errors(series, seg, results, card, tmp_path):
    sr = encode_sr(source=series, seg=seg, results=results, model=card)
    errors, warnings = dciodvfy(sr, tmp_path)
    assert errors == []
    assert all(PRIVATE_SCHEME in w for w in warnings), warnings
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID
    assert sr.SeriesNumber == 302
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, series[0].SeriesInstanceUID)


def test_rejects_bad_input(series, seg, results, card):
    with pytest.raises(NodeError):
        encode_sr(source=series, seg=series[0], results=results, model=card)
    with pytest.raises(NodeError):
        encode_sr(source=series, seg=seg, results={"femur_ml": "many"}, model=card)
    with pytest.raises(NodeError):
        encode_sr(source=series, seg=seg, results={"side": "up"}, model=card)


def test_alternative_t2_layer_spelling(series, seg, card, tmp_path):
    sr = _write_read(
        encode_sr(source=series, seg=seg, results={"pat_cart_t2_ms_deep_std": 4.5}, model=card),
        tmp_path,
    )
    assert read_sr_measurements(sr) == {"pat_cart_deep_t2_ms_std": 4.5}


def test_source_images_option(series, labels, seg, results, card, tmp_path):
    """With sr_source_images each group lists the slices of its segment as IMAGE items."""
    opts = EncodeSettings(sr_source_images=True)
    ds = encode_sr(source=series, seg=seg, results=results, model=card, labels=labels, options=opts)
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    by_id = {
        g.tracking_identifier: g.referenced_segment
        for g in sr.content.get_volumetric_roi_measurement_groups()
    }
    uids = [d.SOPInstanceUID for d in series]
    femur = [
        uids.index(i.referenced_sop_instance_uid)
        for i in by_id["femur"].source_images_for_segmentation
    ]
    assert femur == [i for i in range(len(series)) if (labels[i] == 1).any()]
    patella_cart = [
        uids.index(i.referenced_sop_instance_uid)
        for i in by_id["pat_cart"].source_images_for_segmentation
    ]
    assert patella_cart == [i for i in range(len(series)) if (labels[i] == 7).any()]
    assert read_sr_measurements(_write_read(ds, tmp_path)) == results
    errors, _ = dciodvfy(ds, tmp_path, "sr-images.dcm")
    assert errors == []
    with pytest.raises(NodeError):
        encode_sr(source=series, seg=seg, results=results, model=card, options=opts)


def test_unknown_side_is_no_laterality(series, seg, card, tmp_path):
    for side in ("unknown", "", None):
        res = {"side": side, "femur_ml": 80.0}
        sr = _write_read(encode_sr(source=series, seg=seg, results=res, model=card), tmp_path)
        assert read_sr_measurements(sr) == {"femur_ml": 80.0}


@pytest.mark.parametrize("outcome", ["pass", "warn", "fail"])
def test_qc_outcome_is_a_coded_item_in_every_group(series, seg, results, card, tmp_path, outcome):
    """The QC outcome re-reads with highdicom from every group, and dciodvfy stays clean."""
    with_qc = {**results, "qc": {"outcome": outcome, "reasons": []}}
    sr = _write_read(encode_sr(source=series, seg=seg, results=with_qc, model=card), tmp_path)
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = doc.content.get_volumetric_roi_measurement_groups()
    codes = {(e.name.value, e.value.value) for g in groups for e in g.get_qualitative_evaluations()}
    assert codes == {("SEGQC", f"QC{outcome.upper()}")}
    assert all(len(g.get_qualitative_evaluations()) == 1 for g in groups)
    assert read_sr_measurements(sr) == {**results, "qc_outcome": outcome}
    errors, _ = dciodvfy(sr, tmp_path, f"sr-qc-{outcome}.dcm")
    assert errors == []


def test_no_qc_item_without_qc(series, seg, results, card):
    doc = hd.sr.Comprehensive3DSR.from_dataset(
        encode_sr(source=series, seg=seg, results=results, model=card))
    assert all(not g.get_qualitative_evaluations()
               for g in doc.content.get_volumetric_roi_measurement_groups())
