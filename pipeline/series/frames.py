"""DICOM instances -> frames: one 2-D image with its own geometry, echo time and source reference.

Why frames: a classic series has one frame per file, an Enhanced (or Legacy Converted Enhanced) MR
object has all of them in one file with per-frame and shared functional groups. Reducing both to
the same :class:`Frame` lets one stacking and validation path serve every input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from kneenode.errors import ErrorCode, NodeError

GE_CREATOR = "GEMS_ACQU_01"


@dataclass(frozen=True)
class SliceRef:
    """Where one slice of the volume came from (what encoders reference)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    frame: int | None  # 1-based frame number in a multi-frame instance, None for single-frame


@dataclass(frozen=True)
class Frame:
    """One 2-D frame of the input with its geometry (patient LPS, mm)."""

    ref: SliceRef
    position: tuple[float, float, float]
    orientation: tuple[float, ...]  # 6 direction cosines: row direction, column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int
    echo_time: float | None
    slope: float
    intercept: float
    echo_number: int | None = None


def invalid(message: str) -> NodeError:
    """The reader's error for an input that is not a usable 3-D volume."""
    return NodeError(ErrorCode.INVALID_FORMAT, message)


def read_header(path: Path) -> Dataset:
    """One file with its large values (pixel data) deferred: header speed, pixels read on access.

    A non-DICOM file is a DICOM_ERROR naming the file.
    """
    try:
        return pydicom.dcmread(path, defer_size=4096)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise NodeError(ErrorCode.DICOM_ERROR, f"{path.name} is not a readable DICOM file ({exc})") from exc


def _items(ds: Dataset, keyword: str, index: int | None) -> Iterator[Dataset]:
    seq = ds.get(keyword)
    if not seq:
        return
    item = seq[index] if index is not None else seq[0]
    for elem in item:
        if elem.VR == "SQ" and elem.value:
            yield elem.value[0]


def lookup(ds: Dataset, keyword: str, frame_index: int | None = None) -> Any:
    """Value of ``keyword`` for a frame: per-frame group, then shared group, then top level."""
    if frame_index is not None:
        for item in _items(ds, "PerFrameFunctionalGroupsSequence", frame_index):
            if keyword in item:
                return item[keyword].value
    for item in _items(ds, "SharedFunctionalGroupsSequence", None):
        if keyword in item:
            return item[keyword].value
    return ds[keyword].value if keyword in ds else None


def private_value(ds: Dataset, group: int, creator: str, offset: int) -> Any:
    """A private element by creator (top level or any shared functional group), else None."""
    candidates = [ds, *_items(ds, "SharedFunctionalGroupsSequence", None)]
    for item in candidates:
        try:
            block = item.private_block(group, creator)
        except KeyError:
            continue
        if offset in block:
            return block[offset].value
    return None


def _floats(value: Any, n: int, what: str, ref: SliceRef) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(np.isfinite(out)):
        where = ref.path.name + (f" frame {ref.frame}" if ref.frame else "")
        raise invalid(f"{where}: {what} is missing or malformed ({value!r})")
    return out


def frames_of(path: Path, ds: Dataset) -> list[Frame]:
    """Every frame of one instance, with its geometry from the header."""
    sop = str(ds.get("SOPInstanceUID", ""))
    cls = str(ds.get("SOPClassUID", ""))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multi = "PerFrameFunctionalGroupsSequence" in ds or n_frames > 1
    out = []
    for f in range(n_frames):
        idx = f if multi else None
        ref = SliceRef(path=path, sop_instance_uid=sop, sop_class_uid=cls, frame=f + 1 if multi else None)
        te = lookup(ds, "EchoTime", idx)
        if te is None:
            te = lookup(ds, "EffectiveEchoTime", idx)
        slope = lookup(ds, "RescaleSlope", idx)
        intercept = lookup(ds, "RescaleIntercept", idx)
        out.append(Frame(
            ref=ref,
            position=_floats(lookup(ds, "ImagePositionPatient", idx), 3, "ImagePositionPatient", ref),  # type: ignore[arg-type]
            orientation=_floats(lookup(ds, "ImageOrientationPatient", idx), 6,
                                "ImageOrientationPatient", ref),
            pixel_spacing=_floats(lookup(ds, "PixelSpacing", idx), 2, "PixelSpacing", ref),  # type: ignore[arg-type]
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            echo_time=float(te) if te not in (None, "") else None,
            slope=float(slope) if slope not in (None, "") else 1.0,
            intercept=float(intercept) if intercept not in (None, "") else 0.0,
            echo_number=_echo_number(lookup(ds, "EchoNumbers", idx)),
        ))
    return out


def _echo_number(value: Any) -> int | None:
    """EchoNumbers (IS, possibly multi-valued) as one int; None when absent or unreadable."""
    if value in (None, ""):
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def load_pixels(frames: Sequence[Frame], datasets: Mapping[Path, Dataset]) -> np.ndarray:
    """Pixel data of the frames, in the given order, as float32 ``[n, rows, columns]``.

    Each instance is decoded once (any transfer syntax pydicom and the pylibjpeg plugins decode);
    the modality rescale of each frame is applied.
    """
    by_path: dict[Path, list[int]] = {}
    for i, fr in enumerate(frames):
        by_path.setdefault(fr.ref.path, []).append(i)
    out = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    for path, idxs in by_path.items():
        try:
            arr = datasets[path].pixel_array
        except Exception as exc:  # decoder errors come in many types
            raise NodeError(ErrorCode.DICOM_ERROR, f"{path.name}: pixel data cannot be decoded "
                            f"({type(exc).__name__}: {exc})") from exc
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != out.shape[1:]:
            raise invalid(f"{path.name}: pixel data of shape {arr.shape} is not a grey-level image "
                          f"of {out.shape[1]}x{out.shape[2]}")
        for i in idxs:
            fr = frames[i]
            plane = out[i]
            plane[...] = arr[(fr.ref.frame or 1) - 1]
            if fr.slope != 1.0 or fr.intercept != 0.0:
                plane *= np.float32(fr.slope)
                plane += np.float32(fr.intercept)
    return out
