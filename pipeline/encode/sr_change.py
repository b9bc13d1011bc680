"""The change since the prior exam in the TID 1500 SR: prior values, change, their time point.

Coding (docs/change.md cites the PS3.16 parts). Every current measurement group (TID 1411, one
per structure) gets, with a change report:

- the current exam's Time Point Context (TID 1502: Time Point = Study Date, Time Point Order,
  Longitudinal Temporal Offset from Event = days since the first exam of the knee, event type
  (121079, DCM, "Baseline"));
- the interval to the prior, (385673002, SCT, "Interval") in days;
- the prior's values and the change as TID 300 NUMs with private concept names (no standard
  code names "value at the prior exam" or "change since the prior" of a cartilage measurement):
  thickness at prior (mm) / change (mm) / rate (%/a), volume at prior (ml) / change (mm3) /
  rate (%/a), and whether the change exceeds the smallest detectable change (a qualitative
  evaluation, SCT Yes / No).

Why not a TID 1501 group per structure for the prior values: stock OHIF (3.13) crashes on any
measurement group without SCOORD (docs/viewer.md), and an outline on the current images would
claim the prior was measured there. Tracking UIDs are derived from the patient, the knee side
and the structure, not random: a region has the same Tracking UID in every report of that knee
by this node, which is how PS3.16 links one finding across time points (the prior exam's own SR).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99KNEENODE"
THICKNESS_PRIOR = Code("THKPRIOR", PRIVATE_SCHEME, "Cartilage thickness at prior exam")
THICKNESS_CHANGE = Code("THKCHG", PRIVATE_SCHEME, "Cartilage thickness change since prior")
THICKNESS_RATE = Code("THKRATE", PRIVATE_SCHEME, "Cartilage thickness change rate")
VOLUME_PRIOR = Code("VOLPRIOR", PRIVATE_SCHEME, "Volume at prior exam")
VOLUME_CHANGE = Code("VOLCHG", PRIVATE_SCHEME, "Volume change since prior")
VOLUME_RATE = Code("VOLRATE", PRIVATE_SCHEME, "Volume change rate")
THICKNESS_SDC = Code("SDCTHK", PRIVATE_SCHEME, "Thickness change exceeds smallest detectable change")
VOLUME_SDC = Code("SDCVOL", PRIVATE_SCHEME, "Volume change exceeds smallest detectable change")
INTERVAL = Code("385673002", "SCT", "Interval")  # from the prior exam to this one, days
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
BASELINE_EVENT = Code("121079", "DCM", "Baseline")
TIME_POINT = "C2348792"  # (UMLS, "Time Point"), TID 1502 row 1
_UNITS = {
    "mm": Code("mm", "UCUM", "millimeter"),
    "mm3": Code("mm3", "UCUM", "cubic millimeter"),
    "%/a": Code("%/a", "UCUM", "percent per year"),
    "d": Code("d", "UCUM", "day"),
    "ml": Code("ml", "UCUM", "milliliter"),
}
_MEAN = Code("373098007", "SCT", "Mean")


def compared(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """results.json's change report when a comparison was made, else None."""
    change = results.get("change")
    if isinstance(change, Mapping) and change.get("status") == "compared" and change.get("prior"):
        return change
    return None


def tracking_uid(first: Dataset, side: str | None, key: str) -> str:
    """The Tracking UID of a structure of this patient's knee (2.25 root, stable across exams)."""
    who = f"{first.get('IssuerOfPatientID', '')}\\{first.get('PatientID', '')}"
    digest = hashlib.sha256(f"kneenode-tracking/{who}/{side}/{key}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _iso(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def time_point(change: Mapping[str, Any], which: str) -> hd.sr.TimePointContext:
    """TID 1502 of the ``current`` or ``prior`` exam: date, order in the knee's exams, offset."""
    exam = change[which]
    when = _iso(exam["study_date"])
    dates = sorted(_iso(p["study_date"]) for p in change.get("trend") or []) or [when]
    order = 1 + sum(d < when for d in dates)
    offset = hd.sr.LongitudinalTemporalOffsetFromEvent(
        value=float((when - dates[0]).days), unit=_UNITS["d"], event_type=BASELINE_EVENT)
    return hd.sr.TimePointContext(time_point=when.isoformat(), time_point_order=order,
                                  temporal_offset_from_event=offset)


def _num(name: Code, value: float, unit: str, mean: bool = False) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=_UNITS[unit],
                             derivation=_MEAN if mean else None)


def change_items(key: str, change: Mapping[str, Any]
                 ) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """The prior values, change measurements and SDC evaluations of structure ``key``."""
    nums: list[hd.sr.Measurement] = []
    evals: list[hd.sr.QualitativeEvaluation] = []
    for t in change.get("thickness", []):
        if t["region"] == key and t.get("change_mm") is not None:
            nums.append(_num(THICKNESS_PRIOR, t["prior_mm"], "mm", mean=True))
            nums.append(_num(THICKNESS_CHANGE, t["change_mm"], "mm", mean=True))
            if t.get("change_percent_per_year") is not None:
                nums.append(_num(THICKNESS_RATE, t["change_percent_per_year"], "%/a", mean=True))
            evals.append(hd.sr.QualitativeEvaluation(THICKNESS_SDC, YES if t["flagged"] else NO))
    for v in change.get("volume", []):
        if v["tissue"] == key and v.get("change_mm3") is not None:
            nums.append(_num(VOLUME_PRIOR, round(v["prior_mm3"] / 1000.0, 6), "ml"))
            nums.append(_num(VOLUME_CHANGE, v["change_mm3"], "mm3"))
            if v.get("change_percent_per_year") is not None:
                nums.append(_num(VOLUME_RATE, v["change_percent_per_year"], "%/a"))
            evals.append(hd.sr.QualitativeEvaluation(VOLUME_SDC, YES if v["flagged"] else NO))
    if nums and change.get("interval_days") is not None:
        nums.insert(0, _num(INTERVAL, change["interval_days"], "d"))
    return nums, evals


_CHANGE_KEYS = {
    THICKNESS_PRIOR.value: ("thickness", "prior_mm"),
    THICKNESS_CHANGE.value: ("thickness", "change_mm"),
    THICKNESS_RATE.value: ("thickness", "change_percent_per_year"),
    VOLUME_PRIOR.value: ("volume", "prior_ml"),
    VOLUME_CHANGE.value: ("volume", "change_mm3"),
    VOLUME_RATE.value: ("volume", "change_percent_per_year"),
}
CHANGE_CODES = frozenset({*_CHANGE_KEYS, INTERVAL.value})


#: The NUMs of TID 1502 (Time Point Order, Longitudinal Temporal Offset from Event).
_CONTEXT_NUMS = frozenset({"126073", "128740"})


def measurements(group: Any) -> list[hd.sr.Measurement]:
    """A group's measurements without its TID 1502 NUMs (observation context, which highdicom's
    ``get_measurements`` returns too)."""
    return [m for m in group.get_measurements() if m.name.value not in _CONTEXT_NUMS]


def time_point_items(group: Any) -> list[Dataset]:
    """The content items of a measurement group (TID 1502 items among them)."""
    return list(group[0].ContentSequence)


def _time_point_of(group: Any) -> str | None:
    for item in time_point_items(group):
        name = item.ConceptNameCodeSequence[0]
        if name.CodeValue == TIME_POINT:
            return str(item.TextValue)
    return None


def read_sr_change(sr: Dataset) -> dict[str, Any]:
    """The change an SR of :func:`pipeline.encode.sr.encode_sr` holds, keyed like results.json.

    ``{"current_date", "interval_days", "prior_date", "thickness": {region: {prior_mm,
    change_mm, change_percent_per_year, flagged}}, "volume": {tissue: {prior_ml, change_mm3,
    ...}}}`` (dates ISO; the prior's = current - interval); ``{}`` when the SR has no change.
    """
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    out: dict[str, Any] = {"thickness": {}, "volume": {}}
    for group in doc.content.get_volumetric_roi_measurement_groups():  # type: ignore[attr-defined]
        key = str(group.tracking_identifier)
        for m in measurements(group):
            if m.name.value in _CHANGE_KEYS:
                kind, field = _CHANGE_KEYS[m.name.value]
                out[kind].setdefault(key, {})[field] = float(m.value)
                out["current_date"] = _time_point_of(group)
            elif m.name.value == INTERVAL.value:
                out["interval_days"] = float(m.value)
        for e in group.get_qualitative_evaluations():
            kind = {THICKNESS_SDC.value: "thickness", VOLUME_SDC.value: "volume"}.get(e.name.value)
            if kind:
                out[kind].setdefault(key, {})["flagged"] = e.value.value == YES.value
    if not (out["thickness"] or out["volume"]):
        return {}
    if out.get("current_date") and out.get("interval_days") is not None:
        out["prior_date"] = (date.fromisoformat(out["current_date"])
                             - timedelta(days=int(out["interval_days"]))).isoformat()
    return out
