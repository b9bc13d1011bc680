"""The change since the prior in the TID 1500 SR: re-read with highdicom, values, time points."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from pipeline.encode.seg import encode_seg
from pipeline.encode.sr import encode_sr, read_sr_measurements
from pipeline.encode.sr_change import measurements, read_sr_change, time_point_items
from pipeline.encode.sr_viewer import add_measurement_sources
from tests.pipeline.encode.conftest import dciodvfy
from tests.pipeline.encode.synthetic import make_change, make_labels, make_series


@pytest.fixture
def seg(series, labels, card):
    return encode_seg(source=series, labels=labels, model=card, side="right")


@pytest.fixture
def with_change(results, card):
    return {**results, "change": make_change(results, card)}


def _reread(ds, tmp_path, name="sr.dcm"):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _time_point(group) -> dict[str, object]:
    """Time Point, Time Point Order and the offset (days) of a group's TID 1502 items."""
    out: dict[str, object] = {}
    for item in time_point_items(group):
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code == "C2348792":
            out["time_point"] = item.TextValue
        elif code == "126073":
            out["order"] = int(item.MeasuredValueSequence[0].NumericValue)
        elif code == "128740":
            out["offset_days"] = float(item.MeasuredValueSequence[0].NumericValue)
            out["event"] = item.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning
        if code in ("C2348792", "126073", "128740"):
            assert item.RelationshipType == "HAS OBS CONTEXT"
    return out


def _groups(sr):
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    return {str(g.tracking_identifier): g for g in doc.content.get_volumetric_roi_measurement_groups()}


def test_change_and_prior_values_read_back(series, seg, with_change, results, card, tmp_path):
    sr = _reread(encode_sr(source=series, seg=seg, results=with_change, model=card), tmp_path)
    assert read_sr_measurements(sr) == results  # the current values are unchanged
    back = read_sr_change(sr)
    change = with_change["change"]
    assert back["current_date"] == "2027-02-05" and back["interval_days"] == 400
    assert back["prior_date"] == "2026-01-01"
    for t in change["thickness"]:
        got = back["thickness"][t["region"]]
        assert got["prior_mm"] == t["prior_mm"] and got["change_mm"] == t["change_mm"]
        assert got["change_percent_per_year"] == t["change_percent_per_year"]
        assert got["flagged"] is t["flagged"]
    wb = back["thickness"]["med_wb_fem_cart"]
    assert wb["change_mm"] == pytest.approx(-0.3) and wb["flagged"] is True
    assert back["thickness"]["pat_cart"]["flagged"] is False
    for v in change["volume"]:
        got = back["volume"][v["tissue"]]
        assert got["change_mm3"] == v["change_mm3"] and got["flagged"] is v["flagged"]
        assert got["prior_ml"] * 1000 == pytest.approx(v["prior_mm3"])
    assert back["volume"]["med_tib_cart"]["change_mm3"] == pytest.approx(-200.0)


def test_current_prior_and_change_are_told_apart(series, seg, with_change, card):
    groups = _groups(encode_sr(source=series, seg=seg, results=with_change, model=card))
    for group in groups.values():  # every group is at the current exam's time point
        assert _time_point(group) == {"time_point": "2027-02-05", "order": 3,
                                      "offset_days": 756.0, "event": "Baseline"}
    wb = {m.name.meaning: m for m in measurements(groups["med_wb_fem_cart"])
          if m.derivation is None or m.derivation.meaning == "Mean"}
    assert wb["Thickness"].value == pytest.approx(1.6 + 1e-9)  # current: the standard concept
    assert wb["Cartilage thickness at prior exam"].value == pytest.approx(1.9)
    assert wb["Cartilage thickness change since prior"].value == pytest.approx(-0.3)
    assert wb["Cartilage thickness change rate"].unit.value == "%/a"
    assert wb["Interval"].value == 400 and wb["Interval"].unit.value == "d"
    tib = {m.name.meaning: m for m in measurements(groups["med_tib_cart"])}
    assert tib["Volume change since prior"].unit.value == "mm3"
    assert tib["Volume at prior exam"].value == pytest.approx(2.7)
    flags = {e.name.meaning: e.value.meaning for e in groups["med_tib_cart"].get_qualitative_evaluations()}
    assert flags["Volume change exceeds smallest detectable change"] == "Yes"
    assert flags["Thickness change exceeds smallest detectable change"] == "No"
    assert not hd.sr.Comprehensive3DSR.from_dataset(
        encode_sr(source=series, seg=seg, results=with_change, model=card)
    ).content.get_image_measurement_groups()  # no group OHIF could not place


def test_tracking_uids_link_one_knee_across_exams(series, seg, with_change, results, card):
    """Another study of the same patient and knee gets the same tracking UIDs; the other knee not."""
    first = {k: str(g.tracking_uid) for k, g in _groups(
        encode_sr(source=series, seg=seg, results=with_change, model=card)).items()}
    later_series = make_series(seed=3)
    later_seg = encode_seg(source=later_series, labels=make_labels(), model=card, side="right")
    later = {k: str(g.tracking_uid) for k, g in _groups(
        encode_sr(source=later_series, seg=later_seg, results=results, model=card)).items()}
    assert later_series[0].StudyInstanceUID != seg.StudyInstanceUID and later == first
    left = {k: str(g.tracking_uid) for k, g in _groups(
        encode_sr(source=later_series, seg=later_seg, results={**results, "side": "left"},
                  model=card)).items()}
    assert not set(left.values()) & set(first.values())
    assert len(set(first.values())) == len(first)


def test_outlines_only_on_measurements_and_dciodvfy_clean(series, labels, seg, with_change, card,
                                                          tmp_path):
    sr = encode_sr(source=series, seg=seg, results=with_change, model=card)
    add_measurement_sources(sr, source=series, labels=labels, seg=seg)
    errors, warnings = dciodvfy(sr, tmp_path, "sr-change.dcm")
    assert errors == [], errors
    assert all("99KNEENODE" in w for w in warnings), warnings
    container = next(i for i in sr.ContentSequence
                     if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    outlined = context = 0
    for group in container.ContentSequence:
        for item in group.ContentSequence:
            if item.ValueType != "NUM":
                continue
            scoords = [c for c in item.get("ContentSequence", []) if c.ValueType == "SCOORD"]
            if item.RelationshipType == "HAS OBS CONTEXT":
                context += 1
                assert not scoords  # a time point is not a measurement: no outline
            else:
                outlined += 1
                assert len(scoords) == 1
    assert context and outlined


def test_no_comparison_no_change_content(series, seg, results, card, tmp_path):
    change = {**make_change(results, card), "status": "no_prior", "prior": None,
              "thickness": [], "volume": [], "flagged": []}
    sr = _reread(encode_sr(source=series, seg=seg, results={**results, "change": change},
                           model=card), tmp_path)
    assert read_sr_change(sr) == {}
    assert all(_time_point(g) == {} for g in _groups(sr).values())
    assert read_sr_measurements(sr) == results
