"""Encapsulated PDF: valid DICOM (dciodvfy), a readable PDF with the expected text."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom

from pipeline.encode.pdf import encode_pdf, key_slices, pdf_document
from tests.pipeline.encode.conftest import dciodvfy


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    """Text of the PDF as Ghostscript's txtwrite device extracts it (proves it parses)."""
    gs = shutil.which("gs")
    assert gs, "Ghostscript (Debian package ghostscript) is required"
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(
        [
            gs,
            "-q",
            "-dNOPAUSE",
            "-dBATCH",
            "-dSAFER",
            "-sDEVICE=txtwrite",
            "-sOutputFile=-",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())


def test_pdf_valid_and_readable(series, labels, results, card, tmp_path):
    thickness = np.full((30, 40), np.nan)
    thickness[5:25, 5:35] = 2.0
    ds = encode_pdf(
        source=series, labels=labels, results=results, model=card, thickness_map=thickness
    )
    errors, warnings = dciodvfy(ds, tmp_path)
    assert errors == [] and warnings == []
    path = tmp_path / "pdf.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    pdf = pdf_document(back)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert back.StudyInstanceUID == series[0].StudyInstanceUID and back.SeriesNumber == 304
    assert back.Modality == "DOC" and back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    text = _pdf_text(pdf, tmp_path)
    for expected in (
        "NOT FOR DIAGNOSTIC USE",
        "PHANTOM DEMO MODEL",
        "kneenode-phantom-demo",
        "version 0.1.0",
        "Knee side right",
        "Medial tibial cartilage",
        "2.50",
        "BScore (femur shape): 1.23",
        "Femoral cartilage thickness",
        "PH-0001",
        "Key slices",
    ):
        assert expected in text, expected


def test_without_optional_parts(series, labels, card, tmp_path):
    ds = encode_pdf(source=series, labels=labels, results={}, model={**card, "is_demo": False})
    text = _pdf_text(pdf_document(ds), tmp_path)
    assert "No measurements available" in text and "BScore: not computed" in text
    assert "PHANTOM DEMO MODEL" not in text and "Femoral cartilage thickness" not in text


def test_key_slices_follow_the_femoral_cartilage(labels):
    chosen = key_slices(labels, 3)
    fem = np.isin(labels, (4, 11, 12, 13, 14, 15)).any(axis=(1, 2))
    assert 1 <= len(chosen) <= 3 and all(fem[i] for i in chosen)
