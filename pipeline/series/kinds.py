"""Honest refusals before analysis: objects that are not images, and volumes with nothing in them.

Both checks run in the ``prepare`` stage (node and ``kneenode analyze``), so an SR, a SEG or a
blank acquisition fails with its own code and a sentence naming what it is, instead of a reader
error about a missing ImagePositionPatient or a "knee" label map segmented from zeros.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import UID

from kneenode.errors import ErrorCode, NodeError


def sop_class_name(uid: str) -> str:
    """The SOP class's registered name (the UID itself when it is private or unknown)."""
    return str(UID(uid).name)


def is_image_class(uid: str) -> bool:
    """Whether instances of this SOP class carry an image (``... Image Storage``).

    Registered non-image storage classes (SR, Segmentation, Presentation States, Key Object
    Selection, Encapsulated PDF/CDA, Raw Data, Spectroscopy, ...) are not; a private or unknown
    class is given the benefit of the doubt and left to the reader.
    """
    name = sop_class_name(uid)
    if name == uid:
        return True
    return "Image Storage" in name


def refuse_non_images(sop_class_uids: Iterable[str]) -> None:
    """Raise NOT_AN_IMAGE when any SOP class is a non-image object, naming the object(s)."""
    wrong = sorted({u for u in sop_class_uids if u and not is_image_class(u)})
    if wrong:
        names = ", ".join(f"{sop_class_name(u)} ({u})" for u in wrong)
        raise NodeError(ErrorCode.NOT_AN_IMAGE, f"not an image series: {names}")


def sop_classes_of(files: Iterable[Path]) -> set[str]:
    """SOP Class UIDs of DICOM files (header only; unreadable files are the reader's business)."""
    from pydicom import dcmread

    classes: set[str] = set()
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except Exception:  # noqa: BLE001, S112 - the reader reports unreadable files precisely
            continue
        if "SOPClassUID" in ds:
            classes.add(str(ds.SOPClassUID))
    return classes


def refuse_blank(image: sitk.Image) -> None:
    """Raise BLANK_IMAGE when every voxel has the same value (nothing to segment)."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size == 0:
        raise NodeError(ErrorCode.BLANK_IMAGE, "the volume has no voxels")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo == hi:
        what = "blank (every voxel is 0)" if lo == 0 else f"constant (every voxel is {lo:g})"
        raise NodeError(ErrorCode.BLANK_IMAGE, f"the volume is {what}: {arr.size} voxels, "
                        f"size {list(image.GetSize())}")
