"""The node's analysis stages: thin glue from a job folder to the plain pipeline functions.

Each function takes a :class:`~workers.stages.StageContext`, reads what earlier stages left in the
job folder, calls one ``pipeline`` (or ``scp``) function and writes its outputs under
``ctx.work_dir``. Files, per stage folder:

``prepare/``  ``image.nii`` (the volume to segment), ``echo_<i>.nii`` (multi-echo only),
              ``volume.json`` (source slices in volume order, echo times, acquisition tags)
``segment/``  ``labels.nii.gz``, ``segmentation.json`` (model card, voxel counts, timings,
              softmax summary)
``qc/``       ``qc.json`` (outcome, reasons, per-structure numbers, the ``on_fail`` policy)
``encode/``   ``<kind>/<SOPInstanceUID>.dcm`` for SEG, SR, overlay images and the PDF
``deliver/``  nothing: the per-destination outbox is ``<job>/outbox.json`` (survives retries)

The merged ``results.json`` of the job lives at ``<job>/results.json``; every stage that adds
measurements rewrites it atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import SimpleITK as sitk

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_atomic, write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import Settings
from workers.stages import Stage, StageContext

IMAGE = "image.nii"
VOLUME = "volume.json"
RESULTS = "results.json"
QC_FILE = "qc.json"

log = get_logger(__name__)


def _write_image(image: sitk.Image, path: Path) -> None:
    write_atomic(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=False),
                 suffix=".nii")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the job folder; FILE_NOT_FOUND names it when missing."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"{path.name} of an earlier stage is missing "
                        f"({path.parent.name})") from exc


def merge_results(job_dir: Path, update: dict[str, Any]) -> dict[str, Any]:
    """Add ``update`` to the job's results.json (atomic) and return the merged results."""
    path = job_dir / RESULTS
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    results.update(update)
    write_json_atomic(path, results)
    return results


def series_files(series_path: Path) -> list[Path]:
    """The instances of a complete spool version (``*.dcm``; superseded copies excluded)."""
    return sorted(series_path.glob("*.dcm"))


def prepare(ctx: StageContext) -> None:
    """Read the series (strict geometry checks) and store the volume for the later stages."""
    from pipeline.series import read_series

    files = series_files(ctx.series_path)
    if not files:
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"no *.dcm files in {ctx.series_path}")
    view = ctx.work_dir / "input"  # only the instances: the spool folder also holds JSON files
    view.mkdir()
    for f in files:
        (view / f.name).symlink_to(f.resolve())
    volume = read_series(view, limits=ctx.settings.reader)
    _write_image(volume.image, ctx.work_dir / IMAGE)
    if volume.is_multi_echo:
        for i, echo in enumerate(volume.echoes):
            _write_image(echo, ctx.work_dir / f"echo_{i}.nii")
    info = {
        "source_format": volume.source_format,
        "modality": volume.modality,
        "echo_times_ms": list(volume.echo_times_ms),
        "acquisition": volume.acquisition,
        "slices": [str(Path(ref.path).resolve()) for ref in volume.slices[0]] if volume.slices else [],
        "frames": [ref.frame for ref in volume.slices[0]] if volume.slices else [],
        "size": list(volume.image.GetSize()),
        "spacing": list(volume.image.GetSpacing()),
        "warnings": list(volume.warnings),
    }
    write_json_atomic(ctx.work_dir / VOLUME, info)
    for warning in volume.warnings:
        log.warning("series read with a warning", job_id=ctx.job_id, warning=warning)
    merge_results(ctx.job_dir, {"study_uid": volume.study_instance_uid,
                                "series_uid": volume.series_instance_uid,
                                "warnings": _with_warnings(ctx.job_dir, volume.warnings)})


def _with_warnings(job_dir: Path, new: tuple[str, ...]) -> list[str]:
    """The job's ``warnings`` in results.json plus ``new`` (once each: a stage may be retried)."""
    path = job_dir / RESULTS
    old = json.loads(path.read_text(encoding="utf-8")).get("warnings", []) if path.exists() else []
    return list(dict.fromkeys([*old, *new]))


def load_image(ctx: StageContext, name: str = IMAGE) -> sitk.Image:
    """An image written by ``prepare``."""
    path = ctx.stage_dir("prepare") / name
    if not path.exists():
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"prepare/{name} is missing")
    return sitk.ReadImage(str(path))


def segment(ctx: StageContext) -> None:
    """nnU-Net segmentation with the configured model (kept warm per worker process)."""
    from pipeline.segment.stage import segment_to_folder

    record = segment_to_folder(load_image(ctx), ctx.work_dir, ctx.settings.segment,
                               device=ctx.device)
    merge_results(ctx.job_dir, {"model": record["model"]})


def qc(ctx: StageContext) -> None:
    """Segmentation QC (:mod:`pipeline.qc`): outcome and reasons into qc.json and results.json.

    What a ``fail`` does (hold for review, PDF only, deliver flagged) is decided from the
    recorded ``policy``: :mod:`workers.review` after this stage, ``encode`` for ``pdf_only``.
    """
    from pipeline.qc import evaluate_qc
    from workers.review import DECISION_FILE

    (ctx.job_dir / DECISION_FILE).unlink(missing_ok=True)  # a new result needs a new decision
    settings = ctx.settings.qc
    if not settings.enabled:
        return
    labels = load_labels(ctx)
    segmentation = read_json(ctx.stage_dir("segment") / "segmentation.json")
    record = evaluate_qc(sitk.GetArrayViewFromImage(labels), tuple(reversed(labels.GetSpacing())),
                         settings, confidence=segmentation.get("confidence"))
    out = {**record.model_dump(), "policy": settings.on_fail, "summary": record.summary()}
    write_json_atomic(ctx.work_dir / QC_FILE, out)
    merge_results(ctx.job_dir, {"qc": out})


def load_labels(ctx: StageContext) -> sitk.Image:
    """The canonical label map written by ``segment``."""
    path = ctx.stage_dir("segment") / "labels.nii.gz"
    if not path.exists():
        raise NodeError(ErrorCode.FILE_NOT_FOUND, "segment/labels.nii.gz is missing")
    return sitk.ReadImage(str(path))


def quantify(ctx: StageContext) -> None:
    """Side, subregions, thickness, volumes (and qDESS T2) from the label map."""
    from pipeline.quantify.stage import RESULTS_FILE, quantify_to_folder

    labels = load_labels(ctx)
    volume = read_json(ctx.stage_dir("prepare") / VOLUME)
    echoes = None
    if len(volume["echo_times_ms"]) >= 2:
        images = tuple(load_image(ctx, f"echo_{i}.nii") for i in range(2))
        if images[0].GetSize() == labels.GetSize():
            echoes = SimpleNamespace(echoes=images, echo_times_ms=tuple(volume["echo_times_ms"]),
                                     acquisition=volume["acquisition"])
    ctx.check_cancelled()
    quantify_to_folder(labels, ctx.work_dir, volume=echoes)
    merge_results(ctx.job_dir, read_json(ctx.work_dir / RESULTS_FILE))


_SHAPE_MODELS: dict[str, Any] = {}


def shape(ctx: StageContext) -> None:
    """NSM fit of the femur and BScore (optional; skipped when ``nsm`` is not active)."""
    from pipeline.shape.stage import load_shape_models, shape_stage

    nsm = ctx.settings.nsm
    if not nsm.active():
        return
    key = nsm.model_dump_json()
    if key not in _SHAPE_MODELS:  # loaded once per worker process, kept warm between jobs
        _SHAPE_MODELS[key] = load_shape_models(nsm.model_copy(update={"device": ctx.device})
                                               if ctx.device != "cpu" else nsm)
    labels = load_labels(ctx)
    results = read_json(ctx.job_dir / RESULTS)
    side = results.get("side") if results.get("side") in ("left", "right") else None
    out = shape_stage(sitk.GetArrayFromImage(labels), labels.GetSpacing(), labels.GetDirection(),
                      labels.GetOrigin(), models=_SHAPE_MODELS[key], settings=nsm, side=side)
    write_json_atomic(ctx.work_dir / "shape.json", out)
    merge_results(ctx.job_dir, {k: v for k, v in out.items() if k != "nsm_fits"})


def encode(ctx: StageContext) -> None:
    """SEG, SR, overlay series and PDF (as configured) into ``encode/<kind>/``."""
    from pipeline.encode import encode_results, write_results

    volume = read_json(ctx.stage_dir("prepare") / VOLUME)
    if not volume["slices"]:
        raise NodeError(ErrorCode.INVALID_FORMAT, "result objects need a DICOM source series "
                        "(NIfTI and NRRD input are analysed, not encoded)")
    frames = volume.get("frames") or []
    multiframe = any(f is not None for f in frames)
    labels = sitk.GetArrayFromImage(load_labels(ctx)).astype(np.uint8)
    results = read_json(ctx.job_dir / RESULTS)
    record = read_json(ctx.stage_dir("segment") / "segmentation.json")
    thickness_map = _thickness_map(ctx)
    options = ctx.settings.encode
    qc = results.get("qc") or {}
    if qc.get("outcome") == "fail" and qc.get("policy") == "pdf_only":
        # a failed QC result goes out as the report with its reasons only: no SEG/SR/overlay
        # that a PACS or a viewer could show as if it were valid
        options = options.model_copy(update={"seg": False, "sr": False, "overlay": False,
                                             "pdf": True})
    encoded = encode_results(source=volume["slices"], labels=labels, results=results,
                             model=record["model"], options=options,
                             thickness_map=thickness_map, frames=frames if multiframe else None,
                             thickness_points=_thickness_points(ctx))
    write_results(encoded, ctx.work_dir)


def _thickness_map(ctx: StageContext) -> np.ndarray | None:
    from pipeline.quantify.stage import MAP_FILE

    path = ctx.stage_dir("quantify") / MAP_FILE
    return np.load(path) if path.exists() else None


def _thickness_points(ctx: StageContext) -> dict[str, np.ndarray] | None:
    from pipeline.quantify.stage import POINTS_FILE

    path = ctx.stage_dir("quantify") / POINTS_FILE
    if not path.exists():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def result_files(ctx: StageContext) -> list[Path]:
    """The encoded instances, in sending order (SEG before the SR that references it)."""
    order = {"seg": 0, "sr": 1, "overlay": 2, "pdf": 3}
    folder = ctx.stage_dir("encode")
    files = [p for p in folder.glob("*/*.dcm")]
    return sorted(files, key=lambda p: (order.get(p.parent.name, 9), p.name))


def deliver(ctx: StageContext) -> None:
    """C-STORE the results to every destination; SEND_FAILED (retried) while any is pending."""
    from scp.delivery import deliver as send_pending
    from scp.delivery import resolve_targets

    targets = resolve_targets(ctx.settings, str(ctx.summary.get("calling_ae", "")))
    files = result_files(ctx)
    if not targets or not files:
        return
    report = send_pending(ctx.job_dir / "outbox.json", files, targets, ctx.settings.delivery)
    if not report.done:
        detail = "; ".join(f"{dest}: {n} pending ({report.errors.get(dest, '')})"
                           for dest, n in report.pending.items() if n)
        raise NodeError(ErrorCode.SEND_FAILED, detail, retryable=True)


def node_chain(settings: Settings) -> list[Stage]:
    """The node's stages in order (DESIGN.md); ``shape`` runs when ``jobs.optional_stages``
    lists it and an NSM model is configured."""
    del settings  # every stage reads its own settings section
    return [
        Stage("prepare", "cpu", prepare),
        Stage("segment", "gpu", segment),
        Stage("qc", "cpu", qc),
        Stage("quantify", "cpu", quantify),
        Stage("shape", "gpu", shape, optional=True),
        Stage("encode", "cpu", encode),
        Stage("deliver", "io", deliver),
    ]
