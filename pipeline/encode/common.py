"""Shared pieces of the result encoders: identity of the algorithm, source series, UIDs, numbering.

Why one module: every result object (SEG, SR, overlay, PDF) must carry the same Patient and Study as
the source series, new Series/SOP UIDs, series numbers that do not collide, and the algorithm that
produced it. Doing that in one place keeps the four objects consistent with each other.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kneenode.errors import ErrorCode, NodeError
from pipeline.encode.frames import frame_views, is_multiframe

#: Canonical tissue labels (DESIGN.md) -> (result key prefix, human label).
TISSUES: dict[int, tuple[str, str]] = {
    1: ("femur", "Femur"),
    2: ("tibia", "Tibia"),
    3: ("patella", "Patella"),
    4: ("fem_cart", "Femoral cartilage"),
    5: ("med_tib_cart", "Medial tibial cartilage"),
    6: ("lat_tib_cart", "Lateral tibial cartilage"),
    7: ("pat_cart", "Patellar cartilage"),
    8: ("med_men", "Medial meniscus"),
    9: ("lat_men", "Lateral meniscus"),
}
#: Femoral cartilage subregions (DESIGN.md) -> (result key prefix, human label).
SUBREGIONS: dict[int, tuple[str, str]] = {
    11: ("ant_fem_cart", "Anterior femoral cartilage"),
    12: ("med_wb_fem_cart", "Medial weight-bearing femoral cartilage"),
    13: ("lat_wb_fem_cart", "Lateral weight-bearing femoral cartilage"),
    14: ("med_post_fem_cart", "Medial posterior femoral cartilage"),
    15: ("lat_post_fem_cart", "Lateral posterior femoral cartilage"),
}
#: Display colours (RGB 0-255), shared by SEG (as CIELab), overlay and PDF.
COLORS: dict[int, tuple[int, int, int]] = {
    1: (230, 200, 150),
    2: (150, 190, 230),
    3: (200, 160, 220),
    4: (255, 60, 60),
    5: (60, 220, 60),
    6: (60, 120, 255),
    7: (255, 220, 0),
    8: (255, 120, 0),
    9: (0, 220, 220),
    11: (255, 0, 150),
    12: (255, 90, 90),
    13: (190, 0, 0),
    14: (255, 150, 200),
    15: (140, 60, 60),
}
#: Index of each result object within its block of series numbers.
SERIES_INDEX: dict[str, int] = {"seg": 1, "sr": 2, "overlay": 3, "pdf": 4}
#: Banner text that every human-readable result object shows.
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
DEMO_BANNER = "PHANTOM DEMO MODEL"
#: Banner colour (RGB) per QC outcome: the same in the overlay and the PDF.
QC_COLORS: dict[str, tuple[int, int, int]] = {
    "pass": (30, 120, 50), "warn": (200, 130, 0), "fail": (170, 0, 0),
}

_PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def encode_error(message: str) -> NodeError:
    """The error every encoder raises for unusable input (a DICOM_ERROR, not retried)."""
    return NodeError(ErrorCode.DICOM_ERROR, message)


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm identification written into every result object.

    Built from the segmentation model card (``ModelCard.as_dict()``) so that a phantom demo model is
    never mistaken for a clinical one downstream.
    """

    name: str
    version: str
    family: str = "Artificial Intelligence"
    is_demo: bool = False

    @classmethod
    def from_card(cls, card: Mapping[str, Any] | AlgorithmInfo) -> AlgorithmInfo:
        """Accept an :class:`AlgorithmInfo` or a model-card mapping (several key spellings)."""
        if isinstance(card, AlgorithmInfo):
            return card
        if not isinstance(card, Mapping):
            raise encode_error(f"model card must be a mapping, got {type(card).__name__}")
        name = card.get("algorithm_name", card.get("name"))
        version = card.get("algorithm_version", card.get("version"))
        family = card.get("algorithm_family", card.get("family", "Artificial Intelligence"))
        demo = card.get("is_demo", card.get("phantom_demo", card.get("demo", False)))
        if not name or not version:
            raise encode_error("model card lacks algorithm name or version")
        return cls(
            name=str(name)[:64], version=str(version)[:64], family=str(family), is_demo=bool(demo)
        )

    @property
    def label(self) -> str:
        """``name version`` plus the demo marker, for banners and descriptions."""
        demo = " (phantom demo model)" if self.is_demo else ""
        return f"{self.name} {self.version}{demo}"


def load_source(
    source: Sequence[Dataset | str | Path],
    *,
    pixels: bool,
    frames: Sequence[int | None] | None = None,
) -> list[Dataset]:
    """Return the source series as datasets sorted along the slice normal.

    Paths are read (headers only unless ``pixels``) and sorted by ascending position; datasets
    given in memory must already be sorted (either direction), since the label map is aligned to
    their order. A multi-frame (Enhanced MR) instance becomes one
    :class:`~pipeline.encode.frames.FrameView` per frame used: ``frames[i]`` names the frame of
    ``source[i]`` (the reader's ``volume.json`` ``frames``), else the instance's first echo is
    used; views are sorted by position.
    """
    if not source:
        raise encode_error("the source series is empty")
    if frames is not None and len(frames) != len(source):
        raise encode_error(f"{len(frames)} frame numbers for {len(source)} source slices")
    from_paths = not isinstance(source[0], Dataset)
    if from_paths:
        try:
            read = {str(p): pydicom.dcmread(p, stop_before_pixels=not pixels)
                    for p in dict.fromkeys(str(p) for p in source)}
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise encode_error(f"cannot read a source instance: {exc}") from exc
        items: list[Dataset] = [read[str(p)] for p in source]
    else:
        items = list(source)  # type: ignore[arg-type]
    multiframe = any(is_multiframe(d) for d in items)
    datasets = _expand_multiframe(items, frames, pixels) if multiframe else items
    _check_single_series(datasets)
    pos = slice_positions(datasets)
    if from_paths or multiframe:
        order = np.argsort(pos, kind="stable")
        datasets = [datasets[i] for i in order]
        pos = pos[order]
    steps = np.diff(pos)
    if len(datasets) > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        raise encode_error(
            "source slices are not sorted (strictly monotonic) along the slice normal"
        )
    return datasets


def _expand_multiframe(
    items: list[Dataset], frames: Sequence[int | None] | None, pixels: bool
) -> list[Dataset]:
    """Each multi-frame instance as views of its frames (those named, else its first echo)."""
    wanted: dict[int, list[int]] = {}
    for i, d in enumerate(items):
        number = frames[i] if frames is not None else None
        if number is not None:
            wanted.setdefault(id(d), []).append(int(number))
    out: list[Dataset] = []
    expanded: set[int] = set()
    for d in items:
        if not is_multiframe(d):
            out.append(d)
        elif id(d) not in expanded:  # a multi-frame path is listed once per slice
            expanded.add(id(d))
            out.extend(frame_views(d, wanted.get(id(d)), pixels=pixels))
    return out


def _check_single_series(datasets: Sequence[Dataset]) -> None:
    first = datasets[0]
    for kw in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "PixelSpacing",
        "Rows",
        "Columns",
    ):
        if kw not in first:
            raise encode_error(f"source instance lacks {kw}")
    for ds in datasets[1:]:
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
            if ds.get(kw) != first.get(kw):
                raise encode_error(f"source instances differ in {kw}")


def slice_positions(datasets: Sequence[Dataset]) -> np.ndarray:
    """Position of each slice along the normal of the first slice's orientation (mm)."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return np.array(
        [float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))) for d in datasets]
    )


def check_label_map(labels: np.ndarray, datasets: Sequence[Dataset]) -> np.ndarray:
    """Validate that the label map is (slices, rows, columns) integer data aligned to the source."""
    if not isinstance(labels, np.ndarray):
        raise encode_error(f"label map must be a numpy array, got {type(labels).__name__}")
    expected = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    if labels.shape != expected:
        raise encode_error(f"label map shape {labels.shape} does not match the source {expected}")
    if labels.dtype.kind not in "ui":
        raise encode_error(f"label map must be integer, got {labels.dtype}")
    highest = max(SUBREGIONS)
    if labels.size and (labels.min() < 0 or labels.max() > highest):
        raise encode_error(f"label values must be canonical labels within 0-{highest}")
    return labels if labels.dtype == np.uint8 else labels.astype(np.uint8)


def slice_label_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels of each label value per slice, shape (slices, 256).

    Slice by slice: ``np.bincount`` of the whole volume would first convert it to 64-bit
    integers (8 x its size, 0.1-0.8 s for a full series).
    """
    return np.stack([np.bincount(plane.ravel(), minlength=256) for plane in labels])


def new_uid(prefix: str | None = None) -> str:
    """A new UID under the configured root (pydicom's root when none is configured)."""
    return str(generate_uid(prefix=prefix)) if prefix else str(generate_uid())


def series_number(source: Dataset, kind: str, base: int | None) -> int:
    """Series number of a result object: ``base`` (or source series number x 100) + kind index."""
    if base is None:
        src = source.get("SeriesNumber")
        base = int(src) * 100 if src not in (None, "") else 9900
    return int(base) + SERIES_INDEX[kind]


def series_description(source: Dataset, kind: str, prefix: str) -> str:
    """``<prefix> <KIND> <source description>`` cut to the 64 characters of LO."""
    src = str(source.get("SeriesDescription", "") or "").strip()
    text = f"{prefix} {kind.upper()} {src}".strip()
    return text[:64]


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient, General Study and Patient Study attributes (Type 2 ones kept empty)."""
    for kw in _PATIENT_STUDY_KEYWORDS:
        if kw in source:
            setattr(target, kw, source[kw].value)
        elif kw in _TYPE2:
            setattr(target, kw, "")


def content_datetime() -> tuple[str, str]:
    """Current date and time as DICOM DA / TM strings."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def qc_banner(qc: Mapping[str, Any] | None) -> tuple[str, tuple[int, int, int]] | None:
    """(one-line text, colour) of the segmentation QC outcome, None when QC did not run.

    ``qc`` is ``results["qc"]`` (:class:`pipeline.qc.QcRecord` as a dict). A failed result says
    so first, then the reasons, so a reader who sees only the banner knows not to trust it.
    """
    if not isinstance(qc, Mapping) or qc.get("outcome") not in QC_COLORS:
        return None
    outcome = str(qc["outcome"])
    head = {"pass": "QC PASSED", "warn": "QC WARNING",
            "fail": "QC FAILED - DO NOT USE THESE RESULTS"}[outcome]
    reasons = [str(r.get("message", "")) for r in qc.get("reasons", []) if isinstance(r, Mapping)]
    reasons.sort(key=lambda m: not any(  # the failing reasons first
        r.get("message") == m and r.get("severity") == "fail" for r in qc.get("reasons", [])))
    text = head + (": " + "; ".join(reasons) if reasons else "")
    return text, QC_COLORS[outcome]


def knee_side(results: Mapping[str, Any]) -> str | None:
    """``'left'``/``'right'`` from results["side"] (L/R/left/right, any case); None when unknown."""
    raw = results.get("side", results.get("knee_side"))
    if raw is None:
        return None
    text = str(raw).strip().lower()
    if text in ("", "unknown", "none", "null", "n/a"):
        return None
    if text in ("l", "left"):
        return "left"
    if text in ("r", "right"):
        return "right"
    raise encode_error(f"knee side {raw!r} is neither left nor right")


_NAN_SAFE = re.compile(r"^[A-Za-z0-9_]+$")


def finite_float(results: Mapping[str, Any], key: str) -> float | None:
    """``results[key]`` as a finite float, or None when missing, null or not finite."""
    if not _NAN_SAFE.match(key) or key not in results or results[key] is None:
        return None
    try:
        value = float(results[key])
    except (TypeError, ValueError) as exc:
        raise encode_error(f"result {key} is not a number: {results[key]!r}") from exc
    return value if np.isfinite(value) else None
