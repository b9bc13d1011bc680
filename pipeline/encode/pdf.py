"""Encapsulated PDF report: study header, measurements, thickness map, key slices, disclaimer.

highdicom has no class for the Encapsulated PDF IOD, so the dataset is built with pydicom here
(Patient, General Study, Encapsulated Document Series, General Equipment, SC Equipment,
Encapsulated Document and SOP Common modules). The report is drawn with matplotlib's object API
(``Figure`` + ``PdfPages``, no pyplot: no global backend switch in a worker process), with the
PDF core font Helvetica (not embedded: embedding a subset of DejaVu costs ~1 s per report),
so the text stays searchable and extractable.
"""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian

from kneenode.settings import EncodeSettings
from pipeline.encode.common import (
    DEMO_BANNER,
    NOT_FOR_DIAGNOSIS,
    SUBREGIONS,
    TISSUES,
    AlgorithmInfo,
    check_label_map,
    content_datetime,
    copy_patient_study,
    encode_error,
    finite_float,
    knee_side,
    load_source,
    new_uid,
    series_description,
    series_number,
    slice_label_counts,
)
from pipeline.encode.frames import instance_references
from pipeline.encode.overlay import colorize, source_volume, window_to_uint8
from pipeline.encode.sr import BSCORE_KEYS

DISCLAIMER = (
    "NOT FOR DIAGNOSTIC USE. Automated research measurements of knee bone and cartilage computed "
    "by software that is not a medical device. Results must not be used for diagnosis or "
    "treatment decisions. Review the segmentation before interpreting any value."
)
_A4 = (8.27, 11.69)
_FEMORAL = (4, *SUBREGIONS)


def key_slices(labels: np.ndarray, count: int) -> list[int]:
    """Slices with the most femoral cartilage in ``count`` equal parts of its extent."""
    counts = slice_label_counts(labels)
    area = counts[:, list(_FEMORAL)].sum(axis=1)
    if not area.any():
        area = counts[:, 1:].sum(axis=1)
    if not area.any():
        return [labels.shape[0] // 2]
    present = np.flatnonzero(area)
    chosen = []
    for part in np.array_split(present, min(count, present.size)):
        chosen.append(int(part[np.argmax(area[part])]))
    return sorted(set(chosen))


def measurement_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """Table rows: structure, volume, thickness mean / median / std, T2 mean."""

    def fmt(key: str, digits: int) -> str:
        value = finite_float(results, key)
        return "" if value is None else f"{value:.{digits}f}"

    rows = []
    for key, text in (*TISSUES.values(), *SUBREGIONS.values()):
        row = [
            text,
            fmt(f"{key}_ml", 2),
            fmt(f"{key}_mm_mean", 2),
            fmt(f"{key}_mm_median", 2),
            fmt(f"{key}_mm_std", 2),
            fmt(f"{key}_t2_ms_mean", 1),
        ]
        if any(row[1:]):
            rows.append(row)
    return rows


def _header_lines(first: Dataset, results: Mapping[str, Any], info: AlgorithmInfo) -> list[str]:
    side = knee_side(results)
    bscore = next(
        (finite_float(results, k) for k in BSCORE_KEYS if finite_float(results, k) is not None),
        None,
    )
    return [
        (
            f"Patient: {first.get('PatientName', '')}    ID: {first.get('PatientID', '')}    "
            f"Born: {first.get('PatientBirthDate', '')}    Sex: {first.get('PatientSex', '')}"
        ),
        (
            f"Study date: {first.get('StudyDate', '')}    Accession: {first.get('AccessionNumber', '')}    "
            f"Study: {first.get('StudyDescription', '')}"
        ),
        (
            f"Series: {first.get('SeriesNumber', '')} {first.get('SeriesDescription', '')}    "
            f"Knee side: {side or 'unknown'}"
        ),
        f"Model: {info.name}  version {info.version}  ({info.family})"
        + ("  PHANTOM DEMO MODEL" if info.is_demo else ""),
        f"BScore (femur shape): {bscore:.2f}" if bscore is not None else "BScore: not computed",
    ]


def _page_one(first: Dataset, results: Mapping[str, Any], info: AlgorithmInfo) -> Figure:
    fig = Figure(figsize=_A4)
    fig.text(0.06, 0.95, "Knee MRI quantitative report", fontsize=16, weight="bold")
    banner = NOT_FOR_DIAGNOSIS + (f" - {DEMO_BANNER}" if info.is_demo else "")
    fig.text(
        0.06,
        0.925,
        banner,
        fontsize=12,
        color="white",
        weight="bold",
        bbox={"facecolor": "#a00000", "edgecolor": "none", "pad": 4},
    )
    for i, line in enumerate(_header_lines(first, results, info)):
        fig.text(0.06, 0.885 - i * 0.022, line, fontsize=9)
    rows = measurement_rows(results)
    ax = fig.add_axes((0.06, 0.18, 0.88, 0.56))
    ax.axis("off")
    if rows:
        cols = [
            "Structure",
            "Volume (ml)",
            "Thickness mean (mm)",
            "median (mm)",
            "std (mm)",
            "T2 mean (ms)",
        ]
        table = ax.table(
            cellText=rows,
            colLabels=cols,
            loc="upper center",
            cellLoc="center",
            colWidths=[0.34, 0.12, 0.16, 0.12, 0.12, 0.14],
        )
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.3)
    else:
        ax.text(0.5, 0.9, "No measurements available", ha="center")
    fig.text(0.06, 0.04, textwrap.fill(DISCLAIMER, 110), fontsize=8)
    return fig


def _page_two(
    rgb_slices: list[tuple[int, np.ndarray]], thickness_map: np.ndarray | None, info: AlgorithmInfo
) -> Figure:
    fig = Figure(figsize=_A4)
    fig.text(0.06, 0.96, "Key slices with segmentation overlay", fontsize=13, weight="bold")
    fig.text(
        0.06,
        0.94,
        NOT_FOR_DIAGNOSIS + (f" - {DEMO_BANNER}" if info.is_demo else ""),
        fontsize=9,
        color="#a00000",
        weight="bold",
    )
    n = len(rgb_slices)
    top = 0.48 if thickness_map is not None else 0.08
    for i, (index, rgb) in enumerate(rgb_slices):
        ax = fig.add_axes(
            (0.04 + i * 0.92 / n, top, 0.9 / n, 0.42 if thickness_map is not None else 0.8)
        )
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"slice {index + 1}", fontsize=8)
        ax.axis("off")
    if thickness_map is not None:
        ax = fig.add_axes((0.1, 0.06, 0.7, 0.36))
        image = ax.imshow(
            np.ma.masked_invalid(thickness_map), cmap="viridis", interpolation="nearest"
        )
        ax.set_title("Femoral cartilage thickness (mm)", fontsize=9)
        ax.axis("off")
        fig.colorbar(image, ax=ax, fraction=0.04, label="mm")
    fig.text(0.06, 0.02, f"{info.name} {info.version}", fontsize=7, color="grey")
    return fig


def render_report(
    *,
    first: Dataset,
    results: Mapping[str, Any],
    info: AlgorithmInfo,
    rgb_slices: list[tuple[int, np.ndarray]],
    thickness_map: np.ndarray | None,
) -> bytes:
    """The report as PDF bytes (two A4 pages)."""
    buf = io.BytesIO()
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)  # "weight normal not found for Helvetica, using medium"
    try:
        meta = {"Title": "Knee MRI quantitative report", "Creator": "kneenode"}
        with rc_context({"pdf.use14corefonts": True}), PdfPages(buf, metadata=meta) as pdf:
            pdf.savefig(_page_one(first, results, info))
            pdf.savefig(_page_two(rgb_slices, thickness_map, info))
    finally:
        font_log.setLevel(level)
    return buf.getvalue()


def encode_pdf(
    *,
    source: Sequence[Dataset | str | Path],
    labels: np.ndarray,
    results: Mapping[str, Any],
    model: Mapping[str, Any] | AlgorithmInfo,
    thickness_map: np.ndarray | None = None,
    options: EncodeSettings | None = None,
) -> Dataset:
    """Encode the report as an Encapsulated PDF instance in the source's study.

    Parameters
    ----------
    source
        The source series with pixel data (key slices are drawn from it).
    labels
        Canonical label map (slices, rows, columns), aligned to ``source``.
    results
        results.json of the job.
    model
        Model card (``ModelCard.as_dict()``) or :class:`AlgorithmInfo`.
    thickness_map
        Optional 2-D femoral cartilage thickness map in mm (NaN where there is no cartilage).
    options
        The ``encode`` settings (key slice count, numbering, UID root).

    Returns
    -------
    pydicom.dataset.Dataset
        The Encapsulated PDF instance (with file meta).
    """
    opts = options or EncodeSettings()
    info = AlgorithmInfo.from_card(model)
    if not isinstance(results, Mapping):
        raise encode_error(f"results must be a mapping, got {type(results).__name__}")
    if thickness_map is not None and (
        not isinstance(thickness_map, np.ndarray) or thickness_map.ndim != 2
    ):
        raise encode_error("thickness_map must be a 2-D numpy array")
    datasets = load_source(source, pixels=True)
    lab = check_label_map(labels, datasets)
    chosen = key_slices(lab, opts.pdf_key_slices)
    grey = window_to_uint8(source_volume([datasets[i] for i in chosen]))
    rgb = colorize(grey, lab[chosen], alpha=opts.overlay_alpha, outline=opts.overlay_outline)
    document = render_report(
        first=datasets[0],
        results=results,
        info=info,
        rgb_slices=list(zip(chosen, rgb, strict=True)),
        thickness_map=thickness_map,
    )
    return _pdf_dataset(datasets, document, info, opts)


def _pdf_dataset(
    datasets: list[Dataset], document: bytes, info: AlgorithmInfo, opts: EncodeSettings
) -> Dataset:
    first = datasets[0]
    ds = Dataset()
    copy_patient_study(first, ds)
    date, time = content_datetime()
    uid = new_uid(opts.uid_prefix)
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = new_uid(opts.uid_prefix)
    ds.SeriesNumber = series_number(first, "pdf", opts.series_number_base)
    ds.SeriesDescription = series_description(first, "pdf", opts.description_prefix)
    ds.Manufacturer = opts.manufacturer
    ds.SoftwareVersions = f"{info.name} {info.version}"[:64]
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "YES"  # the report shows patient name and ID
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = "Knee MRI quantitative report (" + NOT_FOR_DIAGNOSIS.lower() + ")"
    ds.ConceptNameCodeSequence = []
    ds.SourceInstanceSequence = instance_references(datasets, with_frames=False)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EncapsulatedPDFStorage, UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def pdf_document(ds: Dataset) -> bytes:
    """The PDF bytes of an Encapsulated PDF instance (padding removed)."""
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[: int(length)] if length else data.rstrip(b"\x00")
