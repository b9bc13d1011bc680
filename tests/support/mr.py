"""Small synthetic MR series written with pydicom, for edge tests that need no anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
) -> list[Path]:
    """Write a sagittal MR series (one file per slice); returns the paths in slice order.

    ``images_in_acquisition`` writes that header (as GE does), an expected count for completion.
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
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [round(i * spacing, 4), -50.0, 50.0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], spacing
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
