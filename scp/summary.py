"""The summary of a complete series version: what arrived, and whether its geometry is sane.

Written as ``summary.json`` next to the instances. It is what selection rules and operators read
first, so it says plainly why a series looks unusable. Header-only reads (no pixel data).
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
        syntaxes[str(ds.file_meta.TransferSyntaxUID)] += 1
    first = headers[0] if headers else None

    def text(name: str) -> str:
        return str(getattr(first, name, "") or "") if first is not None else ""

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
        "sop_class_uids": sorted({str(h.SOPClassUID) for h in headers if "SOPClassUID" in h}),
        "transfer_syntaxes": dict(syntaxes),
        "unreadable": unreadable,
        "geometry": geometry_check(headers, reader),
    }


def geometry_check(headers: list[Any], reader: ReaderSettings | None = None) -> dict[str, Any]:
    """Sanity of the slice geometry: one orientation, one matrix, unique, evenly spaced slices.

    Multi-echo series (several EchoTimes at each position) count each position once. An
    Enhanced (multi-frame) instance counts its frames. ``reason`` names the first problem found.
    A slice gap is uneven when it differs from the median by more than the reader's gap tolerance
    (``reader``, the ``reader`` settings): what the reader resamples the summary accepts.
    """
    result: dict[str, Any] = {
        "is_3d": False, "slices": 0, "echoes": 0, "consistent": False, "reason": None,
        "rows": None, "columns": None, "pixel_spacing": None, "slice_spacing": None,
    }
    if not headers:
        result["reason"] = "no readable instances"
        return result
    frames = [int(getattr(h, "NumberOfFrames", 1) or 1) for h in headers]
    if len(headers) == 1 and frames[0] > 1:
        result.update(is_3d=frames[0] >= 2, slices=frames[0], echoes=1, consistent=True,
                      rows=_int(headers[0], "Rows"), columns=_int(headers[0], "Columns"))
        return result
    images = [h for h in headers if "ImagePositionPatient" in h and "ImageOrientationPatient" in h]
    if len(images) < len(headers):
        result["reason"] = f"{len(headers) - len(images)} instance(s) without position/orientation"
        return result
    matrices = {(_int(h, "Rows"), _int(h, "Columns")) for h in images}
    orients = np.array([[float(v) for v in h.ImageOrientationPatient] for h in images])
    echoes = sorted({float(getattr(h, "EchoTime", 0) or 0) for h in images})
    result.update(rows=images[0].Rows, columns=images[0].Columns, echoes=len(echoes),
                  pixel_spacing=[float(v) for v in getattr(images[0], "PixelSpacing", [])] or None)
    if len(matrices) > 1:
        result["reason"] = f"mixed matrix sizes {sorted(matrices)}"
        return result
    if np.abs(orients - orients[0]).max() > 1e-3:
        result["reason"] = "mixed image orientations"
        return result
    normal = np.cross(orients[0][:3], orients[0][3:])
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in images]) @ normal
    unique = np.unique(np.round(positions, 3))
    result["slices"] = int(unique.size)
    if unique.size * len(echoes) != len(images):
        result["reason"] = (
            f"{len(images)} images do not form {unique.size} positions x {len(echoes)} echo(es)"
        )
        return result
    if unique.size >= 2:
        steps = np.diff(unique)
        median = float(np.median(steps))
        result["slice_spacing"] = median
        tolerance = (reader or ReaderSettings()).gap_tolerance_mm(median)
        if np.abs(steps - median).max() > tolerance:
            result["reason"] = (
                f"uneven slice spacing ({steps.min():.3f}-{steps.max():.3f} mm): missing slices?"
            )
            return result
    result["is_3d"] = unique.size >= 2
    result["consistent"] = True
    return result


def _int(ds: Any, name: str) -> int | None:
    value = getattr(ds, name, None)
    return int(value) if value is not None else None
