"""What the history needs from a series' DICOM header: who and when, read from one instance.

Only these attributes are read (``specific_tags``, no pixels). The Patient ID and Issuer leave
this module only as input to :func:`kneenode.history.pseudonym`; they are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom

from kneenode.errors import ErrorCode, NodeError

_TAGS = ["PatientID", "IssuerOfPatientID", "StudyDate", "AcquisitionDate", "AcquisitionDateTime",
         "SeriesDate", "Laterality", "ImageLaterality", "StudyInstanceUID", "SeriesInstanceUID"]


@dataclass(frozen=True, repr=False)
class PatientHeader:
    """The identifying and dating attributes of a series (``repr`` hides the Patient ID)."""

    patient_id: str
    issuer: str
    study_date: date | None
    acquisition_date: date | None
    laterality: str | None
    study_uid: str
    series_uid: str

    def __repr__(self) -> str:  # never print the Patient ID by accident
        return f"PatientHeader(series_uid={self.series_uid!r}, study_date={self.study_date})"


def dicom_date(value: object) -> date | None:
    """A DA (``YYYYMMDD``) or the date part of a DT; None when empty or malformed."""
    text = str(value or "").strip()[:8]
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def read_patient_header(series: Path) -> PatientHeader:
    """The header of the first instance (``*.dcm``) of a spool version folder, or of a file.

    Raises
    ------
    NodeError
        FILE_NOT_FOUND without any instance, DICOM_ERROR when it does not parse.
    """
    path = Path(series)
    files = [path] if path.is_file() else sorted(path.glob("*.dcm"))
    if not files:
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"no *.dcm instance in {path} for the history")
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same operator problem
        raise NodeError(ErrorCode.DICOM_ERROR, f"{files[0].name}: header unreadable for the "
                        f"history: {type(exc).__name__}") from None
    lat = str(ds.get("Laterality", "") or ds.get("ImageLaterality", "") or "").strip().upper()
    acquired = dicom_date(ds.get("AcquisitionDate")) or dicom_date(ds.get("AcquisitionDateTime"))
    return PatientHeader(
        patient_id=str(ds.get("PatientID", "") or "").strip(" \x00"),
        issuer=str(ds.get("IssuerOfPatientID", "") or "").strip(" \x00"),
        study_date=dicom_date(ds.get("StudyDate")) or dicom_date(ds.get("SeriesDate")),
        acquisition_date=acquired,
        laterality=lat if lat in ("R", "L") else None,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )
