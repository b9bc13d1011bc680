"""Write a phantom to disk: ``OUT/dicom/`` and ``OUT/truth/`` (labels, subregions, T2 map, truth.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian

from kneenode.fsio import write_text_atomic
from pipeline.phantom.build import Phantom
from pipeline.phantom.dicom_writer import write_dicom_series
from pipeline.phantom.enhanced_writer import write_enhanced_series
from pipeline.phantom.pose import ImageGrid


@dataclass(frozen=True)
class PhantomPaths:
    """Where :func:`write_phantom` put things."""

    root: Path
    dicom_dir: Path
    dicom_files: tuple[Path, ...]
    labels: Path
    subregions: Path
    truth_json: Path
    t2_map: Path | None = None  # truth/t2_ms.nii.gz, qDESS phantoms only


def grid_image(array: np.ndarray, grid: ImageGrid) -> sitk.Image:
    """A SimpleITK image of a ``[k, j, i]`` array with the grid's geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(grid.spacing)
    img.SetOrigin(grid.origin)
    img.SetDirection(grid.direction)
    return img


def write_phantom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    enhanced: bool = False,
) -> PhantomPaths:
    """Write the DICOM series, the truth label maps and truth.json under ``out_dir``.

    ``enhanced`` writes one Enhanced MR Image Storage object (every slice and echo a frame)
    instead of one MR Image Storage instance per slice and echo.
    """
    root = Path(out_dir)
    dicom_dir, truth_dir = root / "dicom", root / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    writer = write_enhanced_series if enhanced else write_dicom_series
    files = writer(phantom, dicom_dir, transfer_syntax=transfer_syntax)
    labels = truth_dir / "labels.nii.gz"
    subregions = truth_dir / "subregions.nii.gz"
    sitk.WriteImage(grid_image(phantom.labels, phantom.grid), str(labels), useCompression=True)
    sitk.WriteImage(grid_image(phantom.subregions, phantom.grid), str(subregions), useCompression=True)
    t2_path = None
    if phantom.qdess:
        t2_path = truth_dir / "t2_ms.nii.gz"
        sitk.WriteImage(grid_image(phantom.t2_map, phantom.grid), str(t2_path), useCompression=True)
    truth = dict(phantom.truth)
    truth["files"] = {
        "dicom_dir": "dicom",
        "labels": "truth/labels.nii.gz",
        "subregions": "truth/subregions.nii.gz",
        "t2_map": "truth/t2_ms.nii.gz" if t2_path else None,
        "instances": len(files),
        "sop_class": "enhanced_mr" if enhanced else "mr",
        "frames": sum(len(echo) for echo in phantom.echoes),
    }
    truth_json = truth_dir / "truth.json"
    write_text_atomic(truth_json, json.dumps(truth, indent=2, sort_keys=False) + "\n")
    return PhantomPaths(root=root, dicom_dir=dicom_dir, dicom_files=tuple(files), labels=labels,
                        subregions=subregions, truth_json=truth_json, t2_map=t2_path)
