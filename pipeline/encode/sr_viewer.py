"""Make the TID 1500 SR open in stock OHIF: a "Source of Measurement" outline on every measurement.

Why: OHIF 3.13 (extension cornerstone-dicom-sr) takes the geometry of a measurement group only
from SCOORD / SCOORD3D content items. A TID 1411 volumetric group whose region is a *Referenced
Segment* (an IMAGE item pointing at a SEG segment) has none, so OHIF builds a measurement with no
coordinates and then dereferences ``coords[0]`` (TypeError, error boundary: "Something went
wrong"). OHIF also skips every NUM that has child content items without a SCOORD among them, so
thickness mean / median / std (which carry a Derivation modifier) were never shown.

What: the standard lets every measurement (TID 300, included by TID 1419 in the TID 1411 group)
say where it was measured: ``INFERRED FROM`` an Image or Spatial Coordinates item (TID 320) with
the purpose (121112, DCM, "Source of Measurement"). :func:`add_measurement_sources` appends to
each NUM of each volumetric group one SCOORD POLYLINE: the closed outline of the group's segment
on its key slice (the source slice where the segment's cross-section is largest), ``SELECTED
FROM`` that source image. The groups stay TID 1411 groups referencing their SEG segments (so
``read_sr_measurements`` and any TID 1500 consumer read them as before); the outline is an
addition, and the key slices are added to the SR's evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from skimage import measure

from pipeline.encode.common import (
    SUBREGIONS,
    TISSUES,
    check_label_map,
    encode_error,
    slice_label_counts,
)
from pipeline.encode.frames import frame_number

_MEASUREMENT_GROUP = "125007"
_IMAGING_MEASUREMENTS = "126010"
#: Tracking ID (results key prefix) -> the labels of the label map its segment covers.
_LABELS_BY_KEY: dict[str, tuple[int, ...]] = {
    **{key: (label,) for label, (key, _) in TISSUES.items()},
    **{key: (label,) for label, (key, _) in SUBREGIONS.items()},
    "fem_cart": (4, *SUBREGIONS),
}


def key_slice_outline(mask: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Key slice (largest cross-section) and the closed outline of its largest region.

    Parameters
    ----------
    mask
        Boolean ``[slice, row, column]`` mask of one segment.

    Returns
    -------
    (slice index, ``(n, 2)`` float32 array of (column, row) SCOORD pixel coordinates), first
    point repeated last; None when the mask is empty.
    """
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        return None
    k = int(np.argmax(areas))
    return k, slice_outline(mask[k])


def slice_outline(mask2d: np.ndarray) -> np.ndarray:
    """Closed outline of the largest 4-connected region of a non-empty 2-D mask.

    (column, row) SCOORD pixel coordinates (pixel centres at +0.5), simplified to within half a
    pixel, first point repeated last.
    """
    regions = measure.label(mask2d, connectivity=1)
    largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    padded = np.pad(regions == largest, 1)
    contour = max(measure.find_contours(padded.astype(np.float32), 0.5), key=len)
    contour = measure.approximate_polygon(contour, tolerance=0.5) - 1.0  # undo the padding
    # find_contours works on pixel centres (index space); SCOORD puts pixel centres at +0.5.
    points = np.stack([contour[:, 1] + 0.5, contour[:, 0] + 0.5], axis=1).astype(np.float32)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def _key_slices(labels: np.ndarray, by_number: Mapping[int, tuple[int, ...]]) -> dict[int, int | None]:
    """Segment number -> the slice where its labels cover most pixels (None when empty).

    One label histogram per slice (common.slice_label_counts) instead of a full-volume mask per
    segment: fast on a 384x384x160 series.
    """
    counts = slice_label_counts(labels)
    out: dict[int, int | None] = {}
    for number, values in by_number.items():
        areas = counts[:, list(values)].sum(axis=1)
        out[number] = int(np.argmax(areas)) if areas.any() else None
    return out


def _source_of_measurement(points: np.ndarray, image: Dataset) -> hd.sr.ScoordContentItem:
    item = hd.sr.ScoordContentItem(
        name=codes.DCM.SourceOfMeasurement,
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    item.ContentSequence = DicomSequence([
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceImage,
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
            referenced_frame_numbers=frame_number(image),  # the frame of a multi-frame source
            relationship_type=hd.sr.RelationshipTypeValues.SELECTED_FROM,
        )
    ])
    return item


def _code(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else ""


def _measurement_groups(sr: Dataset) -> list[Dataset]:
    containers = [i for i in sr.ContentSequence if _code(i) == _IMAGING_MEASUREMENTS]
    if not containers:
        raise encode_error("the SR has no Imaging Measurements container")
    return [g for g in containers[0].ContentSequence if _code(g) == _MEASUREMENT_GROUP]


def _group_segment(group: Dataset) -> tuple[str, int]:
    """(tracking identifier, referenced segment number) of a TID 1411 group."""
    key, number = "", 0
    for item in group.ContentSequence:
        if item.ValueType == "TEXT" and _code(item) == "112039":  # Tracking Identifier
            key = str(item.TextValue)
        if item.ValueType == "IMAGE":
            for ref in item.ReferencedSOPSequence:
                if "ReferencedSegmentNumber" in ref:
                    number = int(ref.ReferencedSegmentNumber[0] if isinstance(
                        ref.ReferencedSegmentNumber, (list, tuple)) else ref.ReferencedSegmentNumber)
    return key, number


def _segment_labels(seg: Dataset) -> dict[int, tuple[int, ...]]:
    """SEG segment number -> the label map values it covers (by the segment's tracking ID)."""
    out = {}
    for item in seg.SegmentSequence:
        key = str(item.get("TrackingID", ""))
        if key in _LABELS_BY_KEY:
            out[int(item.SegmentNumber)] = _LABELS_BY_KEY[key]
    return out


def add_measurement_sources(
    sr: Dataset, *, source: Sequence[Dataset], labels: np.ndarray, seg: Dataset
) -> Dataset:
    """Add a "Source of Measurement" outline to every NUM of every volumetric group (in place).

    Parameters
    ----------
    sr
        The SR from :func:`pipeline.encode.sr.encode_sr` (groups reference segments of ``seg``).
    source
        The source series, sorted along the slice normal (as the encoders' ``load_source``).
    labels
        The canonical label map the SEG encodes, aligned to ``source``.
    seg
        The SEG the SR references.

    Returns
    -------
    pydicom.dataset.Dataset
        ``sr``, changed: NUM items gain an INFERRED FROM SCOORD; the key slices join the evidence.
    """
    labels = check_label_map(labels, source)
    by_number = _segment_labels(seg)
    key_slices = _key_slices(labels, by_number)
    outlines: dict[int, np.ndarray] = {}
    used: set[int] = set()
    for group in _measurement_groups(sr):
        _, number = _group_segment(group)
        k = key_slices.get(number)
        if k is None:
            continue
        if number not in outlines:
            outlines[number] = slice_outline(np.isin(labels[k], by_number[number]))
        points = outlines[number]
        used.add(k)
        for item in group.ContentSequence:
            # measurements only: not the NUMs of a Time Point Context (HAS OBS CONTEXT)
            if item.ValueType == "NUM" and item.get("RelationshipType") == "CONTAINS":
                children = list(item.get("ContentSequence", []))
                children.append(_source_of_measurement(points, source[k]))
                item.ContentSequence = DicomSequence(children)
    _add_evidence(sr, [source[k] for k in sorted(used)])
    return sr


def _add_evidence(sr: Dataset, images: Sequence[Dataset]) -> None:
    """List ``images`` in the Current Requested Procedure Evidence Sequence (same study)."""
    if not images:
        return
    study_uid = images[0].StudyInstanceUID
    evidence = sr.get("CurrentRequestedProcedureEvidenceSequence") or DicomSequence()
    study = next((s for s in evidence if s.StudyInstanceUID == study_uid), None)
    if study is None:
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = DicomSequence()
        evidence.append(study)
    series_uid = images[0].SeriesInstanceUID
    series = next((s for s in study.ReferencedSeriesSequence if s.SeriesInstanceUID == series_uid), None)
    if series is None:
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = DicomSequence()
        study.ReferencedSeriesSequence.append(series)
    have = {str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence}
    for image in images:
        if str(image.SOPInstanceUID) not in have:
            ref = Dataset()
            ref.ReferencedSOPClassUID = image.SOPClassUID
            ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
            series.ReferencedSOPSequence.append(ref)
    sr.CurrentRequestedProcedureEvidenceSequence = evidence


def outlines_by_key(sr: Dataset) -> Mapping[str, list[np.ndarray]]:
    """Tracking identifier -> the outlines its NUMs carry (for tests and review)."""
    out: dict[str, list[np.ndarray]] = {}
    for group in _measurement_groups(sr):
        key, _ = _group_segment(group)
        for item in group.ContentSequence:
            for child in item.get("ContentSequence", []) if item.ValueType == "NUM" else []:
                if child.ValueType == "SCOORD":
                    out.setdefault(key, []).append(np.asarray(child.GraphicData, float).reshape(-1, 2))
    return out
