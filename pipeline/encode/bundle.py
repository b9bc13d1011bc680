"""The ``encode`` stage in one call: the configured result objects, and writing them to a folder.

The jobs layer calls :func:`encode_results` with what earlier stages left in the job folder and
:func:`write_results` to persist the instances (atomically, one file per SOP instance) for the
``deliver`` stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import fsync_dir, write_atomic, write_bytes_atomic, write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import EncodeSettings
from pipeline.encode.common import AlgorithmInfo, check_label_map, knee_side, load_source
from pipeline.encode.overlay import encode_overlay
from pipeline.encode.pdf import ReportImage, encode_pdf, report_figures, report_images
from pipeline.encode.seg import encode_seg
from pipeline.encode.sr import encode_sr
from pipeline.encode.sr_viewer import add_measurement_sources

log = get_logger(__name__)


@dataclass
class EncodedResults:
    """The result instances of one job (None / empty for objects not configured)."""

    seg: Dataset | None = None
    sr: Dataset | None = None
    overlay: list[Dataset] = field(default_factory=list)
    pdf: Dataset | None = None
    images: list[ReportImage] = field(default_factory=list)  # the report's pictures as PNG

    def instances(self) -> list[tuple[str, Dataset]]:
        """(kind, dataset) of every instance, in sending order (SEG before the SR that cites it)."""
        out: list[tuple[str, Dataset]] = []
        if self.seg is not None:
            out.append(("seg", self.seg))
        if self.sr is not None:
            out.append(("sr", self.sr))
        out.extend(("overlay", d) for d in self.overlay)
        if self.pdf is not None:
            out.append(("pdf", self.pdf))
        return out


def encode_results(
    *,
    source: Sequence[Dataset | str | Path],
    labels: np.ndarray,
    results: Mapping[str, Any],
    model: Mapping[str, Any] | AlgorithmInfo,
    options: EncodeSettings,
    thickness_map: np.ndarray | None = None,
    software_version: str = "kneenode",
    thickness_points: Mapping[str, np.ndarray] | None = None,
    frames: Sequence[int | None] | None = None,
) -> EncodedResults:
    """Encode the objects that ``options`` enables (the SR needs the SEG it references).

    Parameters
    ----------
    source
        The source series (datasets sorted along the slice normal, or paths; pixels are needed
        for the overlay and the PDF).
    labels
        Canonical label map aligned to the source slices.
    results
        results.json of the job.
    model
        Model card (``ModelCard.as_dict()``) or :class:`AlgorithmInfo`.
    options
        The ``encode`` settings.
    thickness_map
        Optional 2-D femoral cartilage thickness map (mm) for the PDF.
    software_version
        Software Versions written into the SEG.
    thickness_points
        The quantify stage's per-vertex thickness (``thickness_points.npz``) for the PDF maps.
    frames
        For a multi-frame (Enhanced MR) source: the frame number of each ``source`` slice (the
        reader's ``volume.json`` ``frames``); every object then references those frames.
    """
    if options.sr and not options.seg:
        raise NodeError(
            ErrorCode.CONFIG_ERROR, "encode.sr needs encode.seg: the SR references SEG segments"
        )
    info = AlgorithmInfo.from_card(model)
    side = knee_side(results)
    datasets = load_source(source, pixels=options.overlay or options.pdf, frames=frames)
    out = EncodedResults()
    if options.seg:
        out.seg = encode_seg(
            source=datasets,
            labels=labels,
            model=info,
            side=side,
            options=options,
            software_version=software_version,
        )
    if options.sr and out.seg is not None:
        out.sr = encode_sr(
            source=datasets,
            seg=out.seg,
            results=results,
            model=info,
            labels=labels,
            options=options,
        )
        # Outlines on key slices so stock OHIF opens the SR (docs/viewer.md, issue 9).
        add_measurement_sources(out.sr, source=datasets, labels=labels, seg=out.seg)
    if options.overlay:
        out.overlay = encode_overlay(
            source=datasets, labels=labels, model=info, side=side, options=options,
            qc=results.get("qc"),
        )
    figures = None
    if options.pdf or options.report_images:  # one drawing of slices and maps for both
        figures = report_figures(datasets, check_label_map(labels, datasets), results, options,
                                 thickness_map, thickness_points)
    if options.pdf:
        out.pdf = encode_pdf(
            source=datasets,
            labels=labels,
            results=results,
            model=info,
            thickness_map=thickness_map,
            options=options,
            thickness_points=thickness_points,
            figures=figures,
        )
    if options.report_images and figures is not None:
        out.images = report_images(figures, results)
    log.info(
        "encoded results",
        series_uid=datasets[0].SeriesInstanceUID,
        seg=out.seg is not None,
        sr=out.sr is not None,
        overlay_images=len(out.overlay),
        pdf=out.pdf is not None,
    )
    return out


def _save(ds: Dataset, path: str) -> None:
    ds.save_as(path, enforce_file_format=True)


IMAGES = "images"  #: folder of the report's PNG pictures in the encode output
IMAGES_INDEX = "images.json"  #: their names and captions, in report order


def write_results(encoded: EncodedResults, out_dir: Path) -> list[Path]:
    """Write every instance as ``<kind>/<SOPInstanceUID>.dcm`` (temp file, fsync, rename) and
    the report's pictures as ``images/<name>.png`` with ``images/images.json`` (name, caption);
    returns the DICOM files."""
    if encoded.images:
        folder = Path(out_dir) / IMAGES
        folder.mkdir(parents=True, exist_ok=True)
        for image in encoded.images:
            write_bytes_atomic(folder / image.name, image.data)
        write_json_atomic(folder / IMAGES_INDEX, [{"name": i.name, "caption": i.caption}
                                                  for i in encoded.images])
    written = []
    for kind, ds in encoded.instances():
        folder = Path(out_dir) / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        write_atomic(path, partial(_save, ds), sync_dir=False)
        written.append(path)
    for folder in {p.parent for p in written}:  # one directory fsync per kind, not per file
        fsync_dir(folder)
    return written
