"""Synthetic knee MRI phantoms with analytic ground truth (see docs/phantom.md).

Public API::

    from pipeline.phantom import make_phantom, write_phantom
    ph = make_phantom(seed=1, preset="small", side="left", orientation="coronal", qdess=True)
    paths = write_phantom(ph, "out/")   # out/dicom/*.dcm, out/truth/labels.nii.gz, truth.json
"""

from pipeline.phantom.build import PRESETS, Phantom, Preset, make_phantom
from pipeline.phantom.contrast import DEFAULT_T2_MS, ImagingParams, QdessParams
from pipeline.phantom.geometry import DEFAULT_THICKNESS_MM, REGION_CODES
from pipeline.phantom.output import PhantomPaths, grid_image, write_phantom
from pipeline.phantom.pose import ORIENTATIONS, SIDES, ImageGrid, KneePose

__all__ = [
    "DEFAULT_T2_MS",
    "DEFAULT_THICKNESS_MM",
    "ORIENTATIONS",
    "PRESETS",
    "REGION_CODES",
    "SIDES",
    "ImageGrid",
    "ImagingParams",
    "KneePose",
    "Phantom",
    "PhantomPaths",
    "Preset",
    "QdessParams",
    "grid_image",
    "make_phantom",
    "write_phantom",
]
