"""Synthetic knee MRI phantoms with analytic ground truth (see docs/phantom.md).

Public API::

    from pipeline.phantom import make_phantom, write_phantom
    ph = make_phantom(seed=1, preset="small", side="left", orientation="coronal", qdess=True)
    paths = write_phantom(ph, "out/")   # out/dicom/*.dcm, out/truth/labels.nii.gz, truth.json
    fu = make_phantom(seed=1, ..., followup=Followup({"med_wb_fem_cart": 0.3}, interval_days=365))
    pair = write_followup_pair("out/", seed=1)   # out/baseline, out/followup (0.3 mm medial loss)
"""

from pipeline.phantom.build import PRESETS, Phantom, Preset, make_phantom
from pipeline.phantom.contrast import DEFAULT_T2_MS, ImagingParams, QdessParams
from pipeline.phantom.followup import BASELINE_DATE, LOSS_GROUPS, Followup, parse_loss
from pipeline.phantom.geometry import DEFAULT_THICKNESS_MM, REGION_CODES
from pipeline.phantom.output import PhantomPaths, grid_image, write_phantom
from pipeline.phantom.pair import PhantomPair, followup_of, read_truth, write_followup_pair
from pipeline.phantom.pose import ORIENTATIONS, SIDES, ImageGrid, KneePose

__all__ = [
    "BASELINE_DATE",
    "DEFAULT_T2_MS",
    "DEFAULT_THICKNESS_MM",
    "LOSS_GROUPS",
    "ORIENTATIONS",
    "PRESETS",
    "REGION_CODES",
    "SIDES",
    "Followup",
    "ImageGrid",
    "ImagingParams",
    "KneePose",
    "Phantom",
    "PhantomPair",
    "PhantomPaths",
    "Preset",
    "QdessParams",
    "followup_of",
    "grid_image",
    "make_phantom",
    "parse_loss",
    "read_truth",
    "write_followup_pair",
    "write_phantom",
]
