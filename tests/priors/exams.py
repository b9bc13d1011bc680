"""Knee exams of named patients for the priors tests: a phantom series re-labelled with a
Patient ID, Issuer, name, Study Date and fresh study/series UIDs (the phantom's own side kept,
so the header's Laterality matches the knee quantify measures)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID


def _uid(*parts: str) -> UID:
    value = int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:16], "big")
    return UID(f"2.25.{value}")


@dataclass(frozen=True)
class Exam:
    """One written exam: its files and identifiers."""

    files: list[Path]
    study_uid: str
    series_uid: str
    study_date: str
    side: str


def write_exam(source: list[Path], out: Path, *, patient_id: str, name: str, study_date: str,
               issuer: str = "HOSPITAL_A", tag: str = "") -> Exam:
    """Copy ``source`` (one phantom series) to ``out`` as an exam of ``patient_id``."""
    out.mkdir(parents=True, exist_ok=True)
    key = (patient_id, issuer, study_date, tag, str(source[0].parent))
    study, series = _uid(*key, "study"), _uid(*key, "series")
    files, side = [], ""
    for i, path in enumerate(sorted(source)):
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.IssuerOfPatientID = issuer
        ds.PatientName = name
        for attr in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate"):
            if attr in ds:
                setattr(ds, attr, study_date)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        sop = _uid(*key, "sop", str(i))
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        side = "left" if str(ds.get("Laterality", "")) == "L" else "right"
        target = out / f"{i:04d}.dcm"
        ds.save_as(target)
        files.append(target)
    return Exam(files, str(study), str(series), study_date, side)
