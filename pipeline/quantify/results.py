"""results.json content of the quantify stage: key names of the research pipeline, explicit nulls.

Keys (flat, so the encoders read them directly):

- ``side``: ``"left"`` / ``"right"`` (null when medial and lateral cannot be told apart);
- ``<region>_mm_mean|median|std`` for the eight thickness regions (:data:`THICKNESS_REGIONS`);
- ``<region>_t2_ms_mean|median|std`` and ``<region>_deep_t2_ms_...`` /
  ``<region>_superficial_t2_ms_...`` (qDESS only; null otherwise);
- ``<tissue>_ml`` for the nine tissues (:data:`pipeline.quantify.volumes.TISSUE_KEYS`);
- ``missing``: ``{"<key prefix>": "reason"}`` for every null (e.g. ``"pat_cart_mm"``);
- ``units``, ``algorithms`` (name -> version), ``thickness_vertices`` (vertices per region),
  ``subregion_rule`` (the boundaries found), ``t2_protocol``, ``seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.quantify.geometry import (
    FEM_SUBREGIONS,
    LAT_TIB_CART,
    MED_TIB_CART,
    PAT_CART,
)
from pipeline.quantify.t2 import T2_REGIONS

#: Thickness region key (research pipeline) -> label in the subregion map.
THICKNESS_REGIONS: dict[str, int] = {
    "ant_fem_cart": FEM_SUBREGIONS[0],
    "med_wb_fem_cart": FEM_SUBREGIONS[1],
    "lat_wb_fem_cart": FEM_SUBREGIONS[2],
    "med_post_fem_cart": FEM_SUBREGIONS[3],
    "lat_post_fem_cart": FEM_SUBREGIONS[4],
    "med_tib_cart": MED_TIB_CART,
    "lat_tib_cart": LAT_TIB_CART,
    "pat_cart": PAT_CART,
}
STATS = ("mean", "median", "std")
QUANTIFY_VERSION = "1.0"
ALGORITHMS: dict[str, str] = {
    "quantify": QUANTIFY_VERSION,
    "side": "tibial-cartilage-centroids 1.0",
    "subregions": "notch + 0.6 distance fraction in the knee frame 1.0",
    "thickness": "bone-normal ray cast, -2.5..+10 mm, cartilage variance 0.3125 mm2 1.0",
    "volumes": "voxel count 1.0",
    "t2": "qDESS analytic (Sveinsson 2017) 1.0",
}
UNITS = {"thickness": "mm", "t2": "ms", "volume": "mL"}


def thickness_keys(stats: Mapping[str, Mapping[str, float] | None], reasons: Mapping[str, str]
                   ) -> tuple[dict[str, float | None], dict[str, str], dict[str, int]]:
    """Flat thickness keys, reasons for the nulls and vertex counts per region."""
    out: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    counts: dict[str, int] = {}
    for region in THICKNESS_REGIONS:
        st = stats.get(region)
        for stat in STATS:
            out[f"{region}_mm_{stat}"] = None if st is None else round(float(st[stat]), 4)
        counts[region] = 0 if st is None else int(st.get("vertices", 0))
        if st is None:
            missing[f"{region}_mm"] = reasons.get(region, "no bone-surface ray crossed this cartilage")
    return out, missing, counts


def null_t2_keys(reason: str) -> tuple[dict[str, None], dict[str, str]]:
    """Every T2 key as null with one reason (e.g. not a two-echo series)."""
    out: dict[str, None] = {}
    missing: dict[str, str] = {}
    for region in T2_REGIONS:
        for part in ("", "_deep", "_superficial"):
            for stat in STATS:
                out[f"{region}{part}_t2_ms_{stat}"] = None
            missing[f"{region}{part}_t2_ms"] = reason
    return out, missing


def assemble(
    *,
    side: str | None,
    side_reason: str | None,
    volumes: Mapping[str, float],
    thickness: Mapping[str, float | None],
    t2: Mapping[str, float | None],
    missing: Mapping[str, str],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The results dict in a stable key order."""
    out: dict[str, Any] = {"side": side}
    out.update(thickness)
    out.update(t2)
    out.update(volumes)
    miss = dict(missing)
    if side is None:
        miss["side"] = side_reason or "unknown"
    out["missing"] = miss
    out["units"] = dict(UNITS)
    out["algorithms"] = dict(ALGORITHMS)
    out.update(extra)
    return out
