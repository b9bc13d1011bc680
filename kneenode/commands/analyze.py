"""``kneenode analyze INPUT``: the node's own chain in-process, no network, no queue.

INPUT is a DICOM series folder, or a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage
(.mha, .mhd) file. The output folder is laid out like a node job folder: one folder per stage
(``prepare/``, ``segment/labels.nii.gz``, ``quantify/``, ``shape/``, ``encode/<kind>/*.dcm``,
``verify/``) and ``results.json`` + ``results.csv`` written by the same stage functions
(:mod:`workers.analysis`) through the same schema (:mod:`pipeline.results`), with the
settings a node job for the series would get: its route's profile (or ``--profile``), then
``--set``, as the job's configuration snapshot (``config.json``, :mod:`workers.jobconfig`).
The input is first judged by the node's routes (an ``ignore`` route refuses it) and, a DICOM
folder, by its selection rules (``--force`` overrides both, and results.json records it);
non-image objects and blank volumes are refused whatever ``--force`` says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kneenode.cli_app import app, err_console, fail, settings_for
from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic
from kneenode.profiles import split_sets
from kneenode.settings import Settings

if TYPE_CHECKING:
    from scp.routing import RouteMatch

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_SKIP_NAMES = {"DICOMDIR"}
SERIES_VIEW = "series"  # the input's instances as a spool-like folder (*.dcm + summary.json)
#: Stages of a node job that an offline analysis leaves out (no PACS, no patient history).
NODE_ONLY = ("deliver", "history")


def dicom_files(folder: Path) -> list[Path]:
    """The files of a DICOM folder, recursively (hidden files, DICOMDIR and JSON skipped)."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")
                  and f.name not in _SKIP_NAMES and not f.name.lower().endswith(".json"))


def series_view(input_path: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """Link the input's files into ``out/series/<n>.dcm`` and summarise it like the edge does.

    The node's stages and selection rules read a spool version folder (``*.dcm`` and
    ``summary.json``); this gives them one for any DICOM folder (file names without ``.dcm``,
    sub-folders).
    """
    from scp.summary import summarize_series

    files = dicom_files(input_path)
    if not files:
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"{input_path} holds no files")
    view = out / SERIES_VIEW
    if view.exists():
        for old in view.iterdir():
            old.unlink()
    view.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        (view / f"{i:06d}.dcm").symlink_to(f.resolve())
    summary = summarize_series(view)
    write_json_atomic(view / "summary.json", summary)
    return view, summary


def check_selection(summary: dict[str, Any], view: Path | None, settings: Settings,
                    match: RouteMatch, *, force: bool) -> dict[str, Any] | None:
    """The node's route and selection rules on the input; the refusal, when ``force``
    overrides it.

    As at job creation: a route whose action is ``ignore`` refuses the series (NOT_SELECTED,
    naming the route), else the selection rules with the route's overrides judge it. An image
    file (``view`` None) has no header for the selection rules: only its route judges it.

    Non-image objects are refused first (NOT_AN_IMAGE, never overridden): the modality rule would
    only say "modality SR", not what the object is.
    """
    from pipeline.series.kinds import refuse_non_images
    from workers.selection import Decision, rules_for, select

    refuse_non_images(summary.get("sop_class_uids") or [])
    if match.target.action == "ignore":
        decision = Decision(False, ErrorCode.NOT_SELECTED,
                            f"route '{match.name}' ignores this series ({match.reason})")
    elif view is None:
        decision = Decision(True)
    else:
        decision = select(summary, rules_for(settings.jobs.selection, match.target), view)
    if decision.selected:
        return None
    code = decision.code or ErrorCode.NOT_SELECTED
    if not force:
        raise NodeError(code, decision.reason,
                        hint="The node would ignore this series; `--force` analyses it anyway "
                        "(and records that in results.json).")
    return {"forced": True, "code": str(code), "reason": decision.reason}


def check_input(input_path: Path) -> str:
    """``dicom`` for a folder, ``file`` for an image file; FILE_NOT_FOUND / INVALID_FORMAT else."""
    if not input_path.exists():
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"input not found: {input_path}")
    if input_path.is_dir():
        return "dicom"
    if not input_path.name.lower().endswith(_IMAGE_SUFFIXES):
        raise NodeError(ErrorCode.INVALID_FORMAT, f"{input_path.name}: expected a DICOM folder or "
                        f"one of {', '.join(_IMAGE_SUFFIXES)}")
    return "file"


def job_like(settings: Settings, match: RouteMatch, *, profile: str | None,
             sets: dict[str, Any], encode: bool, out: Path) -> tuple[Settings, list[Any]]:
    """The effective settings and the stages a node job for this series would run.

    The same path as the node's job creation: route (``match``) -> profile (``profile`` wins)
    -> ``--set`` -> the job's configuration snapshot (written to ``out/config.json``) -> its
    chain, without ``deliver`` and ``history`` (an offline analysis is not a node exam), and
    without encode/verify unless ``encode``.

    Raises
    ------
    NodeError
        CONFIG_ERROR for an unknown profile, an invalid ``--set`` or a bad ``jobs.chain``.
    """
    from workers.jobconfig import build_config, job_chain, job_settings
    from workers.stages import load_stages

    stages = load_stages(settings)
    config = build_config(settings, stages, match, profile=profile, sets=sets)
    write_json_atomic(out / "config.json", config.model_dump(mode="json"))
    chain = [s for s in job_chain({s.name: s for s in stages}, config, stages)
             if s.name not in NODE_ONLY and (encode or s.name not in ("encode", "verify"))]
    return job_settings(settings, config), chain


def open_input(input_path: Path, out: Path, *, encode: bool
               ) -> tuple[Path, dict[str, Any], Path | None]:
    """(series path, summary, spool-like view) for the stages: a view of a DICOM folder and its
    summary, or the image file itself, no summary and no view; ``out`` cleared of a previous
    record."""
    kind = check_input(input_path)
    if encode and kind != "dicom":
        raise NodeError(ErrorCode.INVALID_FORMAT, f"--encode needs a DICOM series: result "
                        f"objects are written into the source's study, and {input_path.name} "
                        "is an image file", hint="Run without --encode, or give the DICOM folder.")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.csv", "config.json"):  # fresh, never a stale merge
        (out / name).unlink(missing_ok=True)
    if kind != "dicom":
        return input_path, {}, None
    view, summary = series_view(input_path, out)
    return view, summary, view


def run_chain(stages: list[Any], *, out: Path, series_path: Path, summary: dict[str, Any],
              settings: Settings, on_stage: Callable[[str], None] | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, float]:
    """Run ``stages`` in-process on ``out`` (a job-like folder); seconds per stage."""
    from workers.stages import StageContext, fresh_work_dir

    seconds: dict[str, float] = {}
    for stage in stages:
        if on_stage is not None:
            on_stage(stage.name)
        t0 = time.perf_counter()
        ctx = StageContext(
            job_id="analyze", job_dir=out, series_path=series_path,
            work_dir=fresh_work_dir(out, stage.name), summary=summary, settings=settings,
            device=settings.segment.device if stage.queue == "gpu" else "cpu",
            progress=_stage_progress(progress, stage.name),
        )
        stage.fn(ctx)
        seconds[stage.name] = round(time.perf_counter() - t0, 3)
    return seconds


def _stage_progress(progress: Callable[[str, int, int], None] | None, name: str
                    ) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


@app.command("analyze")
def analyze(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Argument(
        metavar="INPUT", help="DICOM series folder, NIfTI, NRRD or MetaImage file.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="DIR", help="Output folder (default: ./<INPUT name>.kneenode).")
    ] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", metavar="NAME", help="Processing profile (profiles.NAME of the config; "
        "default: the one the node's routes give this series).")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override one setting, KEY=VALUE (e.g. --set nsm.enabled=false); repeatable.")
    ] = None,
    encode: Annotated[bool, typer.Option(
        "--encode", help="Also write the result DICOM objects (SEG, SR, overlay, PDF) and verify "
        "them (DICOM input only).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Analyse a series the node's routes or selection rules refuse "
        "(recorded).")] = False,
    model_dir: Annotated[Path | None, typer.Option(
        help="Shortcut for --set segment.model_dir=DIR.")] = None,
    device: Annotated[str | None, typer.Option(
        help="Shortcut for --set segment.device=D (cpu, cuda, cuda:N or auto).")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Shortcut for --set segment.tta=true|false.")] = None,
) -> None:
    """Analyse one knee MRI offline with the node's stages: prepare, segment, quantify, shape
    (when configured) and, with --encode, the result DICOM objects; writes results.json/.csv."""
    from pipeline.results import update_results
    from scp.routing import match_series

    node_sets, profile_sets = _overrides(sets or [], model_dir=model_dir, device=device, tta=tta)
    node_settings = settings_for(ctx, overrides=node_sets)
    out = out if out is not None else Path.cwd() / f"{input_path.name.split('.')[0]}.kneenode"
    t0 = time.perf_counter()
    try:
        series_path, summary, view = open_input(input_path, out, encode=encode)
        match = match_series(node_settings, summary)
        forced = check_selection(summary, view, node_settings, match, force=force)
        try:
            settings, stages = job_like(node_settings, match, profile=profile, sets=profile_sets,
                                        encode=encode, out=out)
        except NodeError as exc:  # an unknown profile or a bad --set: a usage error
            if exc.code is not ErrorCode.CONFIG_ERROR:
                raise
            raise fail(f"{exc.code}: {exc.message}\nhint: {exc.hint}", 2) from None
        if forced is not None:
            err_console.print(f"[bold yellow]forced:[/] {forced['code']}: {forced['reason']}",
                              highlight=False)
        seconds = _run_with_progress(stages, out=out, series_path=series_path, summary=summary,
                                     settings=settings)
        results = update_results(out, {"selection": forced,
                                       "seconds": {f"stage_{k}": v for k, v in seconds.items()}})
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}\nhint: {exc.hint}") from None
    model = results.get("model") or {}
    if model.get("is_demo"):
        err_console.print(f"[bold yellow]note:[/] {model['algorithm_name']}", highlight=False)
    encoded = ""
    if encode:
        manifest = json.loads((out / "verify" / "manifest.json").read_text(encoding="utf-8"))
        encoded = ", " + ", ".join(f"{len(v)} {k}" for k, v in manifest["files"].items())
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.csv'} and "
               f"{out / 'segment' / 'labels.nii.gz'}{encoded} "
               f"({time.perf_counter() - t0:.1f} s, model {model.get('algorithm_version')})")


def _overrides(sets: list[str], **shortcuts: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` items and the ``segment`` shortcut options as (node-wide, profile-shaped)
    overrides (:func:`kneenode.profiles.split_sets`); exit 2 when an item is malformed."""
    try:
        node, profile = split_sets(sets)
    except ValueError as exc:
        raise fail(f"{ErrorCode.CONFIG_ERROR}: {exc}", 2) from None
    for key, value in shortcuts.items():
        if value is not None:
            profile.setdefault("segment", {})[key] = str(value) if key == "model_dir" else value
    return node, profile


def _run_with_progress(stages: list[Any], **kwargs: Any) -> dict[str, float]:
    """:func:`run_chain` with one rich progress bar per stage (tiles for segmentation)."""
    columns = (TextColumn("{task.description:<9}"), BarColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        tasks: dict[str, TaskID] = {s.name: bar.add_task(s.name, total=None, detail="", start=False)
                                    for s in stages}
        current: list[str] = []

        def on_stage(name: str) -> None:
            if current:
                bar.update(tasks[current[-1]], total=1, completed=1, detail="done")
            current.append(name)
            bar.start_task(tasks[name])

        def on_progress(name: str, done: int, total: int) -> None:
            bar.update(tasks[name], completed=done, total=total, detail=f"{done}/{total} tiles")

        seconds = run_chain(stages, on_stage=on_stage, progress=on_progress, **kwargs)
        if current:
            bar.update(tasks[current[-1]], total=1, completed=1, detail="done")
    return seconds
