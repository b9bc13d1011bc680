"""Analytic knee anatomy in a knee-local frame: signed distances, tissues and cartilage regions.

Why analytic: every label and every truth number of the phantom must be exact, so the anatomy is a
union of primitives with exact signed distance functions (rounded cylinders and rounded boxes), and
each cartilage plate is the set of points at distance ``0 < d <= t`` outside its bone, where ``t``
is the configured thickness of the region of the *nearest bone-surface point*. Along any bone-surface
normal inside a plate the cartilage is therefore exactly ``t`` mm thick.

Knee-local frame (mm): axis 0 = ``m`` (positive towards MEDIAL), axis 1 = ``ap`` (positive towards
ANTERIOR), axis 2 = ``si`` (positive towards SUPERIOR). The origin is the centre of the femoral
condyle axes. :mod:`pipeline.phantom.pose` maps this frame to patient LPS coordinates (left or
right knee, random rotation and position). Bone dimensions scale with ``scale``; cartilage
thicknesses never scale (they are the truth, in mm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

# --- material codes: canonical labels 1-9, femoral cartilage as its subregion 11-15 -------------
FEMUR, TIBIA, PATELLA = 1, 2, 3
FEM_CART, MED_TIB_CART, LAT_TIB_CART, PAT_CART = 4, 5, 6, 7
MED_MEN, LAT_MEN = 8, 9
FLUID = 10
ANT_FEM, MED_WB_FEM, LAT_WB_FEM, MED_POST_FEM, LAT_POST_FEM = 11, 12, 13, 14, 15
FAT, MUSCLE, TENDON = 16, 17, 18
N_MATERIALS = 19

#: Thickness regions (key names of the research pipeline) -> material code.
REGION_CODES: dict[str, int] = {
    "ant_fem_cart": ANT_FEM,
    "med_wb_fem_cart": MED_WB_FEM,
    "lat_wb_fem_cart": LAT_WB_FEM,
    "med_post_fem_cart": MED_POST_FEM,
    "lat_post_fem_cart": LAT_POST_FEM,
    "med_tib_cart": MED_TIB_CART,
    "lat_tib_cart": LAT_TIB_CART,
    "pat_cart": PAT_CART,
}

#: Default cartilage thickness per region (mm): the example knee of the research pipeline.
DEFAULT_THICKNESS_MM: dict[str, float] = {
    "ant_fem_cart": 1.91,
    "med_wb_fem_cart": 1.89,
    "lat_wb_fem_cart": 1.38,
    "med_post_fem_cart": 1.35,
    "lat_post_fem_cart": 1.51,
    "med_tib_cart": 1.95,
    "lat_tib_cart": 1.99,
    "pat_cart": 2.66,
}

# Femoral cartilage covers the condyles for polar angles (around the condyle axis, from inferior
# (-si) towards anterior (+ap)) in [-110, 110] degrees and the trochlea for [20, 140] degrees around
# its own axis (all anterior). Region boundaries: see wb_bounds.
CONDYLE_COVER_DEG = 110.0
TROCHLEA_COVER_DEG = (20.0, 140.0)
WB_FRACTION = 0.6  # the research pipeline's weight-bearing distance fraction
CORTEX_MM = 0.9


@dataclass(frozen=True)
class Anatomy:
    """All dimensions (mm, knee-local frame) of one phantom knee.

    Build it with :func:`build_anatomy`; the fields are derived there so that the joint spaces stay
    open whatever the thicknesses.
    """

    scale: float
    thickness: Mapping[str, float]
    condyle_r: float  # sagittal radius of each condyle
    condyle_m: float  # |m| of each condyle centre
    condyle_half: float  # half width (along m)
    condyle_round: float
    trochlea_c: tuple[float, float]  # (ap, si) of the trochlea axis
    trochlea_r: float
    trochlea_half: float
    femur_shaft_r: float
    femur_shaft_ap: float
    plateau_top: float  # si of the tibial plateau bone surface
    plateau_half: tuple[float, float, float]
    plateau_ap: float
    tibia_shaft_r: float
    tib_cart_axes: tuple[float, float]  # semi-axes (m, ap) of each tibial cartilage ellipse
    patella_c: tuple[float, float]  # (ap, si) of the patella centre
    patella_half: tuple[float, float, float]
    patella_round: float
    meniscus_inner: float  # normalised elliptical radius where the wedge starts
    meniscus_outer: float
    meniscus_height: float
    body_axes: tuple[float, float]
    fat_mm: float
    extra: dict[str, float] = field(default_factory=dict)
    layout_thickness: Mapping[str, float] = field(default_factory=dict)  # placed the bones


def build_anatomy(scale: float, thickness: Mapping[str, float], gap_mm: float = 0.5,
                  layout_thickness: Mapping[str, float] | None = None) -> Anatomy:
    """Dimensions of a knee of relative size ``scale`` with the given cartilage thicknesses.

    ``gap_mm`` is the smallest joint space between opposing cartilage surfaces (filled with fluid).
    ``layout_thickness`` (default: ``thickness``) places the bones: a follow-up passes its
    baseline's thicknesses so that the bones stay where they were and only the cartilage
    surfaces move (the joint space widens by the loss).
    """
    s = float(scale)
    t = {k: float(thickness[k]) for k in REGION_CODES}
    lay = {k: float((layout_thickness or thickness)[k]) for k in REGION_CODES}
    r = 20.0 * s
    tib_need = max(lay["med_wb_fem_cart"] + lay["med_tib_cart"],
                   lay["lat_wb_fem_cart"] + lay["lat_tib_cart"])
    plateau_top = -r - tib_need - gap_mm
    troch_ap, troch_si, troch_r = 6.0 * s, 12.0 * s, 16.0 * s
    pat_half = (17.0 * s, 9.0 * s, 16.0 * s)
    pat_face = troch_ap + troch_r + lay["ant_fem_cart"] + gap_mm + 0.3 + lay["pat_cart"]
    return Anatomy(
        scale=s,
        thickness=t,
        condyle_r=r,
        condyle_m=19.0 * s,
        condyle_half=13.0 * s,
        condyle_round=5.0 * s,
        trochlea_c=(troch_ap, troch_si),
        trochlea_r=troch_r,
        trochlea_half=32.0 * s,
        femur_shaft_r=13.0 * s,
        femur_shaft_ap=2.0 * s,
        plateau_top=plateau_top,
        plateau_half=(37.0 * s, 25.0 * s, 12.0 * s),
        plateau_ap=-2.0 * s,
        tibia_shaft_r=15.0 * s,
        tib_cart_axes=(12.5 * s, 17.0 * s),
        patella_c=(pat_face + pat_half[1], troch_si + 2.0 * s),
        patella_half=pat_half,
        patella_round=5.0 * s,
        meniscus_inner=0.72,
        meniscus_outer=1.14,
        meniscus_height=6.0 * s,
        body_axes=(62.0 * s, 56.0 * s),
        fat_mm=6.0 * s,
        layout_thickness=lay,
    )


# --- exact signed distance functions -----------------------------------------------------------
def sdf_rounded_cylinder(
    axial: np.ndarray, radial: np.ndarray, radius: float, half: float, rounding: float
) -> np.ndarray:
    """Signed distance to a cylinder with rounded rims (exact): radial and axial offsets given."""
    dx = radial - (radius - rounding)
    dy = np.abs(axial) - (half - rounding)
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return outside + np.minimum(np.maximum(dx, dy), 0.0) - rounding


def sdf_rounded_box(q: np.ndarray, half: tuple[float, float, float], rounding: float) -> np.ndarray:
    """Signed distance to an axis-aligned box with rounded edges (exact); ``q`` is centred."""
    d0 = np.abs(q[:, 0]) - (half[0] - rounding)
    d1 = np.abs(q[:, 1]) - (half[1] - rounding)
    d2 = np.abs(q[:, 2]) - (half[2] - rounding)
    outside = np.sqrt(
        np.maximum(d0, 0.0) ** 2 + np.maximum(d1, 0.0) ** 2 + np.maximum(d2, 0.0) ** 2
    )
    return outside + np.minimum(np.maximum(np.maximum(d0, d1), d2), 0.0) - rounding


@dataclass(frozen=True)
class Classified:
    """Result of :func:`classify` for N points."""

    material: np.ndarray  # uint8 material code (labels 1-9, femoral subregions 11-15, 10, 16-18)
    cortex: np.ndarray  # bool: inside a bone within CORTEX_MM of its surface
    depth: np.ndarray  # float32 relative cartilage depth (0 at the bone, 1 at the surface), else 0


def _femur_parts(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray) -> dict[str, np.ndarray]:
    s = a.scale
    radial_c = np.hypot(ap, si)
    parts = {}
    for name, sign in (("cond_med", 1.0), ("cond_lat", -1.0)):
        parts[name] = sdf_rounded_cylinder(
            m - sign * a.condyle_m, radial_c, a.condyle_r, a.condyle_half, a.condyle_round
        )
    tap, tsi = a.trochlea_c
    parts["troch"] = sdf_rounded_cylinder(
        m, np.hypot(ap - tap, si - tsi), a.trochlea_r, a.trochlea_half, 4.0 * s
    )
    shaft_half = 150.0
    parts["shaft"] = sdf_rounded_cylinder(
        si - (4.0 * s + shaft_half), np.hypot(m, ap - a.femur_shaft_ap), a.femur_shaft_r,
        shaft_half, 6.0 * s,
    )
    meta = np.stack([m, ap - 1.0 * s, si - 14.0 * s], axis=1)
    parts["meta"] = sdf_rounded_box(meta, (29.0 * s, 13.0 * s, 12.0 * s), 8.0 * s)
    return parts


_FEMUR_PARTS = ("cond_med", "cond_lat", "troch", "shaft", "meta")


def _femoral_cartilage(
    a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray, parts: dict[str, np.ndarray],
    d_fem: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Material code (11-15) of femoral cartilage for points with ``0 < d_fem`` (0 where none) and
    the thickness of the region of each point."""
    t = a.thickness
    region = np.zeros(m.shape[0], dtype=np.uint8)
    nearest = np.argmin(np.stack([parts[n] for n in _FEMUR_PARTS]), axis=0)
    # condyles: region by polar angle around the condyle axis
    alpha = np.degrees(np.arctan2(ap, -si))
    reach = a.condyle_half  # the whole rim, so no cartilage-free strip borders the notch
    post_deg, ant_deg = wb_bounds(a)["posterior_deg"], wb_bounds(a)["anterior_deg"]
    for idx, sign, wb, post in ((0, 1.0, MED_WB_FEM, MED_POST_FEM), (1, -1.0, LAT_WB_FEM, LAT_POST_FEM)):
        on = (nearest == idx) & (np.abs(m - sign * a.condyle_m) <= reach)
        on &= np.abs(alpha) <= CONDYLE_COVER_DEG
        code = np.where(alpha < post_deg, post, np.where(alpha < ant_deg, wb, ANT_FEM))
        region = np.where(on, code, region).astype(np.uint8)
    tap, tsi = a.trochlea_c
    beta = np.degrees(np.arctan2(ap - tap, -(si - tsi)))
    on_t = (nearest == 2) & (beta >= TROCHLEA_COVER_DEG[0]) & (beta <= TROCHLEA_COVER_DEG[1])
    on_t &= np.abs(m) <= a.trochlea_half - 2.0 * a.scale
    region = np.where(on_t, ANT_FEM, region).astype(np.uint8)
    thick = np.zeros(m.shape[0], dtype=np.float32)
    for name in ("ant_fem_cart", "med_wb_fem_cart", "lat_wb_fem_cart", "med_post_fem_cart",
                 "lat_post_fem_cart"):
        thick[region == REGION_CODES[name]] = t[name]
    return np.where(d_fem <= thick, region, 0).astype(np.uint8), thick


def _meniscus(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray, sign: float) -> np.ndarray:
    """Boolean wedge of one meniscus (before higher-priority tissues are removed)."""
    am, aap = a.tib_cart_axes
    dm = (m - sign * a.condyle_m) / am
    dap = (ap - a.plateau_ap) / aap
    rho = np.hypot(dm, dap)
    rise = np.clip((rho - a.meniscus_inner) / (1.0 - a.meniscus_inner), 0.0, 1.0)
    top = a.plateau_top + a.meniscus_height * rise
    # the horns open towards the intercondylar notch (medial: C shape, lateral: nearly an O)
    toward_notch = np.degrees(np.arctan2(np.abs(dap), -sign * dm))
    gap = 38.0 if sign > 0 else 22.0
    return (
        (rho >= a.meniscus_inner) & (rho <= a.meniscus_outer)
        & (si > a.plateau_top) & (si <= top) & (toward_notch > gap)
    )


_FAR = 1e6


def _masked(fn: Callable[..., np.ndarray], mask: np.ndarray, *cols: np.ndarray, fill: float | bool = _FAR) -> np.ndarray:
    """``fn`` evaluated only where ``mask`` is true (others get ``fill``): culls far points."""
    idx = np.flatnonzero(mask)
    sub = fn(*(c[idx] for c in cols))
    out = np.full(mask.shape[0], fill, dtype=np.float32)
    out[idx] = sub
    return out


@dataclass(frozen=True)
class _Distances:
    """Signed distances to the three bones (culled: ``_FAR`` away from each bone's box)."""

    fem: np.ndarray
    tib: np.ndarray
    pat: np.ndarray
    fem_idx: np.ndarray  # indices where the femur parts were evaluated
    fem_parts: dict[str, np.ndarray]  # per-part distances at fem_idx


_MARGIN = 10.0  # mm around each bone where distances are exact (every rule tests < 10 mm)


def _bone_distances(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray) -> _Distances:
    s = a.scale
    n = m.shape[0]
    m_reach = a.condyle_m + a.condyle_half + _MARGIN
    ap_lo = -a.condyle_r - _MARGIN
    ap_hi = max(a.trochlea_c[0] + a.trochlea_r, a.condyle_r) + _MARGIN
    near_f = (si > -a.condyle_r - _MARGIN) & (np.abs(m) < m_reach) & (ap > ap_lo) & (ap < ap_hi)
    fidx = np.flatnonzero(near_f)
    parts = _femur_parts(a, m[fidx], ap[fidx], si[fidx])
    d_fem = np.full(n, _FAR, dtype=np.float32)
    d_fem[fidx] = np.minimum.reduce([parts[k] for k in _FEMUR_PARTS])

    def tibia(mm: np.ndarray, aa: np.ndarray, ss: np.ndarray) -> np.ndarray:
        centre = (0.0, a.plateau_ap, a.plateau_top - a.plateau_half[2])
        box = sdf_rounded_box(np.stack([mm - centre[0], aa - centre[1], ss - centre[2]], axis=1),
                              a.plateau_half, 4.0 * s)
        shaft = sdf_rounded_cylinder(ss - (a.plateau_top - 150.0), np.hypot(mm, aa + 3.0 * s),
                                     a.tibia_shaft_r, 140.0, 6.0 * s)
        return np.minimum(box, shaft)

    near_t = (si < a.plateau_top + _MARGIN) & (np.abs(m) < a.plateau_half[0] + _MARGIN)
    near_t &= np.abs(ap - a.plateau_ap) < a.plateau_half[1] + _MARGIN
    pap, psi = a.patella_c
    ph = a.patella_half

    def patella(mm: np.ndarray, aa: np.ndarray, ss: np.ndarray) -> np.ndarray:
        return sdf_rounded_box(np.stack([mm, aa - pap, ss - psi], axis=1), ph, a.patella_round)

    near_p = (np.abs(m) < ph[0] + _MARGIN) & (np.abs(ap - pap) < ph[1] + _MARGIN)
    near_p &= np.abs(si - psi) < ph[2] + _MARGIN
    return _Distances(fem=d_fem, tib=_masked(tibia, near_t, m, ap, si),
                      pat=_masked(patella, near_p, m, ap, si), fem_idx=fidx, fem_parts=parts)


def _soft_tissue(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray, mat: np.ndarray) -> None:
    """Muscle inside the body envelope, a fat rim and anterior fat, tendons around the patella."""
    s = a.scale
    bm, bap = a.body_axes
    ell = np.hypot(m / bm, (ap - 2.0 * s) / bap)
    inside = ell <= 1.0
    mat[inside] = MUSCLE
    fat_rim = inside & (ell > 1.0 - a.fat_mm / bap)
    anterior_fat = inside & (ap > 12.0 * s) & (np.abs(m) < 40.0 * s)
    mat[fat_rim | anterior_fat] = FAT
    # quadriceps tendon above and patellar tendon below the patella (dark bands)
    pap, psi = a.patella_c
    ph = a.patella_half
    tendon = (np.abs(m) < 10.0 * s) & (np.abs(ap - (pap + ph[1] * 0.2)) < 3.0 * s)
    tendon &= ((si > psi + ph[2] - 2.0) & (si < psi + ph[2] + 40.0 * s)) | (
        (si < psi - ph[2] + 2.0) & (si > a.plateau_top - 20.0 * s)
    )
    mat[tendon & inside] = TENDON


def _joint_slab(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray) -> np.ndarray:
    """Indices of the slab above the tibial plateau (fluid, menisci, tibial cartilage live there)."""
    am, aap = a.tib_cart_axes
    layout = a.layout_thickness or a.thickness  # a follow-up's slab is its baseline's
    slab_top = a.plateau_top + max(9.0 * a.scale, max(layout.values()) + 1.0)
    slab = (si > a.plateau_top) & (si < slab_top)
    slab &= np.abs(ap - a.plateau_ap) < aap * a.meniscus_outer + 1.0
    slab &= np.abs(m) < a.condyle_m + am * a.meniscus_outer + 1.0
    return np.flatnonzero(slab)


def _fluid_and_menisci(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray, sidx: np.ndarray,
                       d: _Distances, mat: np.ndarray) -> None:
    """Joint fluid (compartments, patellofemoral space, suprapatellar film), then the menisci."""
    s = a.scale
    am, aap = a.tib_cart_axes
    sm, sap, ssi = m[sidx], ap[sidx], si[sidx]
    pap, psi = a.patella_c
    ph = a.patella_half
    fluid = np.zeros(m.shape[0], dtype=bool)
    for sign in (1.0, -1.0):
        rho = np.hypot((sm - sign * a.condyle_m) / am, (sap - a.plateau_ap) / aap)
        fluid[sidx] |= rho <= a.meniscus_outer
    fluid |= (d.pat <= 2.5) & (ap < pap) & (d.fem < 8.0 * s)
    fluid |= (d.fem <= 2.0) & (ap > 0.0) & (si > -5.0 * s) & (si < psi + ph[2] + 12.0 * s) & (
        np.abs(m) < 24.0 * s
    )
    fluid &= d.fem > 0.0
    mat[fluid] = FLUID
    for sign, code in ((1.0, MED_MEN), (-1.0, LAT_MEN)):
        mat[sidx[_meniscus(a, sm, sap, ssi, sign)]] = code


def _cartilage(a: Anatomy, m: np.ndarray, ap: np.ndarray, si: np.ndarray, sidx: np.ndarray,
               d: _Distances, mat: np.ndarray) -> np.ndarray:
    """Paint the cartilage plates into ``mat``; returns the relative depth of cartilage points."""
    depth = np.zeros(m.shape[0], dtype=np.float32)
    shell = np.flatnonzero((d.fem > 0.0) & (d.fem <= max(a.thickness.values()) + 1e-3))
    at = np.searchsorted(d.fem_idx, shell)
    region, thick = _femoral_cartilage(a, m[shell], ap[shell], si[shell],
                                       {k: v[at] for k, v in d.fem_parts.items()}, d.fem[shell])
    on = region > 0
    mat[shell[on]] = region[on]
    depth[shell[on]] = d.fem[shell[on]] / thick[on]
    am, aap = a.tib_cart_axes
    sm, sap, ssi = m[sidx], ap[sidx], si[sidx]
    for sign, code, key in ((1.0, MED_TIB_CART, "med_tib_cart"), (-1.0, LAT_TIB_CART, "lat_tib_cart")):
        e = np.hypot((sm - sign * a.condyle_m) / am, (sap - a.plateau_ap) / aap)
        on_t = (e <= 1.0) & (ssi <= a.plateau_top + a.thickness[key])
        mat[sidx[on_t]] = code
        depth[sidx[on_t]] = (ssi[on_t] - a.plateau_top) / a.thickness[key]
    pap, psi = a.patella_c
    ph = a.patella_half
    face = pap - ph[1]
    pe = np.hypot(m / (ph[0] - a.patella_round), (si - psi) / (ph[2] - a.patella_round))
    on_p = (pe <= 1.0) & (ap < face) & (ap >= face - a.thickness["pat_cart"])
    mat[on_p] = PAT_CART
    depth[on_p] = (face - ap[on_p]) / a.thickness["pat_cart"]
    return depth


def classify(a: Anatomy, q: np.ndarray) -> Classified:
    """Material of each point ``q`` (N x 3, knee-local mm), highest-priority tissue wins.

    Priority: bones > cartilage > menisci > joint fluid > tendons > fat > muscle > air. Bone
    distances are only evaluated inside a box 10 mm around each bone (every rule that uses a
    distance tests it against less than 10 mm, so far points need no exact value).
    """
    m = np.ascontiguousarray(q[:, 0], dtype=np.float32)
    ap = np.ascontiguousarray(q[:, 1], dtype=np.float32)
    si = np.ascontiguousarray(q[:, 2], dtype=np.float32)
    mat = np.zeros(m.shape[0], dtype=np.uint8)
    _soft_tissue(a, m, ap, si, mat)
    d = _bone_distances(a, m, ap, si)
    sidx = _joint_slab(a, m, ap, si)
    _fluid_and_menisci(a, m, ap, si, sidx, d, mat)
    depth = _cartilage(a, m, ap, si, sidx, d, mat)
    cortex = np.zeros(m.shape[0], dtype=bool)
    for dist, code in ((d.fem, FEMUR), (d.tib, TIBIA), (d.pat, PATELLA)):
        inb = dist <= 0.0
        mat[inb] = code
        cortex |= inb & (dist > -CORTEX_MM)
    return Classified(material=mat, cortex=cortex, depth=depth)


def analytic_thickness(a: Anatomy) -> dict[str, float]:
    """Truth thickness per region (mm): exact along every bone-surface normal inside a plate."""
    return {k: float(a.thickness[k]) for k in REGION_CODES}


def wb_bounds(a: Anatomy) -> dict[str, float]:
    """Boundaries of the femoral weight-bearing region on the condyle surface.

    They follow the research pipeline's rule in the knee-local frame: the anterior boundary is the
    AP plane through the posterior end of the trochlear cartilage (the roof of the intercondylar
    notch, ``a_ant``); the posterior boundary is the plane ``a_ant + 0.6 (a_min - a_ant)``, ``a_min``
    being the posterior-most femoral cartilage (``-(R + thickest posterior plate)``). On the
    cylindrical condyle surface these planes are the polar angles returned here; a cartilage point
    belongs to the region of its nearest bone-surface point.
    """
    tap, _ = a.trochlea_c
    a_ant = tap + a.trochlea_r * math.sin(math.radians(TROCHLEA_COVER_DEG[0]))
    t_post = max(a.thickness["med_post_fem_cart"], a.thickness["lat_post_fem_cart"])
    a_min = -(a.condyle_r + t_post)
    a_post = a_ant + WB_FRACTION * (a_min - a_ant)
    r = a.condyle_r
    return {
        "anterior_ap_mm": a_ant,
        "posterior_ap_mm": a_post,
        "anterior_deg": math.degrees(math.asin(max(-1.0, min(1.0, a_ant / r)))),
        "posterior_deg": math.degrees(math.asin(max(-1.0, min(1.0, a_post / r)))),
    }
