"""Build a phantom in memory: draw the random knee, sample it on the grid, render, compute truth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from pipeline.phantom import geometry as g
from pipeline.phantom.contrast import (
    DEFAULT_T2_MS,
    ImagingParams,
    QdessParams,
    bias_field,
    combine_rss,
    render_echoes,
    t2_map,
)
from pipeline.phantom.followup import BASELINE_DATE, Followup
from pipeline.phantom.pose import (
    ORIENTATIONS,
    SIDES,
    ImageGrid,
    KneePose,
    apply_affine,
    orientation_direction,
)
from pipeline.phantom.truth import (
    integrate_volumes,
    labels_from_material,
    subregions_from_material,
    t2_statistics,
    truth_record,
)

GENERATOR_VERSION = "1.1"  # 1.1: research-rule WB boundaries, notch roof, T2 depth gradient


@dataclass(frozen=True)
class Preset:
    """Grid and knee size of a preset.

    ``small`` shrinks the knee (scale 0.42) so that a 64x64x48 grid at 0.7x0.7x0.9 mm still shows
    every structure with cartilage 2-4 voxels thick; ``full`` is a real-size knee (scale 1.1: a
    74 mm wide distal femur, 81 mm wide tibial plateau) on the clinical 384x384x160 grid at
    0.365x0.365x0.7 mm.
    """

    shape: tuple[int, int, int]  # (columns i, rows j, slices k)
    spacing: tuple[float, float, float]  # (along a row, along a column, between slices) mm
    scale: float
    jitter_mm: float
    volume_subsamples: int  # per axis, for the continuous truth volumes of boundary voxels


PRESETS: dict[str, Preset] = {
    "small": Preset(shape=(64, 64, 48), spacing=(0.7, 0.7, 0.9), scale=0.42, jitter_mm=1.5,
                    volume_subsamples=3),
    "full": Preset(shape=(384, 384, 160), spacing=(0.365, 0.365, 0.7), scale=1.1, jitter_mm=4.0,
                   volume_subsamples=2),
}


@dataclass(frozen=True)
class Phantom:
    """A phantom in memory. Arrays are ``[k, j, i]`` (slice, row, column) like SimpleITK's numpy.

    ``echoes`` holds one float32 image (DESS, the root-sum-of-squares look) or, with qDESS, the two
    echoes; ``image`` is what a reader returns for segmentation (the RSS image).
    """

    seed: int
    preset: str
    side: str
    orientation: str
    qdess: bool
    grid: ImageGrid
    pose: KneePose
    anatomy: g.Anatomy
    echoes: tuple[np.ndarray, ...]
    echo_times_ms: tuple[float, ...]
    image: np.ndarray
    labels: np.ndarray  # uint8, canonical 0-9
    subregions: np.ndarray  # uint8, 0-9 with femoral cartilage as 11-15
    t2_map: np.ndarray  # float32 noiseless T2 (ms) at the voxel centres
    truth: dict[str, object]
    qdess_params: QdessParams = field(default_factory=QdessParams)
    imaging: ImagingParams = field(default_factory=ImagingParams)
    study_date: str = BASELINE_DATE.strftime("%Y%m%d")  # DICOM DA; a follow-up's is later
    followup: Followup | None = None


def _draw(seed: int, preset: Preset, side: str | None, thickness: Mapping[str, float] | None,
          t2: Mapping[str, float] | None) -> dict[str, object]:
    """Every random quantity of a phantom, drawn in a fixed order (determinism per seed)."""
    rng = np.random.default_rng(seed)
    drawn_side = str(rng.choice(SIDES))
    scale = preset.scale * float(rng.uniform(0.92, 1.08))
    rot = tuple(float(v) for v in rng.uniform(-10.0, 10.0, 3))
    shift = rng.uniform(-1.0, 1.0, 3) * preset.jitter_mm
    th_factor = rng.uniform(0.85, 1.15, len(g.REGION_CODES))
    t2_shift = rng.uniform(-3.0, 3.0, len(g.REGION_CODES))
    oblique = (float(rng.uniform(12.0, 20.0)), float(rng.uniform(8.0, 15.0)))
    bias = rng.normal(0.0, 1.0, 9)
    centre = rng.uniform(-20.0, 20.0, 3)
    thick = {k: round(g.DEFAULT_THICKNESS_MM[k] * float(f), 3)
             for k, f in zip(g.REGION_CODES, th_factor, strict=True)}
    thick.update({k: float(v) for k, v in (thickness or {}).items()})
    t2v = {k: round(DEFAULT_T2_MS[k] + float(d), 2)
           for k, d in zip(g.REGION_CODES, t2_shift, strict=True)}
    t2v.update({k: float(v) for k, v in (t2 or {}).items()})
    unknown = (set(thickness or {}) | set(t2 or {})) - set(g.REGION_CODES)
    if unknown:
        raise ValueError(f"unknown cartilage regions {sorted(unknown)}; known: {list(g.REGION_CODES)}")
    bad = {k: v for k, v in thick.items() if not 0.2 <= v <= 8.0}
    bad |= {k: v for k, v in t2v.items() if not 1.0 <= v <= 200.0}
    if bad:
        raise ValueError(f"thickness must be 0.2-8 mm and T2 1-200 ms; got {bad}")
    return {
        "side": side or drawn_side, "scale": scale, "rotation": rot, "shift": shift,
        "thickness": thick, "t2": t2v, "oblique": oblique, "bias": bias, "centre": centre,
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _sample(
    grid: ImageGrid, pose: KneePose, anatomy: g.Anatomy, chunk_slices: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Material, cortex and cartilage-depth maps on the grid, evaluated slab by slab."""
    ni, nj, nk = grid.size
    material = np.empty((nk, nj, ni), dtype=np.uint8)
    cortex = np.empty((nk, nj, ni), dtype=bool)
    depth = np.empty((nk, nj, ni), dtype=np.float32)
    a, b = pose.grid_to_local(grid)
    ii = np.arange(ni, dtype=np.float64)[None, None, :]
    jj = np.arange(nj, dtype=np.float64)[None, :, None]
    for k0 in range(0, nk, chunk_slices):
        k1 = min(nk, k0 + chunk_slices)
        kk = np.arange(k0, k1, dtype=np.float64)[:, None, None]
        local = np.empty(((k1 - k0) * nj * ni, 3), dtype=np.float32)
        for r in range(3):
            local[:, r] = (a[r, 0] * ii + a[r, 1] * jj + a[r, 2] * kk + b[r]).ravel()
        c = g.classify(anatomy, local)
        material[k0:k1] = c.material.reshape(k1 - k0, nj, ni)
        cortex[k0:k1] = c.cortex.reshape(k1 - k0, nj, ni)
        depth[k0:k1] = c.depth.reshape(k1 - k0, nj, ni)
    return material, cortex, depth


def make_phantom(
    seed: int,
    preset: str = "small",
    *,
    side: str | None = None,
    orientation: str = "sagittal",
    qdess: bool = False,
    thickness: Mapping[str, float] | None = None,
    t2_ms: Mapping[str, float] | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    scale: float | None = None,
    imaging: ImagingParams | None = None,
    rotation_deg: tuple[float, float, float] | None = None,
    volume_subsamples: int | None = None,
    t2_depth_gradient_ms: float = 10.0,
    followup: Followup | None = None,
) -> Phantom:
    """Generate a knee phantom (deterministic for the arguments).

    Parameters
    ----------
    seed
        Seeds every random choice: side (unless given), knee size (+-8 %), pose (+-10 degrees about
        each axis), position, default thickness (+-15 % around the reference knee) and T2 (+-3 ms),
        oblique angles, bias field and noise.
    preset
        ``small`` (64x64x48, test-sized) or ``full`` (384x384x160, clinical grid).
    side, orientation, qdess
        Knee side (``left``/``right``), slice orientation (``sagittal``, ``coronal``, ``axial``,
        ``oblique``) and whether to produce two qDESS echoes with known T2.
    thickness, t2_ms
        Per-region overrides (keys of :data:`pipeline.phantom.geometry.REGION_CODES`).
    spacing, shape, scale
        Override the preset grid spacing (mm: row, column, slice), shape (columns, rows, slices)
        and the nominal knee scale (anatomy size relative to an adult knee).
    imaging
        Noise, blur and bias knobs (``ImagingParams(noise_sigma=0, psf_sigma_vox=0)`` gives a clean
        image whose qDESS ratio recovers T2 exactly).
    rotation_deg
        Fixed pose angles (about LPS x, y, z) instead of random ones.
    volume_subsamples
        Sub-samples per axis of boundary voxels for the continuous truth volumes (default: the
        preset's, 3 for ``small`` and 2 for ``full``).
    t2_depth_gradient_ms
        Cartilage T2 rises by this much from the bone to the articular surface (0 = uniform).
    followup
        Make the follow-up exam of the phantom these arguments give: the same knee with the
        cartilage thinner by ``followup.loss_mm`` per region, bones unchanged, ``interval_days``
        later, new UIDs and noise (:mod:`pipeline.phantom.followup`). truth.json records the loss.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    if side is not None and side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    p = PRESETS[preset]
    if spacing or shape or scale:
        p = replace(p, spacing=spacing or p.spacing, shape=shape or p.shape, scale=scale or p.scale)
    arguments = {"seed": seed, "preset": preset, "side": side, "orientation": orientation,
                 "qdess": qdess, "thickness": dict(thickness) if thickness else None,
                 "t2_ms": dict(t2_ms) if t2_ms else None,
                 "spacing": list(spacing) if spacing else None,
                 "shape": list(shape) if shape else None, "scale": scale,
                 "imaging": asdict(imaging) if imaging else None,
                 "rotation_deg": list(rotation_deg) if rotation_deg is not None else None,
                 "volume_subsamples": volume_subsamples,
                 "t2_depth_gradient_ms": float(t2_depth_gradient_ms)}
    d = _draw(seed, p, side, thickness, t2_ms)
    baseline_mm: dict[str, float] = dict(d["thickness"])  # type: ignore[call-overload]
    cart_mm = followup.apply(baseline_mm) if followup else baseline_mm
    anatomy = g.build_anatomy(d["scale"], cart_mm, layout_thickness=baseline_mm)  # type: ignore[arg-type]
    direction = orientation_direction(orientation, d["oblique"])  # type: ignore[arg-type]
    grid = ImageGrid.centred(p.shape, p.spacing, direction, d["centre"])  # type: ignore[arg-type]
    s = anatomy.scale
    rot = rotation_deg if rotation_deg is not None else d["rotation"]
    if followup is not None:
        rot = tuple(float(a + b) for a, b in zip(rot, followup.reposition_deg, strict=True))  # type: ignore[arg-type]
    pose0 = KneePose(side=str(d["side"]), rotation_deg=rot, centre=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    fov_local = np.array([0.0, 10.0 * s + 1.0, -5.0 * s])
    centre = np.asarray(d["centre"]) - pose0.matrix @ fov_local + np.asarray(d["shift"])
    pose = KneePose(side=pose0.side, rotation_deg=pose0.rotation_deg,
                    centre=tuple(float(v) for v in centre))  # type: ignore[arg-type]
    chunk = max(1, 2_000_000 // (p.shape[0] * p.shape[1]))
    material, cortex, depth = _sample(grid, pose, anatomy, chunk)
    labels = labels_from_material(material)
    subregions = subregions_from_material(material)
    imaging = imaging or ImagingParams()
    qp = QdessParams()
    bias = _bias_on_grid(grid, np.asarray(d["bias"]) * imaging.bias_strength)
    noise_seed = [d["noise_seed"], followup.visit] if followup else d["noise_seed"]
    rng = np.random.default_rng(noise_seed)  # type: ignore[arg-type]
    t2 = t2_map(material, depth, d["t2"], t2_depth_gradient_ms)  # type: ignore[arg-type]
    e1, e2 = render_echoes(material, cortex, t2, qdess=qp, imaging=imaging, bias=bias, rng=rng)
    rss = combine_rss(e1, e2)
    echoes = (e1, e2) if qdess else (rss,)
    times = (qp.te_ms, qp.te2_ms) if qdess else (qp.te_ms,)

    to_local = pose.grid_to_local(grid)

    def label_at(ijk: np.ndarray) -> np.ndarray:
        local = apply_affine(ijk, *to_local).astype(np.float32)
        return labels_from_material(g.classify(anatomy, local).material)

    sub = volume_subsamples or p.volume_subsamples
    vols = integrate_volumes(labels, grid, label_at, sub=sub)
    truth = truth_record(side=pose.side, volumes_mm3=vols, labels=labels, grid=grid,
                         thickness=g.analytic_thickness(anatomy),
                         t2_stats=t2_statistics(t2, subregions, depth))
    truth.update(_describe(seed, preset, orientation, qdess, grid, pose, anatomy, qp))
    truth["t2_mid_depth_ms"] = dict(d["t2"])  # type: ignore[call-overload]
    truth["t2_depth_gradient_ms"] = float(t2_depth_gradient_ms)
    truth["imaging"] = asdict(imaging)
    truth["arguments"] = arguments  # what --followup-of rebuilds the baseline knee from
    truth["study_date"] = (followup.study_date if followup else BASELINE_DATE).isoformat()
    if followup:
        truth["followup"] = followup.record(baseline_mm)
    return Phantom(seed=seed, preset=preset, side=pose.side, orientation=orientation, qdess=qdess,
                   grid=grid, pose=pose, anatomy=anatomy, echoes=echoes, echo_times_ms=times,
                   image=rss, labels=labels, subregions=subregions, t2_map=t2,
                   truth=truth, qdess_params=qp, imaging=imaging,
                   study_date=str(truth["study_date"]).replace("-", ""), followup=followup)


def _bias_on_grid(grid: ImageGrid, coeffs: np.ndarray) -> np.ndarray:
    """The bias field sampled on the grid (a smooth polynomial in normalised index coordinates)."""
    ni, nj, nk = grid.size
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in (nk, nj, ni)]
    kk, jj, ii = np.meshgrid(*axes, indexing="ij", sparse=True)
    return bias_field(ii, jj, kk, coeffs)


def _describe(seed: int, preset: str, orientation: str, qdess: bool, grid: ImageGrid,
              pose: KneePose, anatomy: g.Anatomy, qp: QdessParams) -> dict[str, object]:
    """Provenance and geometry part of truth.json."""
    return {
        "generator": "kneenode synthetic knee phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "preset": preset,
        "orientation": orientation,
        "qdess": qdess,
        "geometry": {
            "size": list(grid.size),
            "spacing": list(grid.spacing),
            "origin": list(grid.origin),
            "direction": list(grid.direction),
        },
        "pose": {
            "rotation_deg": list(pose.rotation_deg),
            "knee_origin_lps": list(pose.centre),
            "local_to_lps": pose.matrix.round(12).tolist(),
            "scale": anatomy.scale,
        },
        "labels": {"1": "femur", "2": "tibia", "3": "patella", "4": "femoral cartilage",
                   "5": "medial tibial cartilage", "6": "lateral tibial cartilage",
                   "7": "patellar cartilage", "8": "medial meniscus", "9": "lateral meniscus"},
        "subregion_labels": {"11": "ant_fem_cart", "12": "med_wb_fem_cart", "13": "lat_wb_fem_cart",
                             "14": "med_post_fem_cart", "15": "lat_post_fem_cart"},
        "qdess_params": {**asdict(qp), "te2_ms": qp.te2_ms} if qdess else None,
    }
