"""Selection: which complete series are knee MRI volumes worth a job, and why the rest are not.

Pure rules over the series summary (``summary.json`` written by the edge), read defensively: any
key may be missing. When the geometry summary is missing, the headers are read from the files
(pydicom, no pixel data). Rules come from ``jobs.selection`` with the overrides of the series'
route (:mod:`scp.routing`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kneenode.errors import ErrorCode
from kneenode.settings import RouteSettings, RouteTarget, SelectionSettings

_TEXT_KEYS = ("series_description", "protocol_name", "body_part_examined", "sequence_name")


@dataclass(frozen=True)
class Decision:
    """The outcome of selection: selected, or not with an error code and a reason."""

    selected: bool
    code: ErrorCode | None = None
    reason: str = ""


@dataclass(frozen=True)
class Rules:
    """The effective rules for one series (node-wide rules with its route's overrides)."""

    modalities: tuple[str, ...]
    min_slices: int
    require_consistent: bool
    pattern: str | None  # None: no knee pattern check (process_all)


def rules_for(settings: SelectionSettings, route: RouteTarget | None = None) -> Rules:
    """The node-wide rules with the route's overrides applied.

    A route that matches on ``modality`` also makes those modalities acceptable; ``process_all``
    drops the knee pattern; ``min_slices`` and ``pattern`` replace the node-wide values.
    """
    modalities = tuple(m.upper() for m in settings.modalities)
    if route is None:
        return Rules(modalities, settings.min_slices, settings.require_consistent_geometry,
                     settings.pattern)
    if isinstance(route, RouteSettings) and route.modality:
        modalities = tuple(m.upper() for m in route.modality)
    return Rules(
        modalities=modalities,
        min_slices=route.min_slices or settings.min_slices,
        require_consistent=settings.require_consistent_geometry,
        pattern=None if route.process_all else (route.pattern or settings.pattern),
    )


def select(summary: dict[str, Any], rules: Rules, folder: Path | None = None) -> Decision:
    """Decide whether a series is analysed; the first failing rule gives the reason.

    Order: a malformed header (the edge's ``invalid``: INVALID_FORMAT), then modality, then
    volume geometry, then the knee pattern (cheapest, most telling first).
    """
    if summary.get("invalid"):
        return Decision(False, ErrorCode.INVALID_FORMAT, str(summary["invalid"]))
    modality = str(summary.get("modality") or "").upper()
    if not modality and folder is not None:
        modality = str(read_headers(folder).get("modality", "")).upper()
    if modality not in rules.modalities:
        return Decision(False, ErrorCode.NOT_SELECTED,
                        f"modality {modality or 'unknown'} is not one of {list(rules.modalities)}")
    geometry = summary.get("geometry")
    acquisition = summary.get("mr_acquisition_type")
    if folder is not None and (not isinstance(geometry, dict) or acquisition is None):
        headers = read_headers(folder)
        geometry = geometry if isinstance(geometry, dict) else headers["geometry"]
        acquisition = headers["mr_acquisition_type"] if acquisition is None else acquisition
    geo_reason = _geometry_reason(geometry if isinstance(geometry, dict) else {},
                                  str(acquisition or "").upper() == "3D", rules)
    if geo_reason:
        return Decision(False, ErrorCode.NOT_SELECTED, geo_reason)
    if rules.pattern is not None:
        texts = {k: str(summary.get(k) or "") for k in _TEXT_KEYS}
        if not any(re.search(rules.pattern, t, re.IGNORECASE) for t in texts.values()):
            shown = ", ".join(f"{k}={v!r}" for k, v in texts.items() if v) or "no descriptions"
            return Decision(False, ErrorCode.NOT_KNEE, f"no knee keyword in {shown}")
    return Decision(True)


def _geometry_reason(geometry: dict[str, Any], acquired_3d: bool, rules: Rules) -> str:
    """Why the slices do not make a usable volume ("" when they do).

    A volume is a 3-D acquisition (MRAcquisitionType 3D) with at least two slice positions, or
    at least ``min_slices`` positions of any acquisition; with ``require_consistent`` the edge's
    geometry check (one orientation and matrix, even spacing) must have passed. The summary's
    ``is_3d`` only says that the slices form a stack, so it does not stand for a 3-D acquisition.
    """
    slices = int(geometry.get("slices") or 0)
    if rules.require_consistent and geometry.get("consistent") is False:
        return f"inconsistent geometry: {geometry.get('reason') or 'unspecified'}"
    if slices >= rules.min_slices or (acquired_3d and slices >= 2):
        return ""
    kind = "3-D" if acquired_3d else "2-D"
    return (f"not a volume: {slices} slice(s) of a {kind} acquisition (needs a 3-D acquisition "
            f"or >= {rules.min_slices} slices)")


def read_headers(folder: Path) -> dict[str, Any]:
    """Modality, acquisition type and a minimal geometry read from the files (no pixel data)."""
    from pydicom import dcmread

    modality, acquisition = "", ""
    orientations: set[tuple[float, ...]] = set()
    positions: set[tuple[float, ...]] = set()
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - an unreadable file simply does not count
            continue
        modality = modality or str(ds.get("Modality", ""))
        acquisition = acquisition or str(ds.get("MRAcquisitionType", ""))
        orientations.add(tuple(round(float(v), 3) for v in ds.get("ImageOrientationPatient", [])))
        positions.add(tuple(round(float(v), 2) for v in ds.get("ImagePositionPatient", [])))
    consistent = len(orientations) == 1
    return {
        "modality": modality,
        "mr_acquisition_type": acquisition,
        "geometry": {
            "is_3d": consistent and len(positions) >= 2, "slices": len(positions),
            "consistent": consistent,
            "reason": None if consistent else f"{len(orientations)} slice orientations",
        },
    }
