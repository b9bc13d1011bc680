"""Analysis commands: ``kneenode phantom`` (synthetic knee MRI with analytic ground truth)."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kneenode.cli_app import app, fail


class PresetName(str, Enum):
    small = "small"
    full = "full"


class SideName(str, Enum):
    left = "left"
    right = "right"


class Compression(str, Enum):
    none = "none"
    rle = "rle"
    jpeg2000 = "jpeg2000"
    jpegls = "jpegls"


#: --compression value -> transfer syntax UID (lossless only: the truth must stay exact).
TRANSFER_SYNTAXES = {
    "none": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
}


class OrientationName(str, Enum):
    sagittal = "sagittal"
    coronal = "coronal"
    axial = "axial"
    oblique = "oblique"


@app.command("phantom")
def phantom(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Output folder (dicom/ and truth/ are created in it).")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same phantom.")] = 0,
    preset: Annotated[PresetName, typer.Option(help="small (64x64x48) or full (384x384x160).")] = (
        PresetName.small
    ),
    side: Annotated[
        SideName | None, typer.Option(help="Knee side (default: drawn from the seed).")
    ] = None,
    orientation: Annotated[
        OrientationName, typer.Option(help="Slice orientation of the series.")
    ] = OrientationName.sagittal,
    qdess: Annotated[bool, typer.Option("--qdess", help="Two echoes with known T2 (qDESS).")] = False,
    compression: Annotated[
        Compression, typer.Option(help="Transfer syntax of the DICOM files (lossless).")
    ] = Compression.none,
    enhanced: Annotated[bool, typer.Option(
        "--enhanced", help="One Enhanced MR object (all slices and echoes as frames).")] = False,
    followup_of: Annotated[Path | None, typer.Option(
        "--followup-of", help="Write a follow-up exam of the phantom in this folder: same patient "
        "and knee, later Study Date, new UIDs, cartilage thinner by --loss.")] = None,
    loss: Annotated[list[str] | None, typer.Option(
        "--loss", help="With --followup-of: REGION=MM thickness loss (repeatable; medial / "
        "lateral = that weight-bearing zone, femoral and tibial), e.g. medial=0.3.")] = None,
    interval_days: Annotated[int, typer.Option(
        help="With --followup-of: days from the baseline's Study Date to the follow-up's.")] = 365,
) -> None:
    """Write a synthetic knee MRI series with exact ground truth (SYNTHETIC: not a patient)."""
    from pipeline.phantom import make_phantom, write_phantom

    if out.exists() and any(out.iterdir()):
        raise fail(f"{out} exists and is not empty")
    t0 = time.perf_counter()
    if followup_of is not None:
        ph, enhanced = _followup(ctx, followup_of, loss or [], interval_days, enhanced)
    else:
        if loss:
            raise fail("--loss needs --followup-of (the baseline phantom's folder)")
        ph = make_phantom(
            seed,
            preset.value,
            side=side.value if side else None,
            orientation=orientation.value,
            qdess=qdess,
        )
    paths = write_phantom(ph, out, transfer_syntax=TRANSFER_SYNTAXES[compression.value],
                          enhanced=enhanced)
    what = "Enhanced MR object" if enhanced else "instances"
    lost = ""
    if ph.followup is not None:
        lost = " follow-up of " + ph.study_date + " loss " + (", ".join(
            f"{r}={mm:g}" for r, mm in ph.followup.losses().items() if mm) or "none") + " mm"
    typer.echo(
        f"phantom seed={ph.seed} preset={ph.preset} side={ph.side} orientation={ph.orientation} "
        f"qdess={ph.qdess}{lost}: {len(paths.dicom_files)} {what} in {paths.dicom_dir}, truth in "
        f"{paths.truth_json.parent} ({time.perf_counter() - t0:.1f} s)"
    )


#: Options that describe the knee: a follow-up takes them from its baseline.
_KNEE_OPTIONS = ("seed", "preset", "side", "orientation", "qdess")


def _followup(ctx: typer.Context, baseline: Path, loss: list[str], interval_days: int,
              enhanced: bool) -> tuple[object, bool]:
    """The follow-up phantom of ``baseline`` and whether to write it as Enhanced MR."""
    from pipeline.phantom import followup_of, parse_loss, read_truth

    sources = {o: ctx.get_parameter_source(o) for o in _KNEE_OPTIONS}
    given = [f"--{o}" for o, src in sources.items() if src is not None and src.name != "DEFAULT"]
    if given:
        raise fail(f"{', '.join(given)}: a follow-up's knee is its baseline's (drop the option)")
    try:
        truth = read_truth(baseline)
        ph = followup_of(truth, loss_mm=parse_loss(loss), interval_days=interval_days)
    except ValueError as exc:
        raise fail(str(exc)) from None
    files = truth.get("files") or {}
    return ph, enhanced or files.get("sop_class") == "enhanced_mr"
