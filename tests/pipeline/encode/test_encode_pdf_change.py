"""The PDF's change section: table and trends on their own page, one line on page one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.encode.pdf import encode_pdf, pdf_document
from pipeline.encode.pdf_change import FLAG_COLOUR
from tests.pipeline.encode.conftest import dciodvfy
from tests.pipeline.encode.synthetic import make_change


def _pages(pdf: bytes, tmp_path: Path) -> list[str]:
    """Text of each page as Ghostscript's txtwrite extracts it (whitespace collapsed)."""
    gs, info = shutil.which("gs"), shutil.which("pdfinfo")
    assert gs and info, "Ghostscript and poppler-utils are required"
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    meta = subprocess.run([info, str(path)], capture_output=True, text=True, timeout=60, check=True)
    count = int(next(line.split()[1] for line in meta.stdout.splitlines() if line.startswith("Pages:")))
    pages = []
    for n in range(1, count + 1):
        out = subprocess.run([gs, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sDEVICE=txtwrite",
                              f"-dFirstPage={n}", f"-dLastPage={n}", "-sOutputFile=-", str(path)],
                             capture_output=True, text=True, timeout=120, check=True)
        pages.append(" ".join(out.stdout.split()))
    return pages


def _render(pdf: bytes, tmp_path: Path, page: int) -> np.ndarray:
    exe = shutil.which("pdftoppm")
    assert exe, "pdftoppm (Debian package poppler-utils) is required"
    src = tmp_path / "r.pdf"
    src.write_bytes(pdf)
    subprocess.run([exe, "-r", "60", "-png", "-f", str(page), "-l", str(page), str(src),
                    str(tmp_path / "page")], check=True, timeout=120)
    return np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("RGB"))


def test_change_page_tables_and_trends(series, labels, results, card, tmp_path):
    change = make_change(results, card)
    ds = encode_pdf(source=series, labels=labels, results={**results, "change": change}, model=card)
    errors, warnings = dciodvfy(ds, tmp_path)
    assert errors == [] and warnings == []
    pdf = pdf_document(ds)
    pages = _pages(pdf, tmp_path)
    assert len(pages) == 3 and "Key slices" in pages[2]
    assert "Change prior of 2026-01-01 (400 days earlier): 2 change(s) beyond the SDC, see page 2" \
        in pages[0]
    page = pages[1]
    for expected in ("Change since the prior exam", "NOT FOR DIAGNOSTIC USE",
                     "Current exam 2027-02-05 compared with the prior of 2026-01-01 (400 days",
                     "Medial weight-bearing femoral cartilage 1.90 1.60 -0.30 -14.4 0.20 beyond SDC",
                     "Lateral tibial cartilage 2.10 2.10 +0.00 +0.0 0.20 no",
                     "Medial tibial cartilage 2700 2500 -200 -6.8 5.0 beyond SDC",
                     "Trend per region", "Medial WB femoral (beyond SDC)", "Patellar", "2025-01"):
        assert expected in page, expected
    rgb = _render(pdf, tmp_path, 2)
    shade = tuple(int(FLAG_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    flagged_px = np.all(np.abs(rgb.astype(int) - shade) <= 2, axis=-1).sum()
    assert flagged_px > 500  # the two flagged rows are shaded


def test_one_line_says_why_nothing_was_compared(series, labels, results, card, tmp_path):
    change = {**make_change(results, card), "status": "no_prior", "prior": None, "thickness": [],
              "volume": [], "flagged": [],
              "reason": "no comparison: no earlier exam of this knee measured by this model"}
    ds = encode_pdf(source=series, labels=labels, results={**results, "change": change}, model=card)
    pages = _pages(pdf_document(ds), tmp_path)
    assert len(pages) == 2 and "Change since the prior exam" not in " ".join(pages)
    assert "Change no comparison: no earlier exam of this knee measured by this model" in pages[0]


def test_without_a_change_report_the_pdf_is_unchanged(series, labels, results, card, tmp_path):
    ds = encode_pdf(source=series, labels=labels, results=results, model=card)
    pages = _pages(pdf_document(ds), tmp_path)
    assert len(pages) == 2 and "Change " not in pages[0].replace("Change since", "")
