"""``kneenode analyze INPUT``: the node's own chain in-process, no network, no queue.

INPUT is a DICOM series folder, or a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage
(.mha, .mhd) file. The output folder is laid out like a node job folder: one folder per stage
(``prepare/``, ``segment/labels.nii.gz``, ``quantify/``, ``shape/``, ``encode/<kind>/*.dcm``,
``verify/``) and ``results.json`` + ``results.csv`` written by the same stage functions
(:mod:`workers.analysis`) through the same schema (:mod:`pipeline.results`). A DICOM folder
is first judged by the node's selection rules (``--force`` overrides them, and results.json
records it); non-image objects and blank volumes are refused whatever ``--force`` says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kneenode.cli_app import app, err_console, fail, settings_for
from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic
from kneenode.settings import Settings

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_SKIP_NAMES = {"DICOMDIR"}
SERIES_VIEW = "series"  # the input's instances as a spool-like folder (*.dcm + summary.json)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["segment.tta=true", ...]`` -> nested overrides for the settings tree.

    Values are TOML literals (``true``, ``3``, ``["shape"]``, ``"text"``), else plain strings;
    keys and values are validated by the settings model itself (unknown keys are errors).
    """
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (e.g. segment.tta=true)")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is given a value and sub-keys")  # noqa: TRY004
        node[parts[-1]] = value
    return out


def _effective_settings(ctx: typer.Context, profile: str | None, sets: dict[str, Any]) -> Settings:
    """The config file's settings with the profile and ``--set`` overrides applied."""
    if profile is not None:
        raise fail(f"{ErrorCode.CONFIG_ERROR}: --profile {profile}: this node has no processing "
                   "profiles yet; use --set KEY=VALUE", 2)
    return settings_for(ctx, overrides=sets)


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


def check_selection(summary: dict[str, Any], view: Path, settings: Settings, *, force: bool
                    ) -> dict[str, Any] | None:
    """The node's selection rules on the input; the refusal, when ``force`` overrides it.

    Non-image objects are refused first (NOT_AN_IMAGE, never overridden): the modality rule would
    only say "modality SR", not what the object is.
    """
    from pipeline.series.kinds import refuse_non_images
    from workers.selection import rules_for, select

    refuse_non_images(summary.get("sop_class_uids") or [])
    # No sender offline: the node-wide rules (None works for both the calling-AE and the
    # route-target form of rules_for).
    decision = select(summary, rules_for(settings.jobs.selection, None), view)  # type: ignore[arg-type]
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


def analyze_chain(settings: Settings, *, encode: bool) -> list[Any]:
    """The node's chain without ``deliver``: optional stages as the settings say (``shape`` only
    with an active NSM: the node runs it as a no-op otherwise), encode and verify when asked."""
    from workers.stages import load_chain

    stages = [s for s in load_chain(settings) if s.name != "deliver"
              and not (s.name == "shape" and not settings.nsm.active())]
    if not encode:
        stages = [s for s in stages if s.name not in ("encode", "verify")]
    return stages


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
        "--profile", metavar="NAME", help="Processing profile to apply (profiles.NAME of the "
        "config).")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override one setting, KEY=VALUE (e.g. --set nsm.enabled=false); repeatable.")
    ] = None,
    encode: Annotated[bool, typer.Option(
        "--encode", help="Also write the result DICOM objects (SEG, SR, overlay, PDF) and verify "
        "them (DICOM input only).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Analyse a series the node's selection rules refuse (recorded).")] = False,
    model_dir: Annotated[Path | None, typer.Option(
        help="Shortcut for --set segment.model_dir=DIR.")] = None,
    device: Annotated[str | None, typer.Option(
        help="Shortcut for --set segment.device=D (cpu, cuda, cuda:N or auto).")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Shortcut for --set segment.tta=true|false.")] = None,
) -> None:
    """Analyse one knee MRI offline with the node's stages: prepare, segment, quantify, shape
    (when configured) and, with --encode, the result DICOM objects; writes results.json/.csv."""
    try:
        overrides = parse_sets(sets or [])
    except ValueError as exc:
        raise fail(f"{ErrorCode.CONFIG_ERROR}: {exc}", 2) from None
    shortcuts = {"model_dir": model_dir, "device": device, "tta": tta}
    for key, value in shortcuts.items():
        if value is not None:
            overrides.setdefault("segment", {})[key] = str(value) if key == "model_dir" else value
    settings = _effective_settings(ctx, profile, overrides)
    out = out if out is not None else Path.cwd() / f"{input_path.name.split('.')[0]}.kneenode"
    t0 = time.perf_counter()
    try:
        kind = check_input(input_path)
        if encode and kind != "dicom":
            raise NodeError(ErrorCode.INVALID_FORMAT, f"--encode needs a DICOM series: result "
                            f"objects are written into the source's study, and {input_path.name} "
                            "is an image file", hint="Run without --encode, or give the DICOM folder.")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "results.csv"):  # a fresh record, never a stale merge
            (out / name).unlink(missing_ok=True)
        if kind == "dicom":
            series_path, summary = series_view(input_path, out)
            forced = check_selection(summary, series_path, settings, force=force)
        else:
            series_path, summary, forced = input_path, {}, None
        if forced is not None:
            err_console.print(f"[bold yellow]forced:[/] {forced['code']}: {forced['reason']}",
                              highlight=False)
        stages = analyze_chain(settings, encode=encode)
        seconds = _run_with_progress(stages, out=out, series_path=series_path, summary=summary,
                                     settings=settings)
        from pipeline.results import update_results

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
