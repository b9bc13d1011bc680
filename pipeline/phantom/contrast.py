"""DESS-like contrast and the analytic qDESS two-echo signal model of the phantom.

Why this model: the quantification stage computes T2 from the two qDESS echoes with the published
analytic formula (Sveinsson et al., MRI 2017, as in the research code):

    Gl   = GlArea / (Tg_us) * 100          [GlArea, Tg: vendor tags (0019,10B6), (0019,10B7)]
    dkL  = gamma * Gl * Tg_s,  gamma = 2*pi*4258
    E    = exp(-TR/T1 - TR * dkL**2 * D)
    k    = sin(a/2)**2 * (1 + E) / (1 - cos(a) * E)
    c1   = (TR - Tg_s/3) * dkL**2 * D
    T2   = -2 * (TR - TE) / (ln(S2/S1 / k) + c1)           (TR, TE, Tg in s)

with T1 = 1.2 s and D = 1.25e-9 for every tissue. The phantom writes the second echo as exactly
the inverse of that relation, ``S2 = S1 * k * exp(-2 (TR - TE) / T2 - c1)``, so the formula
recovers the configured T2 in every voxel before noise and blur. TE is the EchoTime of echo 1;
echo 2 carries EchoTime = 2 TR - TE (the effective echo time of the S- echo).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.phantom import geometry as g


@dataclass(frozen=True)
class QdessParams:
    """Acquisition parameters written to the DICOM headers and used by the signal model."""

    tr_ms: float = 20.36
    te_ms: float = 6.428
    flip_deg: float = 20.0
    gl_area: float = 3132.0  # vendor tag (0019,10B6)
    tg_us: float = 1800.0  # vendor tag (0019,10B7)
    t1_ms: float = 1200.0
    diffusivity: float = 1.25e-9

    @property
    def te2_ms(self) -> float:
        """EchoTime written on echo 2."""
        return 2.0 * self.tr_ms - self.te_ms

    def constants(self) -> tuple[float, float]:
        """(k, c1) of the analytic relation."""
        tr, tg = self.tr_ms * 1e-3, self.tg_us * 1e-6
        gl = self.gl_area / self.tg_us * 100.0
        dkl = 2.0 * math.pi * 4258.0 * gl * tg
        alpha = math.radians(self.flip_deg)
        e = math.exp(-tr / (self.t1_ms * 1e-3) - tr * dkl**2 * self.diffusivity)
        k = math.sin(alpha / 2) ** 2 * (1 + e) / (1 - math.cos(alpha) * e)
        c1 = (tr - tg / 3.0) * dkl**2 * self.diffusivity
        return k, c1

    def echo_ratio(self, t2_ms: np.ndarray) -> np.ndarray:
        """S2 / S1 for the given T2 (ms)."""
        k, c1 = self.constants()
        tr, te = self.tr_ms * 1e-3, self.te_ms * 1e-3
        t2 = np.maximum(np.asarray(t2_ms), 1e-3)
        return k * np.exp(-2000.0 * (tr - te) / t2 - c1)

    def t2_from_ratio(self, ratio: np.ndarray) -> np.ndarray:
        """The analytic formula (for tests and docs): T2 in ms from S2/S1."""
        k, c1 = self.constants()
        tr, te = self.tr_ms * 1e-3, self.te_ms * 1e-3
        with np.errstate(divide="ignore", invalid="ignore"):
            return -2000.0 * (tr - te) / (np.log(np.abs(ratio) / k) + c1)


#: Echo-1 signal (relative; fluid ~ 1) per material: water-excitation DESS look.
S1_BY_MATERIAL: dict[int, float] = {
    0: 0.0, g.FEMUR: 0.24, g.TIBIA: 0.24, g.PATELLA: 0.24,
    g.MED_TIB_CART: 0.60, g.LAT_TIB_CART: 0.60, g.PAT_CART: 0.62,
    g.ANT_FEM: 0.60, g.MED_WB_FEM: 0.60, g.LAT_WB_FEM: 0.60, g.MED_POST_FEM: 0.60,
    g.LAT_POST_FEM: 0.60, g.MED_MEN: 0.06, g.LAT_MEN: 0.06, g.FLUID: 0.95, g.FAT: 0.12,
    g.MUSCLE: 0.30, g.TENDON: 0.04,
}
CORTEX_S1 = 0.03

#: Default T2 (ms) of the non-cartilage materials.
T2_BACKGROUND_MS: dict[int, float] = {
    g.FEMUR: 40.0, g.TIBIA: 40.0, g.PATELLA: 40.0, g.MED_MEN: 12.0, g.LAT_MEN: 12.0,
    g.FLUID: 250.0, g.FAT: 60.0, g.MUSCLE: 32.0, g.TENDON: 8.0,
}
#: Default cartilage T2 per region (ms), distinct so region assignment is testable.
DEFAULT_T2_MS: dict[str, float] = {
    "ant_fem_cart": 42.0,
    "med_wb_fem_cart": 38.0,
    "lat_wb_fem_cart": 35.0,
    "med_post_fem_cart": 44.0,
    "lat_post_fem_cart": 40.0,
    "med_tib_cart": 33.0,
    "lat_tib_cart": 36.0,
    "pat_cart": 46.0,
}


def material_luts(t2_regions: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(S1, T2) lookup tables indexed by material code."""
    s1 = np.zeros(g.N_MATERIALS, dtype=np.float64)
    t2 = np.full(g.N_MATERIALS, 30.0, dtype=np.float64)
    for code, v in S1_BY_MATERIAL.items():
        s1[code] = v
    for code, v in T2_BACKGROUND_MS.items():
        t2[code] = v
    for name, code in g.REGION_CODES.items():
        t2[code] = float(t2_regions[name])
    return s1, t2


def bias_field(x: np.ndarray, y: np.ndarray, z: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field exp(polynomial of degree 2) of coordinates in about [-1, 1].

    ``x``, ``y``, ``z`` broadcast against each other (pass sparse grids to save memory).
    """
    terms = (x, y, z, x * y, x * z, y * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3)
    log_b = sum(np.float32(c) * t for c, t in zip(coeffs, terms, strict=True))
    return np.exp(np.asarray(log_b, dtype=np.float32))


@dataclass(frozen=True)
class ImagingParams:
    """Image-quality knobs (seeded randomness is drawn by the caller)."""

    noise_sigma: float = 0.012  # Gaussian sigma per quadrature channel, relative to fluid ~ 1
    psf_sigma_vox: float = 0.45  # blur (voxels) standing in for partial volume
    bias_strength: float = 0.12  # std of the bias polynomial coefficients
    max_value: float = 2000.0  # stored value of signal 1.0


_CARTILAGE_LUT = np.zeros(g.N_MATERIALS, dtype=bool)
_CARTILAGE_LUT[list(g.REGION_CODES.values())] = True


def t2_map(
    material: np.ndarray, depth: np.ndarray, t2_regions: Mapping[str, float], gradient_ms: float
) -> np.ndarray:
    """T2 (ms) at every voxel centre: per material, and in cartilage rising linearly with depth.

    Cartilage T2 = region T2 + ``gradient_ms`` x (relative depth - 0.5): deep (bone side) lower,
    superficial higher, as in real cartilage; the region T2 is the value at mid-depth.
    """
    _, t2_lut = material_luts(t2_regions)
    out = t2_lut.astype(np.float32)[material]
    cart = _CARTILAGE_LUT[material]
    out[cart] += np.float32(gradient_ms) * (depth[cart] - np.float32(0.5))
    return out


def render_echoes(
    material: np.ndarray,
    cortex: np.ndarray,
    t2: np.ndarray,
    *,
    qdess: QdessParams,
    imaging: ImagingParams,
    bias: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy, blurred, bias-modulated echo 1 and echo 2 (float32, stored-value units).

    ``t2`` is the T2 map (ms) from :func:`t2_map` (only its cartilage values are read: the other
    tissues have the fixed T2 of :data:`T2_BACKGROUND_MS`); ``bias`` the multiplicative field on the same
    grid. Noise is Rician (magnitude of complex Gaussian), added after the bias, the same way for
    both echoes; the bias cancels in S2/S1.
    """
    s1_lut = np.zeros(g.N_MATERIALS, dtype=np.float32)
    for code, v in S1_BY_MATERIAL.items():
        s1_lut[code] = v
    s1 = s1_lut[material]
    s1[cortex] = CORTEX_S1
    # S2/S1 from a per-material table, recomputed only where T2 varies (cartilage depth gradient)
    _, t2_lut = material_luts(dict.fromkeys(g.REGION_CODES, 30.0))  # non-cartilage T2 are fixed
    ratio = qdess.echo_ratio(t2_lut).astype(np.float32)[material]
    cart = _CARTILAGE_LUT[material]
    ratio[cart] = qdess.echo_ratio(t2[cart])
    s2 = s1 * ratio
    del ratio, cart
    out = []
    sigma = np.float32(imaging.noise_sigma)
    for sig in (s1, s2):
        if imaging.psf_sigma_vox > 0:
            sig = ndimage.gaussian_filter(sig, imaging.psf_sigma_vox, mode="nearest")
        sig *= bias
        if imaging.noise_sigma > 0:  # Rician: |signal + n1 + i n2|
            noise = rng.standard_normal(sig.shape, dtype=np.float32)
            noise *= sigma
            sig += noise
            np.square(sig, out=sig)
            rng.standard_normal(sig.shape, dtype=np.float32, out=noise)
            noise *= sigma
            np.square(noise, out=noise)
            sig += noise
            np.sqrt(sig, out=sig)
            del noise
        sig *= np.float32(imaging.max_value)
        out.append(sig)
    return out[0], out[1]


def combine_rss(echo1: np.ndarray, echo2: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares of the two echoes (what the segmentation model sees)."""
    return np.sqrt(echo1.astype(np.float32) ** 2 + echo2.astype(np.float32) ** 2)
