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
) -> None:
    """Write a synthetic knee MRI series with exact ground truth (SYNTHETIC: not a patient)."""
    from pipeline.phantom import make_phantom, write_phantom

    if out.exists() and any(out.iterdir()):
        raise fail(f"{out} exists and is not empty")
    t0 = time.perf_counter()
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
    typer.echo(
        f"phantom seed={seed} preset={preset.value} side={ph.side} orientation={orientation.value} "
        f"qdess={qdess}: {len(paths.dicom_files)} {what} in {paths.dicom_dir}, truth in "
        f"{paths.truth_json.parent} ({time.perf_counter() - t0:.1f} s)"
    )
