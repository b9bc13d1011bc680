"""The change since the prior exam in the TID 1500 SR: prior values, change, and their time points.

Coding (docs/change.md cites the PS3.16 parts):

- every current measurement group (TID 1411, one per structure) gets the current exam's Time
  Point Context (TID 1502: Time Point = Study Date, Time Point Order, Longitudinal Temporal Offset
  from Event = days since the first exam of the knee, event type (121079, DCM, "Baseline")) and
  the change measurements of its structure: thickness change (mm) and rate (%/a), volume change
  (mm3) and rate (%/a), each a TID 300 NUM with a private concept name (no standard code
  exists for a change of cartilage thickness), plus whether it exceeds the smallest detectable
  change (a qualitative evaluation, SCT Yes / No);
- the prior's values are a TID 1501 measurement group per structure with the prior exam's Time
  Point Context, the same Tracking Identifier and the same Tracking Unique Identifier as the
  current group (PS3.16 tracks one finding across time points by its Tracking UID), coded
  exactly as current values are (LN Thickness + Derivation Mean, SCT Volume).

Tracking UIDs are therefore derived from the patient, the knee side and the structure, not
random: the same region of the same knee has the same Tracking UID in every report of this node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99KNEENODE"
THICKNESS_CHANGE = Code("THKCHG", PRIVATE_SCHEME, "Cartilage thickness change since prior")
THICKNESS_RATE = Code("THKRATE", PRIVATE_SCHEME, "Cartilage thickness change rate")
VOLUME_CHANGE = Code("VOLCHG", PRIVATE_SCHEME, "Volume change since prior")
VOLUME_RATE = Code("VOLRATE", PRIVATE_SCHEME, "Volume change rate")
THICKNESS_SDC = Code("SDCTHK", PRIVATE_SCHEME, "Thickness change exceeds smallest detectable change")
VOLUME_SDC = Code("SDCVOL", PRIVATE_SCHEME, "Volume change exceeds smallest detectable change")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
BASELINE_EVENT = Code("121079", "DCM", "Baseline")
TIME_POINT = "C2348792"  # (UMLS, "Time Point"), TID 1502 row 1
_UNITS = {
    "mm": Code("mm", "UCUM", "millimeter"),
    "mm3": Code("mm3", "UCUM", "cubic millimeter"),
    "%/a": Code("%/a", "UCUM", "percent per year"),
    "d": Code("d", "UCUM", "day"),
}
_MEAN = Code("373098007", "SCT", "Mean")
_THICKNESS = Code("59089-3", "LN", "Thickness")
_VOLUME = Code("118565006", "SCT", "Volume")
_ML = Code("ml", "UCUM", "milliliter")


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
    return hd.sr.Measurement(name=name, value=float(value), unit=_UNITS.get(unit, _ML),
                             derivation=_MEAN if mean else None)


def change_items(key: str, change: Mapping[str, Any]
                 ) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """The change measurements and SDC evaluations of structure ``key`` (a current group)."""
    nums: list[hd.sr.Measurement] = []
    evals: list[hd.sr.QualitativeEvaluation] = []
    for t in change.get("thickness", []):
        if t["region"] == key and t.get("change_mm") is not None:
            nums.append(_num(THICKNESS_CHANGE, t["change_mm"], "mm", mean=True))
            if t.get("change_percent_per_year") is not None:
                nums.append(_num(THICKNESS_RATE, t["change_percent_per_year"], "%/a", mean=True))
            evals.append(hd.sr.QualitativeEvaluation(THICKNESS_SDC, YES if t["flagged"] else NO))
    for v in change.get("volume", []):
        if v["tissue"] == key and v.get("change_mm3") is not None:
            nums.append(_num(VOLUME_CHANGE, v["change_mm3"], "mm3"))
            if v.get("change_percent_per_year") is not None:
                nums.append(_num(VOLUME_RATE, v["change_percent_per_year"], "%/a"))
            evals.append(hd.sr.QualitativeEvaluation(VOLUME_SDC, YES if v["flagged"] else NO))
    return nums, evals


def _prior_values(key: str, change: Mapping[str, Any]) -> list[hd.sr.Measurement]:
    out = []
    for t in change.get("thickness", []):
        if t["region"] == key and t.get("prior_mm") is not None:
            out.append(_num(_THICKNESS, t["prior_mm"], "mm", mean=True))
    for v in change.get("volume", []):
        if v["tissue"] == key and v.get("prior_mm3") is not None:
            out.append(hd.sr.Measurement(name=_VOLUME, value=round(v["prior_mm3"] / 1000.0, 6),
                                         unit=_ML))
    return out


def prior_groups(change: Mapping[str, Any], *, keys: list[str], first: Dataset, side: str | None,
                 algorithm: hd.sr.AlgorithmIdentification,
                 sites: list[hd.sr.FindingSite] | None
                 ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per structure with the prior exam's values and time point."""
    context = time_point(change, "prior")
    groups = []
    for key in keys:
        values = _prior_values(key, change)
        if not values:
            continue
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(first, side, key),
                                                         identifier=key),
            time_point_context=context, algorithm_id=algorithm, finding_sites=sites,
            measurements=values))
    return groups


_CHANGE_KEYS = {
    THICKNESS_CHANGE.value: ("thickness", "change_mm"),
    THICKNESS_RATE.value: ("thickness", "change_percent_per_year"),
    VOLUME_CHANGE.value: ("volume", "change_mm3"),
    VOLUME_RATE.value: ("volume", "change_percent_per_year"),
}
CHANGE_CODES = frozenset(_CHANGE_KEYS)


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

    ``{"current_date", "prior_date", "thickness": {region: {...}}, "volume": {tissue: {...}}}``
    with ``prior_mm`` / ``prior_mm3`` from the prior's groups and ``change_*`` and ``flagged``
    from the current groups; ``{}`` when the SR has no change.
    """
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    out: dict[str, Any] = {"thickness": {}, "volume": {}}
    uids: dict[str, str] = {}
    for group in doc.content.get_volumetric_roi_measurement_groups():  # type: ignore[attr-defined]
        key = str(group.tracking_identifier)
        uids[key] = str(group.tracking_uid)
        for m in measurements(group):
            if m.name.value in _CHANGE_KEYS:
                kind, field = _CHANGE_KEYS[m.name.value]
                out[kind].setdefault(key, {})[field] = float(m.value)
                out["current_date"] = _time_point_of(group)
        for e in group.get_qualitative_evaluations():
            kind = {THICKNESS_SDC.value: "thickness", VOLUME_SDC.value: "volume"}.get(e.name.value)
            if kind:
                out[kind].setdefault(key, {})["flagged"] = e.value.value == YES.value
    for group in doc.content.get_image_measurement_groups():  # type: ignore[attr-defined]
        key = str(group.tracking_identifier)
        if uids.get(key) != str(group.tracking_uid):
            continue  # not the prior of a current structure
        out["prior_date"] = _time_point_of(group)
        for m in measurements(group):
            if m.name.value == _THICKNESS.value:
                out["thickness"].setdefault(key, {})["prior_mm"] = float(m.value)
            elif m.name.value == _VOLUME.value:
                out["volume"].setdefault(key, {})["prior_mm3"] = float(m.value) * 1000.0
    return out if out["thickness"] or out["volume"] else {}
