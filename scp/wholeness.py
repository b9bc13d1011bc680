"""Is an open series provably whole? A pure judgement over header records.

The completion policy ``auto`` closes a series when its association ends instead of waiting out
the quiet timer, but only if the headers prove nothing is missing. Two kinds of proof:

* **count**: the headers say how many images to expect (Images in Acquisition; Number of Slices
  x echoes x temporal positions; one Enhanced multi-frame object whose frame count and
  dimension index form a full grid) and exactly that many arrived, as whole stacks;
* **geometry**: every stack (one per echo / temporal position) is gap-free and evenly spaced.
  A missing *end* slice cannot be seen this way, so geometry alone needs the release guard of
  :mod:`scp.early` as well.

:func:`read_header` is the only I/O here (one header-only read per file).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.multival import MultiValue

MIN_SLICES = 3  # two positions are always "evenly spaced": no evidence of a stack
_TOLERANCE = 0.1  # relative spread of slice steps still called even (as scp.summary)

_TAGS = [
    "SOPInstanceUID", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient",
    "EchoTime", "EchoNumbers", "TemporalPositionIdentifier", "NumberOfTemporalPositions",
    "ImagesInAcquisition", "AcquisitionNumber", "NumberOfSlices", "NumberOfFrames",
    "PerFrameFunctionalGroupsSequence",
]


@dataclass(frozen=True)
class SliceHeader:
    """What completion needs from one instance's header."""

    sop_uid: str
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    matrix: tuple[int, int] | None = None
    echo_time: float | None = None
    echo_number: int | None = None
    temporal_position: int | None = None
    temporal_positions: int | None = None
    images_in_acquisition: int | None = None
    acquisition_number: int | None = None
    number_of_slices: int | None = None
    frames: int = 1
    frame_items: int | None = None  # per-frame functional group items (Enhanced objects)
    dimension_indices: tuple[tuple[int, ...], ...] | None = None


@dataclass(frozen=True)
class Wholeness:
    """The verdict on an open series.

    ``whole``: every stack gap-free and evenly spaced (or one complete Enhanced object);
    ``count_met``: an expected count is known (``basis``) and exactly met; ``reason``: why not
    whole, or why no count, in words for the events.
    """

    whole: bool
    count_met: bool
    found: int
    expected: int | None
    basis: str | None
    stacks: int
    slices: int
    reason: str | None


def read_header(path: Path) -> SliceHeader:
    """Read the completion-relevant header of one spooled instance (no pixel data)."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    indices: tuple[tuple[int, ...], ...] | None = None
    if per_frame:
        found = [_frame_index(item) for item in per_frame]
        if all(i is not None for i in found):
            indices = tuple(i for i in found if i is not None)
    position = _floats(ds, "ImagePositionPatient")
    return SliceHeader(
        sop_uid=str(getattr(ds, "SOPInstanceUID", "") or path.stem),
        position=tuple(position) if position is not None and len(position) == 3 else None,  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient"),
        matrix=(int(ds.Rows), int(ds.Columns)) if "Rows" in ds and "Columns" in ds else None,
        echo_time=_number(ds, "EchoTime", float),
        echo_number=_number(ds, "EchoNumbers", int),
        temporal_position=_number(ds, "TemporalPositionIdentifier", int),
        temporal_positions=_number(ds, "NumberOfTemporalPositions", int),
        images_in_acquisition=_number(ds, "ImagesInAcquisition", int),
        acquisition_number=_number(ds, "AcquisitionNumber", int),
        number_of_slices=_number(ds, "NumberOfSlices", int),
        frames=_number(ds, "NumberOfFrames", int) or 1,
        frame_items=len(per_frame) if per_frame is not None else None,
        dimension_indices=indices,
    )


def assess(headers: Sequence[SliceHeader]) -> Wholeness:
    """Judge whether ``headers`` (one per instance of an open series) form a whole series."""
    if not headers:
        return _no(0, "no instances")
    if len(headers) == 1 and headers[0].frames > 1:
        return _enhanced(headers[0])
    if any(h.frames > 1 for h in headers):
        return _no(len(headers), "several multi-frame objects: no whole-series proof")
    whole, slices, stacks, reason = _stacks(headers)
    expected, basis = _expected(headers, stacks)
    met = expected is not None and expected == len(headers)
    if whole and expected is not None and not met:
        reason = f"{len(headers)} of {expected} expected images ({basis})"
    return Wholeness(whole=whole, count_met=met and whole, found=len(headers), expected=expected,
                     basis=basis, stacks=stacks, slices=slices, reason=reason)


def _stacks(headers: Sequence[SliceHeader]) -> tuple[bool, int, int, str | None]:
    """(gap-free and evenly spaced, slices per stack, number of stacks, reason if not)."""
    if any(h.position is None or h.orientation is None for h in headers):
        return False, 0, 0, "instances without position/orientation"
    if len({h.matrix for h in headers}) > 1:
        return False, 0, 0, "mixed matrix sizes"
    orients = np.array([h.orientation for h in headers], dtype=float)
    if orients.shape[1] != 6 or np.abs(orients - orients[0]).max() > 1e-3:
        return False, 0, 0, "mixed image orientations"
    normal = np.cross(orients[0][:3], orients[0][3:])
    groups: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for h in headers:
        key = (h.echo_time, h.echo_number, h.temporal_position)
        groups[key].append(float(np.dot(np.asarray(h.position, dtype=float), normal)))
    layouts: set[tuple[float, ...]] = set()
    for positions in groups.values():
        rounded = np.round(np.sort(np.asarray(positions)), 2)
        if np.unique(rounded).size != rounded.size:
            return False, 0, len(groups), "two images at one position in one stack"
        if rounded.size < MIN_SLICES:
            return False, int(rounded.size), len(groups), f"fewer than {MIN_SLICES} slices"
        steps = np.diff(rounded)
        median = float(np.median(steps))
        if steps.max() - steps.min() > _TOLERANCE * abs(median) + 1e-3:
            gap = float(steps.max())
            return False, int(rounded.size), len(groups), (
                f"uneven slice spacing: a {gap:.2f} mm step where {median:.2f} mm is usual "
                f"(missing slice?)")
        layouts.add(tuple(rounded))
    if len(layouts) > 1:
        return False, 0, len(groups), "stacks (echoes / temporal positions) differ in slices"
    return True, len(next(iter(layouts))), len(groups), None


def _expected(headers: Sequence[SliceHeader], stacks: int) -> tuple[int | None, str | None]:
    """The expected image count the headers state, and which attribute said so."""
    acquisitions = {h.acquisition_number for h in headers}
    per_acq = {h.images_in_acquisition for h in headers}
    if len(acquisitions) == 1 and len(per_acq) == 1 and None not in per_acq:
        value = next(iter(per_acq))
        if value:
            return int(value), "images_in_acquisition"
    slices = {h.number_of_slices for h in headers}
    if len(slices) == 1 and None not in slices:
        n = next(iter(slices)) or 0
        temporal = max((h.temporal_positions or 1) for h in headers)
        numbers = [h.echo_number for h in headers if h.echo_number is not None]
        # Echo Numbers 1..k say k echoes even before the last echo arrived; else count echo times
        if len(numbers) == len(headers):
            echoes = max(numbers)
        else:
            echoes = len({h.echo_time for h in headers})
        if n:
            return n * temporal * echoes, "number_of_slices"
    return None, None


def _enhanced(h: SliceHeader) -> Wholeness:
    """One multi-frame object: whole when its per-frame items and dimension index are complete."""
    if h.frame_items != h.frames:
        return _no(1, f"{h.frame_items} per-frame items for {h.frames} frames")
    if h.dimension_indices:
        grid = np.array(h.dimension_indices)
        full = int(np.prod([np.unique(grid[:, d]).size for d in range(grid.shape[1])]))
        unique = len(set(h.dimension_indices))
        if unique != h.frames or full != h.frames:
            return _no(1, f"dimension index covers {unique} of {full} positions")
    return Wholeness(whole=True, count_met=True, found=1, expected=1, basis="enhanced_frames",
                     stacks=1, slices=h.frames, reason=None)


def _no(found: int, reason: str) -> Wholeness:
    return Wholeness(whole=False, count_met=False, found=found, expected=None, basis=None,
                     stacks=0, slices=0, reason=reason)


def _frame_index(item: Any) -> tuple[int, ...] | None:
    content = getattr(item, "FrameContentSequence", None)
    if not content or "DimensionIndexValues" not in content[0]:
        return None
    value = content[0].DimensionIndexValues
    many = isinstance(value, (MultiValue, list, tuple))
    return tuple(int(v) for v in value) if many else (int(value),)


def _floats(ds: Any, name: str) -> tuple[float, ...] | None:
    value = getattr(ds, name, None)
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _number(ds: Any, name: str, kind: type) -> Any:
    value = getattr(ds, name, None)
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None
