"""The summary of a complete series version: what arrived, and whether its geometry is sane.

Written as ``summary.json`` next to the instances. It is what selection rules and operators read
first, so it says plainly why a series looks unusable. Header-only reads (no pixel data).

Nothing here may raise for what a sender put in a header: the instance was acknowledged, and a
summary that cannot be built would stop the series from ever completing. A malformed value (a
Columns element with three values, a non-numeric position) makes ``geometry.reason`` name it and
sets ``invalid``, which selection turns into an ``ignored`` job with code INVALID_FORMAT.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from kneenode.settings import ReaderSettings

_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "SeriesDescription", "ProtocolName", "BodyPartExamined", "SeriesNumber", "StudyDate",
    "Manufacturer", "ManufacturerModelName", "MRAcquisitionType", "ScanningSequence",
    "SequenceName", "ImageType", "Rows", "Columns", "PixelSpacing", "ImagePositionPatient",
    "ImageOrientationPatient", "EchoTime", "NumberOfFrames", "SliceThickness",
    "FrameOfReferenceUID",
]


def summarize_series(folder: Path, reader: ReaderSettings | None = None) -> dict[str, Any]:
    """Describe the ``*.dcm`` files of a series folder (header-only).

    Returns a JSON-ready dict: identifiers, descriptions, counts, SOP classes and transfer
    syntaxes, and ``geometry`` (see :func:`geometry_check`). Unreadable files are listed, not
    fatal: the spool only holds instances that decoded when they arrived.
    """
    headers, unreadable = [], []
    syntaxes: Counter[str] = Counter()
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            unreadable.append({"file": path.name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        headers.append(ds)
        syntaxes[_text(ds.file_meta, "TransferSyntaxUID")] += 1
    first = headers[0] if headers else None

    def text(name: str) -> str:
        try:
            return str(getattr(first, name, "") or "") if first is not None else ""
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert: leave it empty
            return ""

    geometry = geometry_check(headers, reader)

    return {
        "study_uid": text("StudyInstanceUID"),
        "series_uid": text("SeriesInstanceUID"),
        "modality": text("Modality"),
        "series_description": text("SeriesDescription"),
        "protocol_name": text("ProtocolName"),
        "body_part_examined": text("BodyPartExamined"),
        "series_number": text("SeriesNumber"),
        "manufacturer": text("Manufacturer"),
        "mr_acquisition_type": text("MRAcquisitionType"),
        "sequence_name": text("SequenceName"),
        "scanning_sequence": text("ScanningSequence"),
        "instance_count": len(headers),
        "sop_class_uids": sorted({_text(h, "SOPClassUID") for h in headers} - {""}),
        "transfer_syntaxes": dict(syntaxes),
        "unreadable": unreadable,
        "geometry": geometry,
        "invalid": geometry["reason"] if geometry.get("malformed") else None,
    }


def geometry_check(headers: list[Any], reader: ReaderSettings | None = None) -> dict[str, Any]:
    """Sanity of the slice geometry: one orientation, one matrix, unique, evenly spaced slices.

    Multi-echo series (several EchoTimes at each position) count each position once. An
    Enhanced (multi-frame) instance counts its frames. ``reason`` names the first problem found;
    ``malformed`` is true when that problem is a header value that is not what the standard
    allows (see :class:`Malformed`). A slice gap is uneven when it differs from the median by
    more than the reader's gap tolerance (``reader``, the ``reader`` settings): what the reader
    resamples the summary accepts.
    """
    result: dict[str, Any] = {
        "is_3d": False, "slices": 0, "echoes": 0, "consistent": False, "reason": None,
        "rows": None, "columns": None, "pixel_spacing": None, "slice_spacing": None,
        "malformed": False,
    }
    try:
        _check(headers, result, reader)
    except Malformed as exc:
        result.update(consistent=False, is_3d=False, reason=str(exc), malformed=True)
    return result


def _check(headers: list[Any], result: dict[str, Any], reader: ReaderSettings | None) -> None:
    if not headers:
        result["reason"] = "no readable instances"
        return
    frames = [_int(h, "NumberOfFrames") or 1 for h in headers]
    if len(headers) == 1 and frames[0] > 1:
        result.update(is_3d=frames[0] >= 2, slices=frames[0], echoes=1, consistent=True,
                      rows=_int(headers[0], "Rows"), columns=_int(headers[0], "Columns"))
        return
    images = [h for h in headers if "ImagePositionPatient" in h and "ImageOrientationPatient" in h]
    if len(images) < len(headers):
        result["reason"] = f"{len(headers) - len(images)} instance(s) without position/orientation"
        return
    matrices = {(_int(h, "Rows"), _int(h, "Columns")) for h in images}
    orients = np.array([_floats(h, "ImageOrientationPatient", 6) for h in images])
    echoes = sorted({_float(h, "EchoTime") or 0.0 for h in images})
    spacing = _floats(images[0], "PixelSpacing", 2) if "PixelSpacing" in images[0] else None
    result.update(rows=_int(images[0], "Rows"), columns=_int(images[0], "Columns"),
                  echoes=len(echoes), pixel_spacing=spacing)
    if len(matrices) > 1:
        result["reason"] = f"mixed matrix sizes {sorted(matrices, key=str)}"
        return
    if np.abs(orients - orients[0]).max() > 1e-3:
        result["reason"] = "mixed image orientations"
        return
    normal = np.cross(orients[0][:3], orients[0][3:])
    positions = np.array([_floats(h, "ImagePositionPatient", 3) for h in images]) @ normal
    unique = np.unique(np.round(positions, 3))
    result["slices"] = int(unique.size)
    if unique.size * len(echoes) != len(images):
        result["reason"] = (
            f"{len(images)} images do not form {unique.size} positions x {len(echoes)} echo(es)"
        )
        return
    if unique.size >= 2:
        steps = np.diff(unique)
        median = float(np.median(steps))
        result["slice_spacing"] = median
        tolerance = (reader or ReaderSettings()).gap_tolerance_mm(median)
        if np.abs(steps - median).max() > tolerance:
            result["reason"] = (
                f"uneven slice spacing ({steps.min():.3f}-{steps.max():.3f} mm): missing slices?"
            )
            return
    result["is_3d"] = unique.size >= 2
    result["consistent"] = True


class Malformed(ValueError):
    """A header value a sender got wrong (wrong multiplicity, not a number, bad length)."""


def _raw(ds: Any, name: str) -> Any:
    try:
        return getattr(ds, name, None)
    except Exception as exc:
        raise Malformed(f"malformed {name} in {_sop(ds)}: {type(exc).__name__}: {exc}") from exc


def _sop(ds: Any) -> str:
    return f"instance {_text(ds, 'SOPInstanceUID') or '(unknown)'}"


def _text(ds: Any, name: str) -> str:
    """A header value as text; empty when absent or not convertible (never raises)."""
    try:
        return str(getattr(ds, name, "") or "")
    except Exception:  # noqa: BLE001 - an unconvertible value is as good as absent here
        return ""


def _int(ds: Any, name: str) -> int | None:
    """A single integer value (None when absent or empty); :class:`Malformed` otherwise."""
    return _single(ds, name, int, "one integer")


def _float(ds: Any, name: str) -> float | None:
    """A single decimal value (None when absent or empty); :class:`Malformed` otherwise."""
    return _single(ds, name, float, "one number")


def _single(ds: Any, name: str, conv: Any, what: str) -> Any:
    value = _raw(ds, name)
    if value is None or value == "":
        return None
    try:
        if hasattr(value, "__len__") and not isinstance(value, str):
            raise TypeError(f"{len(value)} values")
        return conv(value)
    except (TypeError, ValueError) as exc:
        raise Malformed(f"malformed {name} in {_sop(ds)}: {_shown(value)} is not {what} "
                        f"({exc})") from exc


def _floats(ds: Any, name: str, count: int) -> list[float]:
    """Exactly ``count`` finite decimal values; :class:`Malformed` otherwise."""
    value = _raw(ds, name)
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise Malformed(f"malformed {name} in {_sop(ds)}: {_shown(value)} ({exc})") from exc
    if len(out) != count or not all(np.isfinite(out)):
        raise Malformed(f"malformed {name} in {_sop(ds)}: {_shown(value)} is not {count} "
                        "finite numbers")
    return out


def _shown(value: Any) -> str:
    text = repr(list(value)) if hasattr(value, "__iter__") and not isinstance(value, str) \
        else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
