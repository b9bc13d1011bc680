"""The change since the prior in the TID 1500 SR: re-read with highdicom, values, time points."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from pipeline.encode.seg import encode_seg
from pipeline.encode.sr import encode_sr, read_sr_measurements
from pipeline.encode.sr_change import measurements, read_sr_change, time_point_items
from tests.pipeline.encode.conftest import dciodvfy
from tests.pipeline.encode.synthetic import make_change


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
    return out


def test_change_and_prior_values_read_back(series, seg, with_change, results, card, tmp_path):
    sr = _reread(encode_sr(source=series, seg=seg, results=with_change, model=card), tmp_path)
    assert read_sr_measurements(sr) == results  # the current values are unchanged
    back = read_sr_change(sr)
    change = with_change["change"]
    assert back["current_date"] == "2027-02-05" and back["prior_date"] == "2026-01-01"
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
        assert got["prior_mm3"] == pytest.approx(v["prior_mm3"])
    assert back["volume"]["med_tib_cart"]["change_mm3"] == pytest.approx(-200.0)


def test_time_points_tell_current_from_prior(series, seg, with_change, card):
    doc = hd.sr.Comprehensive3DSR.from_dataset(
        encode_sr(source=series, seg=seg, results=with_change, model=card))
    current = {str(g.tracking_identifier): g
               for g in doc.content.get_volumetric_roi_measurement_groups()}
    prior = {str(g.tracking_identifier): g for g in doc.content.get_image_measurement_groups()}
    assert set(prior) == {"fem_cart", "med_tib_cart", "lat_tib_cart", "pat_cart",
                          "ant_fem_cart", "med_wb_fem_cart", "lat_wb_fem_cart",
                          "med_post_fem_cart", "lat_post_fem_cart"}
    for key, group in prior.items():
        # one finding across time points: the same tracking identifier and UID
        assert str(group.tracking_uid) == str(current[key].tracking_uid)
        assert _time_point(group) == {"time_point": "2026-01-01", "order": 2,
                                      "offset_days": 356.0, "event": "Baseline"}
        assert _time_point(current[key]) == {"time_point": "2027-02-05", "order": 3,
                                             "offset_days": 756.0, "event": "Baseline"}
        names = {m.name.value for m in measurements(group)}
        assert names <= {"59089-3", "118565006"}  # prior values coded like current ones
    changes = {m.name.meaning for m in measurements(current["med_wb_fem_cart"])}
    assert {"Cartilage thickness change since prior", "Cartilage thickness change rate"} <= changes
    units = {m.name.meaning: m.unit.value for m in measurements(current["med_tib_cart"])}
    assert units["Volume change since prior"] == "mm3" and units["Volume change rate"] == "%/a"
    assert units["Cartilage thickness change rate"] == "%/a"
    # tracking UIDs are stable: another encode of the same knee gets the same ones
    again = hd.sr.Comprehensive3DSR.from_dataset(
        encode_sr(source=series, seg=seg, results=with_change, model=card))
    assert {str(g.tracking_uid) for g in again.content.get_volumetric_roi_measurement_groups()} == {
        str(g.tracking_uid) for g in current.values()}


def test_dciodvfy_clean_with_change(series, seg, with_change, card, tmp_path):
    errors, warnings = dciodvfy(encode_sr(source=series, seg=seg, results=with_change, model=card),
                                tmp_path, "sr-change.dcm")
    assert errors == [], errors
    assert all("99KNEENODE" in w for w in warnings), warnings


def test_no_comparison_no_change_content(series, seg, results, card, tmp_path):
    change = {**make_change(results, card), "status": "no_prior", "prior": None,
              "thickness": [], "volume": [], "flagged": []}
    sr = _reread(encode_sr(source=series, seg=seg, results={**results, "change": change},
                           model=card), tmp_path)
    assert read_sr_change(sr) == {}
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert doc.content.get_image_measurement_groups() == []
    assert all(_time_point(g) == {} for g in doc.content.get_volumetric_roi_measurement_groups())
    assert read_sr_measurements(sr) == results
