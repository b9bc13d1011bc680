"""The quantify stage as a pure function: label map + geometry (+ qDESS echoes) -> results.

``quantify`` runs side, femoral subregions, thickness, volumes and (with two echoes) T2 and
returns a :class:`Quantification`: the results dict (``results.json`` keys, see
:mod:`pipeline.quantify.results`) plus the arrays kept for plots and later stages (subregion map,
per-vertex thickness, the 2-D femoral thickness map). ``quantify_to_folder`` writes them.
A missing structure never raises: its keys are null and ``missing`` says why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_atomic, write_json_atomic
from kneenode.logs import get_logger
from pipeline.quantify.geometry import Geometry, KneeFrame, knee_frame, label_boxes
from pipeline.quantify.maps import ThicknessMap, femoral_thickness_map
from pipeline.quantify.results import THICKNESS_REGIONS, assemble, null_t2_keys, thickness_keys
from pipeline.quantify.side import SideUnknown, side_of
from pipeline.quantify.subregions import femoral_subregions
from pipeline.quantify.t2 import protocol_from, t2_statistics
from pipeline.quantify.thickness import BONES, BoneThickness, bone_thickness, region_thickness
from pipeline.quantify.volumes import tissue_volumes

log = get_logger(__name__)
RESULTS_FILE = "quantify.json"
SUBREGIONS_FILE = "subregions.nii.gz"
POINTS_FILE = "thickness_points.npz"
MAP_FILE = "femoral_thickness_map.npy"
_REGION_BONE = {"ant_fem_cart": "femur", "med_wb_fem_cart": "femur", "lat_wb_fem_cart": "femur",
                "med_post_fem_cart": "femur", "lat_post_fem_cart": "femur", "med_tib_cart": "tibia",
                "lat_tib_cart": "tibia", "pat_cart": "patella"}


@dataclass(frozen=True)
class Quantification:
    """Everything the stage produced (arrays in the label map's ``[k, j, i]`` order)."""

    results: dict[str, Any]
    subregions: np.ndarray
    bones: dict[str, BoneThickness]
    thickness_map: ThicknessMap | None
    frame: KneeFrame | None


def _thickness_reasons(labels_present: set[int], sub_reason: str | None) -> dict[str, str]:
    """Why each region would be null (used only for the regions that are)."""
    reasons: dict[str, str] = {}
    for region, code in THICKNESS_REGIONS.items():
        bone = _REGION_BONE[region]
        bone_label, _ = BONES[bone]
        if code >= 11 and sub_reason:
            reasons[region] = f"femoral subregions not available: {sub_reason}"
        elif bone_label not in labels_present:
            reasons[region] = f"no {bone} in the label map"
        elif code not in labels_present:
            reasons[region] = f"no {region} in the label map"
        else:
            reasons[region] = "fewer than 10 bone-surface rays crossed this cartilage once"
    return reasons


def quantify(
    labels: np.ndarray,
    geometry: Geometry,
    *,
    echoes: Sequence[np.ndarray] | None = None,
    echo_times_ms: Sequence[float | None] | None = None,
    acquisition: Mapping[str, Any] | None = None,
) -> Quantification:
    """Quantify one knee.

    Parameters
    ----------
    labels
        Canonical label map (0-9), ``[k, j, i]``.
    geometry
        Its grid (:class:`Geometry`; ``Geometry.from_image(sitk_image)``).
    echoes, echo_times_ms, acquisition
        The two qDESS echoes on the same grid, their echo times and the reader's ``acquisition``
        dict (RepetitionTime, FlipAngle, GE gradient tags); without two echoes T2 keys are null.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise NodeError(ErrorCode.INVALID_FORMAT, f"label map must be 3-D, got shape {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if top > 9 or (labels.size and int(labels.min()) < 0):
        raise NodeError(ErrorCode.INVALID_FORMAT, f"label map values must be canonical 0-9, found {top}")
    labels = labels.astype(np.uint8, copy=False)
    sec: dict[str, float] = {}
    t0 = time.perf_counter()
    boxes = label_boxes(labels, 15)
    present = {v + 1 for v, b in enumerate(boxes) if b is not None}
    try:
        side, side_reason = side_of(labels, geometry, boxes), None
    except SideUnknown as exc:
        side, side_reason = None, str(exc)
    frame = knee_frame(labels, geometry, boxes)
    sec["side"] = time.perf_counter() - t0
    t = time.perf_counter()
    sub = femoral_subregions(labels, geometry, frame, boxes)
    sec["subregions"] = time.perf_counter() - t
    t = time.perf_counter()
    bones: dict[str, BoneThickness] = {}
    for bone in BONES:
        res = bone_thickness(sub.labels, geometry, bone, sub.boxes)
        if res is not None:
            bones[bone] = res
    stats = {r: region_thickness(list(bones.values()), c) for r, c in THICKNESS_REGIONS.items()}
    present_sub = present | {v + 1 for v, b in enumerate(sub.boxes) if b is not None}
    th_keys, missing, counts = thickness_keys(stats, _thickness_reasons(present_sub, sub.reason))
    tmap = femoral_thickness_map(bones.get("femur"), geometry, frame, sub.boundaries.get("centre_lps"))
    sec["thickness"] = time.perf_counter() - t
    t = time.perf_counter()
    volumes = tissue_volumes(labels, geometry, boxes)
    sec["volumes"] = time.perf_counter() - t
    t = time.perf_counter()
    t2_keys, t2_missing, protocol = _t2(labels.shape, echoes, echo_times_ms, acquisition, sub.labels, geometry, sub.boxes)
    sec["t2"] = time.perf_counter() - t
    missing.update(t2_missing)
    extra = {
        "thickness_vertices": counts,
        "subregion_rule": sub.boundaries or {"reason": sub.reason},
        "t2_protocol": protocol,
        "seconds": {k: round(v, 3) for k, v in sec.items()},
    }
    results = assemble(side=side, side_reason=side_reason, volumes=volumes, thickness=th_keys, t2=t2_keys,
                       missing=missing, extra=extra)
    log.info("quantified", side=side, missing=len(results["missing"]), seconds=round(sum(sec.values()), 3))
    return Quantification(results, sub.labels, bones, tmap, frame)


def _t2(shape: tuple[int, ...], echoes: Sequence[np.ndarray] | None, times: Sequence[float | None] | None,
        acquisition: Mapping[str, Any] | None, sub: np.ndarray, geometry: Geometry, boxes: list
        ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any] | None]:
    if echoes is None or len(echoes) < 2:
        nulls, missing = null_t2_keys("not a two-echo qDESS series")
        return dict(nulls), missing, None
    if any(np.shape(e) != shape for e in echoes[:2]):
        raise NodeError(ErrorCode.INVALID_FORMAT, "qDESS echoes and label map differ in shape")
    try:
        protocol = protocol_from(acquisition or {}, list(times or []))
    except ValueError as exc:
        nulls, missing = null_t2_keys(f"qDESS parameters missing: {exc}")
        return dict(nulls), missing, None
    keys, missing = t2_statistics(np.asarray(echoes[0]), np.asarray(echoes[1]), protocol, sub, geometry, boxes)
    return keys, missing, protocol.as_dict()


def quantify_to_folder(labels_image: Any, out_dir: Path, *, volume: Any | None = None) -> dict[str, Any]:
    """Quantify a SimpleITK label image and write the stage outputs to ``out_dir``.

    ``volume`` is the series reader's ``SeriesVolume`` (its echoes, echo times and acquisition
    are used for T2 when it has two echoes on the label map's grid). Writes ``quantify.json``
    (the results), ``subregions.nii.gz``, ``thickness_points.npz`` (per bone: LPS vertices,
    normals, area, thickness, region) and ``femoral_thickness_map.npy`` when there is one.
    """
    import SimpleITK as sitk

    geom = Geometry.from_image(labels_image)
    labels = sitk.GetArrayFromImage(labels_image)
    echoes = times = acq = None
    if volume is not None and len(getattr(volume, "echoes", ())) >= 2:
        echoes = [sitk.GetArrayViewFromImage(e) for e in volume.echoes[:2]]
        times, acq = volume.echo_times_ms, volume.acquisition
    q = quantify(labels, geom, echoes=echoes, echo_times_ms=times, acquisition=acq)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sub_img = sitk.GetImageFromArray(q.subregions)
    sub_img.CopyInformation(labels_image)
    write_atomic(out / SUBREGIONS_FILE, lambda tmp: sitk.WriteImage(sub_img, tmp, useCompression=True),
                 suffix=".nii.gz")
    arrays: dict[str, np.ndarray] = {}
    for name, b in q.bones.items():
        arrays.update({f"{name}_vertices_lps": geom.mm_to_lps(b.vertices).astype(np.float32),
                       f"{name}_normals_lps": geom.vec_to_lps(b.normals).astype(np.float32),
                       f"{name}_area_mm2": b.areas.astype(np.float32),
                       f"{name}_thickness_mm": b.thickness.astype(np.float32), f"{name}_region": b.region})
    write_atomic(out / POINTS_FILE, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")  # type: ignore[arg-type]
    tmap = q.thickness_map
    if tmap is not None:
        write_atomic(out / MAP_FILE, lambda tmp: np.save(tmp, tmap.values), suffix=".npy")
    write_json_atomic(out / RESULTS_FILE, q.results)
    return q.results
