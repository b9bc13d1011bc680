"""Encapsulated PDF report a radiologist reads in ten seconds.

Page one: identification, the QC outcome (coloured banner with its reasons), the measurement
table with the region colours, and continuous cartilage thickness maps (:mod:`report_maps`:
femoral cartilage unrolled, both tibial plateaus from above, patella) with region boundaries,
region means and one fixed colour scale in mm. Page two: the key slices with the overlay.
Every text is wrapped or shortened to the page (:func:`fit_lines`). The key slices and maps are
computed once (:func:`report_figures`) and drawn both into the PDF and, by the same functions,
into PNG files for the web console (:func:`report_images`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian

from kneenode.settings import EncodeSettings
from pipeline.encode.common import (
    COLORS,
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
    qc_banner,
    series_description,
    series_number,
    slice_label_counts,
)
from pipeline.encode.frames import instance_references
from pipeline.encode.overlay import colorize, source_volume, window_to_uint8
from pipeline.encode.pdf_change import change_of, draw_change_page, summary_line
from pipeline.encode.report_maps import MAP_RANGE_MM, ReportMap, map_from_grid, report_maps
from pipeline.encode.sr import BSCORE_KEYS

_FULL_AXES = Bbox.from_bounds(0, 0, 1, 1)  # a table filling its axes
_CMAP = "turbo"  # continuous, high contrast between 1 and 3 mm where cartilage lies
DISCLAIMER = (
    "NOT FOR DIAGNOSTIC USE. Automated research measurements of knee bone and cartilage computed "
    "by software that is not a medical device. Results must not be used for diagnosis or "
    "treatment decisions. Review the segmentation before interpreting any value."
)
_A4 = (8.27, 11.69)
_FEMORAL = (4, *SUBREGIONS)
_MIN_PNG_PIXELS = 256  # a key-slice PNG of a small matrix is enlarged to at least this


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


_PAGE_PT = _A4[0] * 72  # page width in points
_HELVETICA_EM = 0.56  # mean Helvetica glyph width (em) of mixed text, a little generous


def fit_lines(text: str, fontsize: float, width: float, max_lines: int = 2) -> list[str]:
    """``text`` wrapped to ``width`` (figure fraction) at ``fontsize``; at most ``max_lines``,
    the last one shortened with an ellipsis. Long names and descriptions never leave the page."""
    chars = max(8, int(width * _PAGE_PT / (fontsize * _HELVETICA_EM)))
    lines = textwrap.wrap(" ".join(str(text).split()), chars, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: chars - 3].rstrip() + "..."
    return lines


def _bscore(results: Mapping[str, Any]) -> float | None:
    return next((finite_float(results, k) for k in BSCORE_KEYS
                 if finite_float(results, k) is not None), None)


def _identification(first: Dataset, results: Mapping[str, Any], info: AlgorithmInfo
                    ) -> list[tuple[str, str]]:
    side = knee_side(results)
    bscore = _bscore(results)
    rows = [
        ("Patient", f"{first.get('PatientName', '')}"),
        ("ID / born / sex", (f"{first.get('PatientID', '')} / {first.get('PatientBirthDate', '')}"
                            f" / {first.get('PatientSex', '')}")),
        ("Study", (f"{first.get('StudyDate', '')}  {first.get('AccessionNumber', '')}  "
                  f"{first.get('StudyDescription', '')}")),
        ("Series", f"{first.get('SeriesNumber', '')} {first.get('SeriesDescription', '')}"),
        ("Knee side", side or "unknown"),
        ("Model", f"{info.name}  version {info.version}  ({info.family})"
                  + ("  PHANTOM DEMO MODEL" if info.is_demo else "")),
        ("BScore", f"BScore (femur shape): {bscore:.2f}" if bscore is not None
         else "BScore: not computed"),
    ]
    change = change_of(results)
    if change is not None:  # one line: the comparison, or why there is none
        rows.append(("Change", summary_line(change)))
    return rows


def _banner(fig: Figure, y: float, text: str, colour: str, fontsize: float = 11,
            max_lines: int = 1) -> float:
    """A full-width coloured strip with white text; returns the y below it."""
    lines = fit_lines(text, fontsize, 0.86, max_lines)
    height = (len(lines) * fontsize * 1.25 + 6) / (_A4[1] * 72)
    fig.patches.append(Rectangle((0.06, y - height), 0.88, height, transform=fig.transFigure,
                                 facecolor=colour, edgecolor="none"))
    for i, line in enumerate(lines):
        fig.text(0.07, y - (4 + (i + 0.8) * fontsize * 1.25) / (_A4[1] * 72), line,
                 fontsize=fontsize, color="white", weight="bold")
    return y - height - 0.006


def _qc_banner(fig: Figure, y: float, results: Mapping[str, Any]) -> float:
    banner = qc_banner(results.get("qc"))
    if banner is None:
        return _banner(fig, y, "QC: not run - review the segmentation before using any value",
                       "#606060", 9)
    text, rgb = banner
    return _banner(fig, y, text, "#{:02x}{:02x}{:02x}".format(*rgb), 10, max_lines=3)


def _table(fig: Figure, top: float, results: Mapping[str, Any]) -> float:
    """Measurement table with a colour swatch per structure; returns the y below it."""
    rows = measurement_rows(results)
    if not rows:
        fig.text(0.5, top - 0.02, "No measurements available", ha="center", fontsize=10)
        return top - 0.04
    with_t2 = any(r[-1] for r in rows)
    cols = ["", "Structure", "Volume (ml)", "Thickness mean (mm)", "median", "std"]
    widths = [0.03, 0.37, 0.12, 0.18, 0.10, 0.10]
    if with_t2:
        cols.append("T2 mean (ms)")
        widths.append(0.12)
    else:
        rows = [r[:-1] for r in rows]
    scale = sum(widths) / 0.88
    widths = [w / scale for w in widths]
    line = 0.0165
    height = line * (len(rows) + 1)
    ax = fig.add_axes((0.06, top - height, 0.88, height))
    ax.axis("off")
    table = ax.table(cellText=[["", *r] for r in rows], colLabels=cols, loc="upper center",
                     cellLoc="center", colWidths=widths, bbox=_FULL_AXES)
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    names = {text: label for label, (_, text) in (*TISSUES.items(), *SUBREGIONS.items())}
    for i, r in enumerate(rows, start=1):
        colour = COLORS.get(names.get(r[0], 0))
        if colour is not None:
            table[i, 0].set_facecolor((colour[0] / 255, colour[1] / 255, colour[2] / 255))
        table[i, 1].get_text().set_horizontalalignment("left")
        table[i, 1].PAD = 0.02
    for j in range(len(cols)):
        table[0, j].set_facecolor("#e8e8e8")
    return top - height - 0.012


def _draw_map(fig: Figure, box: tuple[float, float, float, float], m: ReportMap,
              results: Mapping[str, Any]) -> Any:
    ax = fig.add_axes(box)
    image = ax.imshow(np.ma.masked_invalid(m.values), origin="lower", extent=m.extent,
                      cmap=_CMAP, vmin=MAP_RANGE_MM[0], vmax=MAP_RANGE_MM[1],
                      interpolation="bilinear", aspect="equal")
    edges = m.boundaries()
    if edges.any():
        ax.imshow(np.ma.masked_where(~edges, edges.astype(float)), origin="lower",
                  extent=m.extent, cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
                  aspect="equal")
    keys = {label: key for label, (key, _) in (*TISSUES.items(), *SUBREGIONS.items())}
    for code, (x, y) in m.means.items():
        mean = finite_float(results, f"{keys.get(code, '')}_mm_mean")
        if mean is None:
            mean = float(np.nanmean(m.values[m.regions == code]))
        ax.text(x, y, f"{mean:.2f}", ha="center", va="center", fontsize=7, weight="bold",
                bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    ax.set_title(m.title, fontsize=8)
    ax.set_xlabel(m.x_label, fontsize=6)
    ax.set_ylabel(m.y_label, fontsize=6)
    ax.tick_params(labelsize=5, length=2)
    return image


def _maps(fig: Figure, top: float, bottom: float, maps: list[ReportMap],
          results: Mapping[str, Any]) -> None:
    """Femoral map on the left (large), tibia and patella stacked on the right, one colour bar."""
    if not maps:
        fig.text(0.06, top - 0.02, "Thickness maps: not available (no thickness or knee frame)",
                 fontsize=8, color="grey")
        return
    fig.text(0.06, top - 0.005, "Cartilage thickness maps (mm; numbers: region means)",
             fontsize=10, weight="bold")
    top -= 0.03
    height = top - bottom
    femoral = [m for m in maps if m.title.startswith("Femoral")]
    others = [m for m in maps if not m.title.startswith("Femoral")]
    image = None
    if femoral:
        image = _draw_map(fig, (0.08, bottom + 0.02, 0.46, height - 0.04), femoral[0], results)
    n = max(1, len(others))
    for i, m in enumerate(others):
        h = (height - 0.02) / n
        image = _draw_map(fig, (0.60, top - (i + 1) * h + 0.02, 0.28, h - 0.04), m, results)
    if image is not None:
        _colour_bar(fig, (0.895, bottom + 0.04, 0.015, height - 0.08), image)


def _colour_bar(fig: Figure, box: tuple[float, float, float, float], image: Any) -> None:
    """The fixed thickness scale beside the maps."""
    bar = fig.colorbar(image, cax=fig.add_axes(box), extend="max")
    bar.set_label("thickness (mm), fixed scale", fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _page_one(first: Dataset, results: Mapping[str, Any], info: AlgorithmInfo,
              maps: list[ReportMap]) -> Figure:
    fig = Figure(figsize=_A4)
    fig.text(0.06, 0.962, "Knee MRI quantitative report", fontsize=15, weight="bold")
    y = _banner(fig, 0.952, NOT_FOR_DIAGNOSIS + (f" - {DEMO_BANNER}" if info.is_demo else ""),
                "#a00000", 10)
    y = _qc_banner(fig, y, results)
    y -= 0.008
    for key, value in _identification(first, results, info):
        lines = fit_lines(value, 8.5, 0.70, 2)
        fig.text(0.06, y, key, fontsize=8.5, weight="bold")
        for line in lines:
            fig.text(0.22, y, line, fontsize=8.5)
            y -= 0.0155
    y = _table(fig, y - 0.006, results)
    _maps(fig, y, 0.075, maps, results)
    for i, line in enumerate(fit_lines(DISCLAIMER, 7, 0.88, 3)):
        fig.text(0.06, 0.05 - i * 0.012, line, fontsize=7)
    return fig


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.0f} %"


def _qc_details(fig: Figure, top: float, qc: Any) -> None:
    """The numbers QC judged, per structure, and every reason (page two)."""
    if not isinstance(qc, Mapping) or not qc.get("structures"):
        return
    fig.text(0.06, top, "Segmentation QC details", fontsize=10, weight="bold")
    cols = ["Structure", "Volume (ml)", "Largest piece", "On its bone", "On border",
            "Confidence", "Uncertain"]
    rows = []
    for name, m in qc["structures"].items():
        rows.append([name, f"{float(m.get('volume_mm3') or 0) / 1000:.2f}",
                     _pct(m.get("main_component_fraction")), _pct(m.get("on_bone_fraction")),
                     _pct(m.get("border_fraction")), _pct(m.get("mean_confidence")),
                     _pct(m.get("uncertain_fraction"))])
    height = 0.0165 * (len(rows) + 1)
    ax = fig.add_axes((0.06, top - 0.01 - height, 0.88, height))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=cols, cellLoc="center", bbox=_FULL_AXES,
                     colWidths=[0.3, 0.12, 0.12, 0.12, 0.11, 0.12, 0.11])
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    y = top - 0.03 - height
    reasons = [f"{r.get('severity', '').upper()}: {r.get('message', '')}"
               for r in qc.get("reasons", []) if isinstance(r, Mapping)]
    for text in (reasons or ["no findings"])[:8]:
        for line in fit_lines(text, 8, 0.88, 1):
            fig.text(0.06, y, line, fontsize=8)
            y -= 0.015


def _draw_slice(fig: Figure, box: tuple[float, float, float, float], index: int,
                rgb: np.ndarray) -> None:
    """One key slice with the overlay, titled with its 1-based slice number."""
    ax = fig.add_axes(box)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(f"slice {index + 1}", fontsize=8)
    ax.axis("off")


def _change_page(results: Mapping[str, Any], info: AlgorithmInfo) -> Figure | None:
    """The change since the prior (tables and trends), when a comparison was made."""
    change = change_of(results)
    if change is None or change.get("status") != "compared":
        return None
    fig = Figure(figsize=_A4)
    fig.text(0.06, 0.962, "Change since the prior exam", fontsize=13, weight="bold")
    y = _banner(fig, 0.952, NOT_FOR_DIAGNOSIS + (f" - {DEMO_BANNER}" if info.is_demo else ""),
                "#a00000", 9)
    y = _qc_banner(fig, y, results)
    draw_change_page(fig, y, change)
    for i, line in enumerate(fit_lines(DISCLAIMER, 7, 0.88, 3)):
        fig.text(0.06, 0.05 - i * 0.012, line, fontsize=7)
    return fig


def _page_two(rgb_slices: list[tuple[int, np.ndarray]], results: Mapping[str, Any],
              info: AlgorithmInfo) -> Figure:
    fig = Figure(figsize=_A4)
    fig.text(0.06, 0.962, "Key slices with segmentation overlay", fontsize=13, weight="bold")
    y = _banner(fig, 0.952, NOT_FOR_DIAGNOSIS + (f" - {DEMO_BANNER}" if info.is_demo else ""),
                "#a00000", 9)
    y = _qc_banner(fig, y, results)
    n = len(rgb_slices)
    cols = min(n, 3) or 1
    rows_n = int(np.ceil(n / cols)) if n else 1
    height = 0.27 / rows_n
    for i, (index, rgb) in enumerate(rgb_slices):
        r, c = divmod(i, cols)
        _draw_slice(fig, (0.04 + c * 0.92 / cols, y - (r + 1) * height,
                          0.9 / cols, height - 0.025), index, rgb)
    y -= 0.29
    legend = [(COLORS[label], text) for label, (_, text) in TISSUES.items()]
    for i, (colour, text) in enumerate(legend):
        x, yy = 0.06 + (i % 3) * 0.3, y - (i // 3) * 0.02
        fig.patches.append(Rectangle((x, yy - 0.002), 0.015, 0.011, transform=fig.transFigure,
                                     facecolor=tuple(v / 255 for v in colour), edgecolor="none"))
        fig.text(x + 0.02, yy, text, fontsize=7.5)
    _qc_details(fig, y - 0.08, results.get("qc"))
    for i, line in enumerate(fit_lines(f"{info.name} {info.version}", 7, 0.88, 2)):
        fig.text(0.06, 0.05 - i * 0.012, line, fontsize=7, color="grey")
    return fig


@dataclass(frozen=True)
class ReportFigures:
    """What the report draws besides text: the key slices (index, RGB overlay) and the maps.

    Computed once per job (:func:`report_figures`) for both the PDF and the PNG images of
    :func:`report_images`, so the web console shows exactly the pictures of the report.
    """

    rgb_slices: list[tuple[int, np.ndarray]]
    maps: list[ReportMap]


@dataclass(frozen=True)
class ReportImage:
    """One picture of the report as a PNG file: ``name`` (file name), ``caption``, ``data``."""

    name: str
    caption: str
    data: bytes


def report_figures(
    datasets: Sequence[Dataset],
    labels: np.ndarray,
    results: Mapping[str, Any],
    options: EncodeSettings,
    thickness_map: np.ndarray | None = None,
    thickness_points: Mapping[str, np.ndarray] | None = None,
) -> ReportFigures:
    """The key slices with the overlay (the slices with the most femoral cartilage in
    ``options.pdf_key_slices`` parts of its extent) and the thickness maps (from
    ``thickness_points`` in the knee frame of ``results["subregion_rule"]``; a legacy 2-D
    ``thickness_map`` when they give none) of one job. ``datasets`` carry pixels."""
    chosen = key_slices(labels, options.pdf_key_slices)
    grey = window_to_uint8(source_volume([datasets[i] for i in chosen]))
    rgb = colorize(grey, labels[chosen], alpha=options.overlay_alpha,
                   outline=options.overlay_outline)
    maps = report_maps(thickness_points, results.get("subregion_rule"))
    if not maps and thickness_map is not None and np.isfinite(thickness_map).any():
        maps = [map_from_grid(thickness_map)]
    return ReportFigures(list(zip(chosen, rgb, strict=True)), maps)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with rc_context({"axes.unicode_minus": False}):
        fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def report_images(figures: ReportFigures, results: Mapping[str, Any]) -> list[ReportImage]:
    """The report's pictures as PNG files: each key slice with the overlay (its pixels as the
    PDF shows them, each source pixel a square block, the longer side at least
    ``_MIN_PNG_PIXELS``) and
    each thickness map drawn by the PDF's own :func:`_draw_map` with the fixed colour bar."""
    from PIL import Image

    out = []
    for index, rgb in figures.rgb_slices:
        buf = io.BytesIO()
        # nearest-neighbour by a whole factor: every source pixel stays one sharp block
        factor = max(1, -(-_MIN_PNG_PIXELS // max(rgb.shape[:2])))
        big = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
        Image.fromarray(np.ascontiguousarray(big), "RGB").save(buf, format="PNG")
        out.append(ReportImage(f"key-slice-{index + 1:04d}.png",
                               f"Key slice {index + 1} with the segmentation overlay",
                               buf.getvalue()))
    for m in figures.maps:
        fig = Figure(figsize=(4.6, 4.0))
        image = _draw_map(fig, (0.12, 0.12, 0.66, 0.78), m, results)
        image.axes.apply_aspect()
        pos = image.axes.get_position()
        _colour_bar(fig, (pos.x1 + 0.03, pos.y0, 0.03, pos.height), image)
        out.append(ReportImage(f"map-{_slug(m.title)}.png",
                               f"{m.title}: cartilage thickness (mm; numbers: region means)",
                               _png(fig)))
    return out


def render_report(
    *,
    first: Dataset,
    results: Mapping[str, Any],
    info: AlgorithmInfo,
    figures: ReportFigures,
) -> bytes:
    """The report as PDF bytes (two A4 pages; three with a change since a prior exam) with the
    key slices and maps of ``figures``."""
    buf = io.BytesIO()
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)  # "weight normal not found for Helvetica, using medium"
    try:
        meta = {"Title": "Knee MRI quantitative report", "Creator": "kneenode"}
        # core fonts lack the minus sign U+2212: plain hyphens on the map axes
        with rc_context({"pdf.use14corefonts": True, "axes.unicode_minus": False}), \
                PdfPages(buf, metadata=meta) as pdf:
            pdf.savefig(_page_one(first, results, info, figures.maps))
            change_page = _change_page(results, info)
            if change_page is not None:
                pdf.savefig(change_page)
            pdf.savefig(_page_two(figures.rgb_slices, results, info))
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
    thickness_points: Mapping[str, np.ndarray] | None = None,
    figures: ReportFigures | None = None,
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
        Optional 2-D femoral cartilage thickness map in mm (NaN where there is no cartilage);
        drawn only when ``thickness_points`` give no maps.
    options
        The ``encode`` settings (key slice count, numbering, UID root).
    thickness_points
        The quantify stage's ``thickness_points.npz`` arrays (per bone: LPS vertices, areas,
        thickness, region): the femoral, tibial and patellar maps of page one.
    figures
        The key slices and maps when the caller computed them already
        (:func:`report_figures`, shared with :func:`report_images`).

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
    if figures is None:
        figures = report_figures(datasets, lab, results, opts, thickness_map, thickness_points)
    document = render_report(first=datasets[0], results=results, info=info, figures=figures)
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
