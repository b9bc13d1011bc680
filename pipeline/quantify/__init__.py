"""Quantification: knee side, femoral subregions, cartilage thickness, volumes, qDESS T2.

Public API::

    from pipeline.quantify import Geometry, quantify, knee_side
    q = quantify(labels, Geometry.from_image(label_image), echoes=(e1, e2), echo_times_ms=(6.4, 34.3),
                 acquisition={"repetition_time_ms": 20.36, "flip_angle_deg": 20, ...})
    q.results        # results.json keys (see pipeline.quantify.results)
    knee_side(labels, direction, spacing, origin)    # "left" | "right"

See docs/quantification.md for the definitions.
"""

from pipeline.quantify.geometry import Geometry, KneeFrame, knee_frame
from pipeline.quantify.maps import ThicknessMap, femoral_thickness_map
from pipeline.quantify.results import THICKNESS_REGIONS
from pipeline.quantify.side import SideUnknown, knee_side
from pipeline.quantify.stage import Quantification, quantify, quantify_to_folder
from pipeline.quantify.subregions import Subregions, femoral_subregions
from pipeline.quantify.t2 import QdessProtocol, protocol_from, t2_map
from pipeline.quantify.thickness import BoneThickness, bone_thickness
from pipeline.quantify.volumes import TISSUE_KEYS, tissue_volumes

__all__ = [
    "THICKNESS_REGIONS",
    "TISSUE_KEYS",
    "BoneThickness",
    "Geometry",
    "KneeFrame",
    "QdessProtocol",
    "Quantification",
    "SideUnknown",
    "Subregions",
    "ThicknessMap",
    "bone_thickness",
    "femoral_subregions",
    "femoral_thickness_map",
    "knee_frame",
    "knee_side",
    "protocol_from",
    "quantify",
    "quantify_to_folder",
    "t2_map",
    "tissue_volumes",
]
