"""Multi-frame (Enhanced MR) sources as one view per frame, and references that name the frame.

Why views: every encoder walks the source series slice by slice (position, SOP identity, pixels).
A :class:`FrameView` is one frame of a multi-frame instance presented as a single-frame image:
the instance's top-level attributes (Patient, Study, Series, SOP Class and Instance UID) plus the
frame's own geometry from the functional groups (Image Position / Orientation, Pixel Spacing,
Slice Thickness, rescale), and with pixels its decoded frame as native pixel data. The encoders
then treat classic and Enhanced sources alike; the only difference is in what they write as a
reference: :func:`image_reference` adds the Referenced Frame Number of a view.

Which frames: those the caller names (the jobs layer passes the reader's ``volume.json`` frames,
i.e. the echo the volume geometry was built from), else every frame of the instance's first
(shortest) echo time, as :func:`pipeline.series.read_series` builds the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from kneenode.errors import ErrorCode, NodeError
from pipeline.series.frames import Frame, frames_of

#: Top-level elements a view does not carry (frame-level data and the pixels of every frame).
_NOT_IN_VIEW = {
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "NumberOfFrames",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "DimensionIndexSequence",
    "DimensionOrganizationSequence", "DimensionOrganizationType",
}


class FrameView(Dataset):
    """One frame of a multi-frame source instance, seen as a single-frame image.

    ``frame_number`` is the 1-based frame of the instance (Referenced Frame Number).
    """

    frame_number: int


def is_multiframe(ds: Dataset) -> bool:
    """True for an instance with functional groups (Enhanced / Legacy Converted Enhanced)."""
    return not isinstance(ds, FrameView) and "PerFrameFunctionalGroupsSequence" in ds


def frame_number(ds: Dataset) -> int | None:
    """The frame a view stands for; None for a single-frame instance."""
    return ds.frame_number if isinstance(ds, FrameView) else None


def image_reference(ds: Dataset, *, frames: Sequence[int] | None = None) -> Dataset:
    """Image SOP Instance Reference of a slice (its frame number when it is a view)."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frames is None:
        own = frame_number(ds)
        frames = [own] if own is not None else []
    numbers = list(frames)
    if numbers:
        item.ReferencedFrameNumber = numbers if len(numbers) > 1 else numbers[0]
    return item


def instance_references(datasets: Sequence[Dataset], *, with_frames: bool) -> list[Dataset]:
    """One reference per source instance (in first-seen order), listing the frames used."""
    order: dict[str, list[Dataset]] = {}
    for d in datasets:
        order.setdefault(str(d.SOPInstanceUID), []).append(d)
    out = []
    for group in order.values():
        numbers = sorted(n for n in (frame_number(d) for d in group) if n)
        out.append(image_reference(group[0], frames=numbers if with_frames else []))
    return out


def unique_instances(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The first slice of each source instance (for evidence lists: one entry per instance)."""
    seen: dict[str, Dataset] = {}
    for d in datasets:
        seen.setdefault(str(d.SOPInstanceUID), d)
    return list(seen.values())


def _error(message: str) -> NodeError:
    return NodeError(ErrorCode.DICOM_ERROR, message)


def _geometry(ds: Dataset) -> list[Frame]:
    path = Path(str(getattr(ds, "filename", "") or "multi-frame instance"))
    try:
        return frames_of(path, ds)
    except NodeError as exc:
        raise _error(f"multi-frame source: {exc.message}") from exc


def _first_echo(frames: list[Frame]) -> list[int]:
    times = [f.echo_time for f in frames]
    if any(t is None for t in times):
        return [f.ref.frame or 1 for f in frames]
    shortest = min(round(t, 3) for t in times if t is not None)
    return [f.ref.frame or 1 for f in frames if round(f.echo_time or 0.0, 3) == shortest]


def _decoded(ds: Dataset) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoder errors come in many types
        raise _error(f"cannot decode the multi-frame source pixel data: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr


def frame_views(ds: Dataset, frames: Sequence[int] | None, *, pixels: bool) -> list[FrameView]:
    """Views of the given frames (1-based) of a multi-frame instance, in the given order.

    Without ``frames``: every frame of the shortest echo time, in frame order.
    """
    geometry = _geometry(ds)
    numbers = list(frames) if frames is not None else _first_echo(geometry)
    if any(not 1 <= n <= len(geometry) for n in numbers):
        raise _error(f"frame numbers {numbers[:4]}... outside the source's 1-{len(geometry)}")
    base = {e.tag: e for e in ds if e.keyword not in _NOT_IN_VIEW}
    stored = _decoded(ds) if pixels else None
    out = []
    for n in numbers:
        fr = geometry[n - 1]
        view = FrameView(dict(base))  # shares the instance's elements: replace, never modify
        view.frame_number = n
        view.add_new("ImagePositionPatient", "DS", list(fr.position))
        view.add_new("ImageOrientationPatient", "DS", list(fr.orientation))
        view.add_new("PixelSpacing", "DS", list(fr.pixel_spacing))
        if (fr.slope, fr.intercept) != (1.0, 0.0):
            view.add_new("RescaleSlope", "DS", fr.slope)
            view.add_new("RescaleIntercept", "DS", fr.intercept)
        thickness = _shared_or_frame(ds, n - 1, "PixelMeasuresSequence", "SliceThickness")
        if thickness is not None:
            view.add_new("SliceThickness", "DS", thickness)
        meta = FileMetaDataset(getattr(ds, "file_meta", FileMetaDataset()))
        if stored is not None:
            plane = np.ascontiguousarray(stored[n - 1])
            bits = plane.dtype.itemsize * 8
            view.add_new("BitsAllocated", "US", bits)
            view.add_new("PixelRepresentation", "US", int(plane.dtype.kind == "i"))
            data = plane.astype(plane.dtype.newbyteorder("<")).tobytes()
            view.add_new("PixelData", "OW" if bits > 8 else "OB", data)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        view.file_meta = meta
        out.append(view)
    return out


def _shared_or_frame(ds: Dataset, index: int, group: str, keyword: str) -> object | None:
    """``keyword`` of a functional group macro: the frame's own item, else the shared one."""
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(seq) or []
        item = items[index if seq.startswith("Per") else 0] if items else None
        if item is not None and group in item and item[group].value:
            macro = item[group].value[0]
            if keyword in macro:
                return macro[keyword].value
    return None
