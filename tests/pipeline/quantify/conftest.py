"""Phantoms for the quantification tests (generated once per session; ~5 s each here).

Why a "medium" phantom instead of the ``small`` preset: on ``small`` the knee is shrunk to 0.42 of
adult size, so the plates are only a few mm across and the plate rims (where the research
definition itself gives partial thickness: rays through the smoothed rim) carry 20-30 % of the
vertices; its thickness means are 0.1-0.4 mm low whatever the method's care. The medium phantom
is an adult-size knee (scale 1.0) on a field of view cropped to the joint (84 mm cube) with
clinical-like anisotropic voxels (0.6 x 0.6 x 0.8 mm and 0.55 x 0.65 x 0.85 mm), 2 M voxels.
"""

from __future__ import annotations

import pytest

from pipeline.phantom import Phantom, make_phantom
from tests.pipeline.segment.conftest import tiny_model  # noqa: F401  (the tiny nnU-Net model fixture)

#: Distinct known thickness per region (mm), neighbours deliberately different.
THICKNESS = {
    "ant_fem_cart": 2.2,
    "med_wb_fem_cart": 1.7,
    "lat_wb_fem_cart": 1.3,
    "med_post_fem_cart": 1.5,
    "lat_post_fem_cart": 1.9,
    "med_tib_cart": 2.4,
    "lat_tib_cart": 1.6,
    "pat_cart": 2.8,
}
FOV_MM = 84.0
#: (seed, side, orientation, spacing (along a row, along a column, between slices))
MEDIUM_CASES = [
    (11, "left", "sagittal", (0.6, 0.6, 0.8)),
    (12, "right", "coronal", (0.6, 0.6, 0.8)),
    (13, "left", "axial", (0.55, 0.65, 0.85)),
]


def medium_phantom(seed: int, side: str, orientation: str, spacing: tuple[float, float, float]) -> Phantom:
    """An adult-size knee on an 84 mm field of view with the given voxel spacing."""
    shape = tuple(round(FOV_MM / s) for s in spacing)
    return make_phantom(seed, "small", side=side, orientation=orientation, spacing=spacing,
                        shape=shape, scale=1.0, thickness=THICKNESS)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def medium_phantoms() -> list[Phantom]:
    """The three medium phantoms (both sides, three orientations, anisotropic voxels)."""
    return [medium_phantom(*case) for case in MEDIUM_CASES]
