"""The node's analysis stages: thin glue from a job folder to the plain pipeline functions.

Each function takes a :class:`~workers.stages.StageContext`, reads what earlier stages left in the
job folder, calls one ``pipeline`` (or ``scp``) function and writes its outputs under
``ctx.work_dir``. ``kneenode analyze`` runs the same functions in-process on a folder laid out like
a job folder. Files, per stage folder:

``prepare/``  ``image.nii`` (the volume to segment), ``echo_<i>.nii`` (multi-echo only),
              ``volume.json`` (source slices in volume order, echo times, acquisition tags)
``segment/``  ``labels.nii.gz``, ``segmentation.json`` (model card, voxel counts, timings,
              softmax summary)
``qc/``       ``qc.json`` (outcome, reasons, per-structure numbers, the ``on_fail`` policy)
``encode/``   ``<kind>/<SOPInstanceUID>.dcm`` for SEG, SR, overlay images and the PDF
``verify/``   ``manifest.json``: the verified result files per kind
``deliver/``  nothing: the per-destination outbox is ``<job>/outbox.json`` (survives retries)
``history/``  ``history.json``: whether the exam was recorded, its pseudonym, side and model

The job's ``results.json`` (and ``results.csv``) live at ``<job>/``; every stage writes its keys
through :func:`pipeline.results.update_results`, which validates them against the schema.
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
from kneenode.settings import EncodeSettings, Settings
from kneenode.warm import WarmCache
from pipeline.results import RESULTS_FILE, update_results
from workers.stages import Stage, StageContext

IMAGE = "image.nii"
VOLUME = "volume.json"
RESULTS = RESULTS_FILE
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
    """Add ``update`` to the job's results.json (validated, atomic) and return the record."""
    return update_results(job_dir, update)


def series_files(series_path: Path) -> list[Path]:
    """The instances of a complete spool version (``*.dcm``; superseded copies excluded)."""
    return sorted(series_path.glob("*.dcm"))


def _r6(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]


def prepare(ctx: StageContext) -> None:
    """Read the series (strict geometry checks) and store the volume for the later stages.

    ``ctx.series_path`` is a spool version folder (``*.dcm``) or, for ``kneenode analyze``, a
    NIfTI/NRRD/MetaImage file. Refuses non-image objects (NOT_AN_IMAGE: SR, SEG, presentation
    states, ...) before reading pixels and blank or constant volumes (BLANK_IMAGE) after.
    """
    from pipeline.series import read_series
    from pipeline.series.kinds import refuse_blank, refuse_non_images, sop_classes_of

    if ctx.series_path.is_file():
        volume = read_series(ctx.series_path, limits=ctx.settings.reader)
    else:
        files = series_files(ctx.series_path)
        if not files:
            raise NodeError(ErrorCode.FILE_NOT_FOUND, f"no *.dcm files in {ctx.series_path}")
        classes = ctx.summary.get("sop_class_uids")
        refuse_non_images(classes if isinstance(classes, list) else sop_classes_of(files))
        view = ctx.work_dir / "input"  # only the instances: the spool folder also holds JSON files
        view.mkdir()
        for f in files:
            (view / f.name).symlink_to(f.resolve())
        volume = read_series(view, limits=ctx.settings.reader)
    refuse_blank(volume.image)
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
    image = volume.image
    merge_results(ctx.job_dir, {
        "study_uid": volume.study_instance_uid, "series_uid": volume.series_instance_uid,
        "input": {"kind": volume.source_format, "modality": volume.modality,
                  "size": list(image.GetSize()), "spacing": _r6(image.GetSpacing()),
                  "origin": _r6(image.GetOrigin()), "direction": _r6(image.GetDirection()),
                  "echo_times_ms": list(volume.echo_times_ms)},
        "warnings": _with_warnings(ctx.job_dir, volume.warnings),
    })


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
                               device=ctx.device, progress=ctx.progress)
    merge_results(ctx.job_dir, {
        "model": record["model"],
        "segmentation": {k: record[k] for k in ("labels", "voxels", "device", "tta")},
        "seconds": {f"segment_{k}": v for k, v in record["seconds"].items()},
    })


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
    quant = read_json(ctx.work_dir / RESULTS_FILE)
    quant["seconds"] = {f"quantify_{k}": v for k, v in quant.get("seconds", {}).items()}
    merge_results(ctx.job_dir, quant)


_SHAPE_MODELS: WarmCache[Any] = WarmCache("nsm")
#: NSM settings that only change the fit, not which models are loaded.
_FIT_KEYS = {"enabled", "iterations", "points", "patience", "seed", "icp_iterations",
             "icp_landmarks", "mean_shape_resolution", "recon_resolution", "implementation",
             "save_meshes"}


def shape(ctx: StageContext) -> None:
    """NSM fit of the femur and BScore (optional; skipped when ``nsm`` is not active)."""
    from pipeline.shape.stage import load_shape_models, shape_stage

    nsm = ctx.settings.nsm
    if not nsm.active():
        return
    on_device = nsm.model_copy(update={"device": ctx.device}) if ctx.device != "cpu" else nsm
    key = on_device.model_dump_json(exclude=_FIT_KEYS)
    # loaded once per worker process and model folder, kept warm between jobs (bounded LRU)
    models = _SHAPE_MODELS.get(key, lambda: load_shape_models(on_device), ctx.device)
    labels = load_labels(ctx)
    results = read_json(ctx.job_dir / RESULTS)
    side = results.get("side") if results.get("side") in ("left", "right") else None
    out = shape_stage(sitk.GetArrayFromImage(labels), labels.GetSpacing(), labels.GetDirection(),
                      labels.GetOrigin(), models=models, settings=nsm, side=side)
    write_json_atomic(ctx.work_dir / "shape.json", out)
    merge_results(ctx.job_dir, {**{k: v for k, v in out.items() if k != "nsm_fits"},
                                "seconds": {"shape": out["nsm_seconds"]}})


def encode(ctx: StageContext) -> None:
    """SEG, SR, overlay series and PDF (as configured) into ``encode/<kind>/``."""
    from pipeline.encode import encode_results, write_results

    volume = read_json(ctx.stage_dir("prepare") / VOLUME)
    if not volume["slices"]:
        raise NodeError(ErrorCode.INVALID_FORMAT, f"result objects need a DICOM source series; "
                        f"this input is {volume['source_format']} (analysed, not encoded)")
    frames = volume.get("frames") or []
    multiframe = any(f is not None for f in frames)
    labels = sitk.GetArrayFromImage(load_labels(ctx)).astype(np.uint8)
    results = read_json(ctx.job_dir / RESULTS)
    record = read_json(ctx.stage_dir("segment") / "segmentation.json")
    thickness_map = _thickness_map(ctx)
    options = encode_options(ctx.settings.encode, results)
    encoded = encode_results(source=volume["slices"], labels=labels, results=results,
                             model=record["model"], options=options,
                             thickness_map=thickness_map, frames=frames if multiframe else None,
                             thickness_points=_thickness_points(ctx))
    write_results(encoded, ctx.work_dir)


def encode_options(options: EncodeSettings, results: dict[str, Any]) -> EncodeSettings:
    """The objects this job's results get: the settings', or only the PDF for a failed QC with
    policy ``pdf_only`` (read by ``encode`` and by ``verify``, so both expect the same set)."""
    qc = results.get("qc") or {}
    if qc.get("outcome") == "fail" and qc.get("policy") == "pdf_only":
        # a failed QC result goes out as the report with its reasons only: no SEG/SR/overlay
        # that a PACS or a viewer could show as if it were valid
        return options.model_copy(update={"seg": False, "sr": False, "overlay": False,
                                          "pdf": True})
    return options


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


def verify(ctx: StageContext) -> None:
    """Every result object the encode settings ask for exists and re-reads (OUTPUT_MISSING if
    not, so ``deliver`` never sends a partial set); writes ``verify/manifest.json``."""
    from pipeline.encode.verify import expected_outputs, verify_outputs

    volume = read_json(ctx.stage_dir("prepare") / VOLUME)
    results = read_json(ctx.job_dir / RESULTS)
    expected = expected_outputs(encode_options(ctx.settings.encode, results), len(volume["slices"]))
    manifest = verify_outputs(ctx.stage_dir("encode"), expected, study_uid=results.get("study_uid"))
    write_json_atomic(ctx.work_dir / "manifest.json", {"expected": expected, "files": manifest})


def result_files(ctx: StageContext) -> list[Path]:
    """The result instances to send, in sending order (SEG before the SR that references it):
    those ``verify`` checked when it ran (its manifest), else everything ``encode`` wrote."""
    order = {"seg": 0, "sr": 1, "overlay": 2, "pdf": 3}
    folder = ctx.stage_dir("encode")
    manifest = ctx.stage_dir("verify") / "manifest.json"
    if manifest.exists():
        listed = read_json(manifest)["files"]
        files = [folder / kind / name for kind, names in listed.items() for name in names]
    else:
        files = list(folder.glob("*/*.dcm"))
    return sorted(files, key=lambda p: (order.get(p.parent.name, 9), p.name))


def deliver(ctx: StageContext) -> None:
    """C-STORE the results to every destination; SEND_FAILED (retried) while any is pending."""
    from scp.delivery import deliver as send_pending
    from scp.delivery import resolve_targets

    targets = resolve_targets(ctx.settings)
    files = result_files(ctx)
    if not targets or not files:
        return
    report = send_pending(ctx.job_dir / "outbox.json", files, targets, ctx.settings.delivery)
    if not report.done:
        detail = "; ".join(f"{dest}: {n} pending ({report.errors.get(dest, '')})"
                           for dest, n in report.pending.items() if n)
        raise NodeError(ErrorCode.SEND_FAILED, detail, retryable=True)


def node_chain(settings: Settings) -> list[Stage]:
    """The node's stages in order (DESIGN.md); ``shape`` runs when the job's
    ``jobs.optional_stages`` lists it and its NSM settings are active; ``verify`` checks
    encode's outputs before ``deliver`` sends any of them; ``history`` records the finished
    exam (:mod:`workers.recording`)."""
    from workers.recording import HISTORY_STAGE, record_history

    del settings  # every stage reads its own settings section
    return [
        Stage("prepare", "cpu", prepare),
        Stage("segment", "gpu", segment),
        Stage("qc", "cpu", qc),
        Stage("quantify", "cpu", quantify),
        Stage("shape", "gpu", shape, optional=True, enabled=lambda s: s.nsm.active()),
        Stage("encode", "cpu", encode),
        Stage("verify", "cpu", verify),
        Stage("deliver", "io", deliver),
        Stage(HISTORY_STAGE, "cpu", record_history),
    ]
