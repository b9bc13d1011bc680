"""A NIfTI / NRRD / MetaImage volume as a DICOM MR series, so an uploaded volume takes the path
of a received series (spool, selection, every stage, the result objects in its study).

The volume is read and checked by :func:`pipeline.series.read_image_file` (the reader's own
refusals: N-D, colour, 2-D, too small) and written by the phantom's MR writer
(:func:`pipeline.phantom.dicom_writer.write_slices`): one MR Image Storage file per slice, the
volume's geometry (LPS, as SimpleITK reads it) in Image Position / Orientation and Pixel Spacing,
new UIDs. Intensities: a volume holding whole numbers in 0-65535 is stored as they are; any
other (float, negative) is mapped linearly onto 0-4095, which only scales the contrast the
segmentation normalises anyway (quantitative values such as T2 cannot come from one volume).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.uid import MRImageStorage, generate_uid

from kneenode.settings import ReaderSettings
from pipeline.phantom.dicom_writer import plane_attributes, write_slices
from pipeline.phantom.pose import ImageGrid
from pipeline.series.volume import read_image_file

#: Header fields the uploader may give (DICOM keyword -> value); others are not taken.
FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDescription",
          "SeriesDescription", "BodyPartExamined", "Laterality")
_STORED_MAX = 4095


def stored_values(array: np.ndarray) -> np.ndarray:
    """uint16 pixel values: whole numbers in 0-65535 as they are, anything else mapped onto
    0-4095 (minimum to 0, maximum to 4095)."""
    finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0 and hi <= 65535 and np.array_equal(finite, np.rint(finite)):
        return finite.astype(np.uint16)
    scale = _STORED_MAX / (hi - lo) if hi > lo else 0.0
    return np.rint((finite - lo) * scale).astype(np.uint16)


def volume_to_dicom(path: Path, folder: Path, fields: Mapping[str, str] | None = None, *,
                    limits: ReaderSettings | None = None, name: str = "") -> list[Path]:
    """Write the volume at ``path`` as an MR series into ``folder``; returns the files.

    ``fields`` (keywords of :data:`FIELDS`) fill the patient and descriptive attributes; what
    is missing stays empty except the Series Description (``UPLOAD <name>``, ``name`` being
    the file's name as uploaded, without its suffix; default: the name of ``path``).

    Raises
    ------
    NodeError
        INVALID_FORMAT from the reader when the file is not a usable 3-D grey-level volume.
    """
    volume = read_image_file(Path(path), limits)
    image = volume.image
    grid = ImageGrid(size=tuple(int(v) for v in image.GetSize()),  # type: ignore[arg-type]
                     spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
                     origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
                     direction=tuple(float(v) for v in image.GetDirection()))
    stored = stored_values(sitk.GetArrayFromImage(image))
    given = {k: str(v) for k, v in (fields or {}).items() if k in FIELDS and v}
    name = name or Path(path).name
    original = name
    for suffix in (".gz", ".nii", ".nrrd", ".mha"):
        name = name.removesuffix(suffix)
    date, now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    common: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",  # UTF-8: uploaders type names in any script
        "SOPClassUID": MRImageStorage,
        "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
        "StudyInstanceUID": generate_uid(), "StudyDate": date, "StudyTime": now,
        "ReferringPhysicianName": "", "StudyID": "", "AccessionNumber": "",
        "StudyDescription": "",
        "Modality": "MR", "SeriesInstanceUID": generate_uid(), "SeriesNumber": 1,
        "SeriesDate": date, "SeriesTime": now,
        "SeriesDescription": f"UPLOAD {name}"[:64], "BodyPartExamined": "", "Laterality": "",
        "FrameOfReferenceUID": generate_uid(), "PositionReferenceIndicator": "",
        "Manufacturer": "kneenode", "ManufacturerModelName": "volume upload",
        "ContentDate": date, "ContentTime": now,
        "ImageType": ["DERIVED", "SECONDARY", "OTHER"], "BurnedInAnnotation": "NO",
        **plane_attributes(grid),
        "ScanningSequence": ["RM"], "SequenceVariant": ["NONE"], "ScanOptions": "",
        "MRAcquisitionType": "3D", "EchoTime": "", "EchoTrainLength": "",
        "RepetitionTime": "", "ImagesInAcquisition": grid.size[2],
        "DerivationDescription": f"converted from {original}"[:1024],
        **given,
    }
    for key in ("PatientName", "PatientID", "StudyDescription", "SeriesDescription"):
        common[key] = str(common[key])[:64]
    folder.mkdir(parents=True, exist_ok=True)
    uids = [generate_uid() for _ in range(grid.size[2])]
    return write_slices(common, stored, grid, folder, uids)
