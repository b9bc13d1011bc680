"""Small synthetic MR series written with pydicom, for edge tests that need no anatomy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def mr_series(
    folder: Path,
    *,
    slices: int = 24,
    rows: int = 32,
    columns: int = 32,
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "MR",
    description: str = "SAG 3D DESS KNEE",
    spacing: float = 0.7,
    seed: int = 0,
    images_in_acquisition: int | None = None,
    orientation: Sequence[float] = (0, 1, 0, 0, 0, -1),
    positions: Sequence[Sequence[float]] | None = None,
    header: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write an MR series (one file per slice); returns the paths in slice order.

    Sagittal slices ``spacing`` apart by default; ``orientation`` and ``positions`` (one
    ImagePositionPatient per slice, written as given) describe any other geometry.
    ``images_in_acquisition`` writes that header (as GE does), an expected count for completion.
    ``header`` sets further attributes on every instance (keyword -> value, e.g. PatientID,
    IssuerOfPatientID, StudyDate, Laterality), after the defaults.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID = "PHANTOM^EDGE", "PHANTOM-0001"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", ""
        ds.ReferringPhysicianName, ds.StudyID = "", "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, i + 1
        ds.SeriesDescription, ds.BodyPartExamined = description, "KNEE"
        ds.Manufacturer = "kneenode tests"
        ds.MRAcquisitionType, ds.ScanningSequence, ds.SequenceVariant = "3D", "GR", "SS"
        ds.ScanOptions, ds.EchoTime, ds.RepetitionTime = "", 6.0, 20.0
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        if images_in_acquisition is not None:
            ds.AcquisitionNumber, ds.ImagesInAcquisition = 1, images_in_acquisition
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
        ds.ImagePositionPatient = ([f"{v:.6g}" for v in positions[i]] if positions is not None
                                   else [round(i * spacing, 4), -50.0, 50.0])
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], spacing
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
        for keyword, value in (header or {}).items():
            setattr(ds, keyword, value)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


SCANNER_SPACING = 0.7
SCANNER_SLICES = 40


def oblique_plane() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column direction of a sagittal plane tilted 12 and 17 degrees, and its normal."""
    a, b = np.radians(12.0), np.radians(17.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rx @ rz
    row, col = rot @ np.array([0.0, 1.0, 0.0]), rot @ np.array([0.0, 0.0, -1.0])
    return row, col, np.cross(row, col)


def scanner_like_series(folder: Path, drop: int | None = None) -> np.ndarray:
    """An oblique series as a GE scanner writes it: 0.3 % jitter on every gap, Image Position
    rounded to 0.1 mm (``drop``: the index of a slice left out).

    Each slice's pixels are 100 + 100 x its written distance along the normal from the first
    slice (mm), so a correct linear resampling gives 100 + 100 x the uniform grid position.
    Returns the written distances along the normal of the slices kept.
    """
    row, col, normal = oblique_plane()
    rng = np.random.default_rng(7)
    gaps = SCANNER_SPACING * (1 + 0.003 * rng.uniform(-1, 1, SCANNER_SLICES - 1))
    dist = np.concatenate([[0.0], np.cumsum(gaps)])
    positions = np.round(np.array([-31.27, 12.94, 40.51]) + dist[:, None] * normal, 1)
    keep = [i for i in range(SCANNER_SLICES) if i != drop]
    paths = mr_series(folder, slices=len(keep), orientation=[*row, *col],
                      positions=positions[keep].tolist())
    written = positions[keep] @ normal
    for path, d in zip(paths, written, strict=True):
        ds = dcmread(path)
        ds.PixelData = np.full((ds.Rows, ds.Columns), round(100 * (d - written[0])) + 100,
                               np.uint16).tobytes()
        ds.save_as(path)
    return written
