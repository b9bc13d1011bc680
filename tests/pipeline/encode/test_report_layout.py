"""The PDF report's layout: every word inside the page (pdftotext -bbox), maps and QC banner drawn.

A real phantom (qDESS, so with T2) is quantified by the quantify stage; the report is rendered with
the longest names DICOM allows (64-character descriptions, model name and version), with and
without T2, with and without BScore, and with a failed QC record with many reasons. poppler's
``pdftotext -bbox`` gives each word's box: none may leave the page or its margins.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from kneenode.settings import QcSettings
from pipeline.encode.pdf import encode_pdf, pdf_document
from pipeline.phantom import make_phantom, write_phantom
from pipeline.qc import evaluate_qc
from pipeline.quantify.stage import POINTS_FILE, quantify_to_folder
from pipeline.series import read_series

LONG = "X" * 12 + " very long description of this series " + "Y" * 14  # 64 characters (LO)
CARD = {"algorithm_name": ("kneenode PHANTOM DEMO knee segmentation NOT FOR CLINICAL USE " * 2)[:64],
        "algorithm_version": "phantom-demo-2.0-" + "9" * 47, "is_demo": True}
PAGE = (595.0, 842.0)  # A4 in points, as pdftotext reports it
MARGIN = 18.0


@pytest.fixture(scope="module")
def quantified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    ph = make_phantom(21, "small", side="right", orientation="sagittal", qdess=True)
    paths = write_phantom(ph, root / "phantom")
    volume = read_series(paths.dicom_dir)
    results = quantify_to_folder(sitk.ReadImage(str(paths.labels)), root / "q", volume=volume)
    with np.load(root / "q" / POINTS_FILE) as data:
        points = {k: data[k] for k in data.files}
    source = []
    import pydicom

    for ref in volume.slices[0]:
        ds = pydicom.dcmread(ref.path)
        ds.SeriesDescription, ds.StudyDescription = LONG, LONG
        ds.PatientName = "LONGFAMILYNAME" * 3 + "^GIVEN"
        source.append(ds)
    return {"phantom": ph, "results": results, "points": points, "source": source}


def words(pdf: bytes, tmp_path: Path) -> list[tuple[int, str, float, float, float, float]]:
    """(page, word, xmin, ymin, xmax, ymax) of every word, from poppler's pdftotext -bbox."""
    exe = shutil.which("pdftotext")
    assert exe, "pdftotext (Debian package poppler-utils) is required"
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    html = subprocess.run([exe, "-bbox", str(path), "-"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    out = []
    for page, body in enumerate(html.split("<page ")[1:], start=1):
        for m in re.finditer(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" '
                             r'yMax="([\d.]+)">([^<]*)</word>', body):
            out.append((page, m.group(5), *(float(m.group(i)) for i in range(1, 5))))
    return out


def _variant(results: dict[str, Any], t2: bool, bscore: bool, qc: dict | None) -> dict[str, Any]:
    out = {k: v for k, v in results.items() if t2 or "_t2_ms" not in k}
    if bscore:
        out["bscore"] = -1.234
    if qc is not None:
        out["qc"] = qc
    return out


def _failed_qc(labels: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    broken = labels.copy()
    broken[np.isin(broken, (5, 7))] = 0  # two structures gone: several long reasons
    record = evaluate_qc(broken, spacing, QcSettings())
    return {**record.model_dump(), "policy": "hold", "summary": record.summary()}


@pytest.mark.parametrize(("t2", "bscore", "failed"),
                         [(True, True, False), (False, False, True), (True, False, True),
                          (False, True, False)])
def test_no_text_outside_the_page(quantified, tmp_path, t2, bscore, failed):
    ph = quantified["phantom"]
    spacing = tuple(reversed(ph.grid.spacing))
    qc = _failed_qc(ph.labels, spacing) if failed else {
        **evaluate_qc(ph.labels, spacing, QcSettings()).model_dump(), "policy": "hold"}
    results = _variant(quantified["results"], t2, bscore, qc)
    ds = encode_pdf(source=quantified["source"], labels=ph.labels, results=results, model=CARD,
                    thickness_points=quantified["points"])
    found = words(pdf_document(ds), tmp_path)
    assert {w[0] for w in found} == {1, 2}
    outside = [w for w in found if w[2] < MARGIN or w[3] < MARGIN / 2
               or w[4] > PAGE[0] - MARGIN or w[5] > PAGE[1] - MARGIN / 2]
    assert not outside, outside[:10]
    text = " ".join(w[1] for w in found)
    assert ("T2 mean (ms)" in text) == t2
    assert ("BScore (femur shape): -1.23" in text) == bscore and ("not computed" in text) != bscore
    for title in ("Femoral cartilage (unrolled)", "Tibial cartilage (from above)",
                  "Patellar cartilage (from behind)", "fixed scale"):
        assert title in text
    if failed:
        assert "QC FAILED - DO NOT USE THESE RESULTS" in text
        assert "patellar cartilage missing" in text
    else:
        assert "QC PASSED" in text or "QC WARNING" in text
    # the region means drawn on the maps are the results' own numbers
    assert f"{results['pat_cart_mm_mean']:.2f}" in text


def test_maps_are_continuous_and_use_the_fixed_scale(quantified):
    from pipeline.encode.report_maps import MAP_RANGE_MM, report_maps

    maps = report_maps(quantified["points"], quantified["results"]["subregion_rule"])
    assert [m.title.split()[0] for m in maps] == ["Femoral", "Tibial", "Patellar"]
    for m in maps:
        covered = np.isfinite(m.values)
        # a map, not dots: the covered area is mostly one solid piece per region with few holes
        from scipy import ndimage

        filled = ndimage.binary_fill_holes(covered)
        assert covered.sum() / filled.sum() > 0.97
        assert MAP_RANGE_MM[0] <= np.nanmin(m.values) and np.nanmax(m.values) <= 5.0
        assert set(np.unique(m.regions[covered])) == set(m.means)
    femoral = maps[0]
    assert set(femoral.means) == {11, 12, 13, 14, 15} and femoral.boundaries().any()
    assert set(maps[1].means) == {5, 6}
