"""``kneenode analyze INPUT --out DIR``: the analysis pipeline offline, no network, no queue.

INPUT is a DICOM series folder, a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage file.
Writes ``DIR/labels.nii.gz`` (canonical labels, input geometry) and ``DIR/results.json`` (input
geometry, the model's identification, timings); later stages add their sections to results.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kneenode.cli_app import app, err_console, fail, settings_for
from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic

RESULTS_FILE = "results.json"
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def read_input(path: Path) -> tuple[Any, str]:
    """The input as a SimpleITK image and its kind (``dicom`` or the file format)."""
    import SimpleITK as sitk

    if not path.exists():
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"input not found: {path}")
    if path.is_dir():
        return _read_dicom_folder(path), "dicom"
    name = path.name.lower()
    if not name.endswith(_IMAGE_SUFFIXES):
        raise NodeError(
            ErrorCode.INVALID_FORMAT,
            f"{path.name}: expected a DICOM folder or one of {', '.join(_IMAGE_SUFFIXES)}",
        )
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise NodeError(ErrorCode.INVALID_FORMAT, f"cannot read {path.name}: {exc}") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise NodeError(ErrorCode.INVALID_FORMAT, f"{path.name} is not a single-channel 3-D image")
    return sitk.Cast(image, sitk.sitkFloat32), name.split(".", 1)[1]


def _read_dicom_folder(path: Path) -> Any:
    """The project's series reader (geometry from IPP/IOP, qDESS echoes combined by RSS)."""
    from pipeline.series import read_series

    return read_series(path).image


def _geometry(image: Any) -> dict[str, Any]:
    return {
        "size": list(image.GetSize()),
        "spacing": [round(v, 6) for v in image.GetSpacing()],
        "origin": [round(v, 6) for v in image.GetOrigin()],
        "direction": [round(v, 6) for v in image.GetDirection()],
    }


def _merge_results(out: Path, section: str, data: dict[str, Any]) -> dict[str, Any]:
    """Add/replace one section of results.json, keeping what other stages wrote."""
    path = out / RESULTS_FILE
    results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results[section] = data
    write_json_atomic(path, results)
    return results


@app.command("analyze")
def analyze(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="DICOM folder, NIfTI or NRRD.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    model_dir: Annotated[
        Path | None, typer.Option(help="nnU-Net trained-model folder (default: segment.model_dir).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto.")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Mirroring TTA.")] = None,
) -> None:
    """Analyse one knee MRI offline: segmentation now, more results as stages are added."""
    from pipeline.segment.stage import LABELS_FILE, segment_to_folder

    settings = settings_for(ctx)
    update = {k: v for k, v in {"model_dir": model_dir, "device": device, "tta": tta}.items()
              if v is not None}
    seg_settings = settings.segment.model_copy(update=update)
    t0 = time.perf_counter()
    try:
        image, kind = read_input(input_path)
        t_read = time.perf_counter() - t0
        with Progress(TextColumn("segmenting"), BarColumn(), TextColumn("{task.completed}/{task.total} tiles"),
                      TimeElapsedColumn(), console=err_console, transient=True) as bar:
            task = bar.add_task("segment", total=None)
            record = segment_to_folder(
                image, out, seg_settings,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}\nhint: {exc.hint}") from None
    record["seconds"]["read"] = round(t_read, 3)
    _merge_results(out, "input", {"path": str(input_path), "kind": kind, **_geometry(image)})
    _merge_results(out, "segmentation", record)
    _merge_results(out, "model", record["model"])  # where the jobs put it (the encoders read it)
    # -- quantification (pipeline.quantify, issue 5): side, subregions, thickness, volumes, T2 --
    from pipeline.quantify.stage import quantify_input

    try:
        quant = quantify_input(out / LABELS_FILE, input_path, out)
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}\nhint: {exc.hint}") from None
    _merge_results(out, "quantification", quant)
    # -- end quantification --
    model = record["model"]
    if model.get("is_demo"):
        err_console.print(f"[bold yellow]note:[/] {model['algorithm_name']}", highlight=False)
    typer.echo(f"wrote {out / LABELS_FILE} and {out / RESULTS_FILE} "
               f"({time.perf_counter() - t0:.1f} s, model {model['algorithm_version']})")
