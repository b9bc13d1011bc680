"""Side detection, femur clipping rule, mirroring and similarity ICP."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.phantom import make_phantom
from pipeline.shape.demo_shapes import FemurShape, femur_anatomy, posed_label_map
from pipeline.shape.fit import assd
from pipeline.shape.icp import similarity_icp, similarity_matrix, umeyama
from pipeline.shape.surfaces import (
    Geometry,
    femur_clip_height,
    knee_side,
    mirror_x,
    prepare_surfaces,
)


def _geom(ph) -> Geometry:
    return Geometry(spacing=ph.grid.spacing, origin=ph.grid.origin, direction=ph.grid.direction)


@pytest.mark.parametrize(("side", "orientation"), [("left", "sagittal"), ("right", "coronal"),
                                                   ("left", "oblique")])
def test_knee_side_of_phantoms(side, orientation):
    ph = make_phantom(seed=5, preset="small", side=side, orientation=orientation)
    assert knee_side(ph.labels, _geom(ph)) == side


def test_clip_rule_both_branches():
    assert femur_clip_height(100.0, 80.0) == pytest.approx(56.0)  # long femur: 0.7 x width
    assert femur_clip_height(50.0, 80.0) == pytest.approx(47.5)  # short: 95 % of the height


def test_clipped_femur_height_follows_the_rule():
    labels, geom = posed_label_map(femur_anatomy(FemurShape(), 0.42), side="right",
                                   rotation_deg=(0.0, 0.0, 0.0))
    knee = prepare_surfaces(labels, geom, with_cartilage=True)
    femur = np.argwhere(labels == 1)[:, ::-1]
    pts = geom.to_lps(femur)
    width = np.ptp(pts[:, 0])
    assert np.ptp(pts[:, 2]) > 0.7 * width  # the grid shows more shaft than the rule keeps
    assert knee.clip_z_mm == pytest.approx(pts[:, 2].min() + 0.7 * width)
    assert knee.bone.vertices[:, 2].max() <= knee.clip_z_mm + 1.0  # smoothing adds < 1 voxel


def test_left_knee_mirrored_matches_right_knee():
    anatomy = femur_anatomy(FemurShape(oa=0.3), 0.42)
    rot = (6.0, 0.0, 0.0)  # about x: commutes with the x mirror
    right = prepare_surfaces(*posed_label_map(anatomy, side="right", rotation_deg=rot), with_cartilage=True)
    left = prepare_surfaces(*posed_label_map(anatomy, side="left", rotation_deg=rot), with_cartilage=True)
    assert (left.side, left.mirrored, right.mirrored) == ("left", True, False)
    mirrored = mirror_x(left.bone.vertices, left.mirror_centre_x)
    shift = right.bone.vertices.mean(axis=0) - mirrored.mean(axis=0)
    assert assd(mirrored + shift, right.bone.vertices) < 0.3
    # without the mirror the two femurs do not match
    raw_shift = right.bone.vertices.mean(axis=0) - left.bone.vertices.mean(axis=0)
    assert assd(left.bone.vertices + raw_shift, right.bone.vertices) > 0.5  # measured 0.74


def _rotation(deg):
    from pipeline.phantom.pose import rotation_xyz

    return rotation_xyz(deg)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(200, 3))
    m = similarity_matrix(1.7, _rotation((20.0, -35.0, 50.0)), np.array([3.0, -1.0, 2.0]))
    dst = src @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(umeyama(src, dst), m, atol=1e-10)


def test_similarity_icp_registers_a_femur_surface():
    labels, geom = posed_label_map(femur_anatomy(FemurShape(), 0.42), side="right",
                                   rotation_deg=(0.0, 0.0, 0.0))
    target = prepare_surfaces(labels, geom, with_cartilage=False).bone.vertices
    m = similarity_matrix(0.05, _rotation((8.0, -6.0, 10.0)), np.array([0.3, -0.2, 0.1]))
    source = target @ m[:3, :3].T + m[:3, 3]  # the femur moved, turned and scaled to ~1 unit
    reg = similarity_icp(source, target, iterations=100, landmarks=1000)
    residual = reg.matrix @ m  # identity when the registration undoes the motion
    angle = np.degrees(np.arccos(np.clip((np.trace(residual[:3, :3] / reg.scale / 0.05) - 1) / 2, -1, 1)))
    assert angle < 0.5
    assert np.linalg.norm(residual[:3, 3]) < 0.1  # mm
    assert reg.scale == pytest.approx(20.0, rel=2e-3)
    # one-way correspondences alone stall a few degrees off about the condyle axis
    assert reg.rms < 0.7  # mm: nearest-vertex spacing of a 0.7 mm voxel mesh


def test_subregion_labels_and_missing_side_labels():
    labels, geom = posed_label_map(femur_anatomy(FemurShape(), 0.42), side="left",
                                   rotation_deg=(3.0, 2.0, -4.0))
    plain = prepare_surfaces(labels, geom, with_cartilage=True)
    split = labels.copy()
    split[(labels == 4) & (np.indices(labels.shape)[2] % 2 == 0)] = 12  # some voxels as subregion
    np.testing.assert_array_equal(prepare_surfaces(split, geom, with_cartilage=True).cartilage.vertices,
                                  plain.cartilage.vertices)
    no_tibial = np.where(np.isin(labels, (5, 6)), 0, labels)
    with pytest.raises(ValueError, match="knee side"):
        prepare_surfaces(no_tibial, geom, with_cartilage=True)
    assert prepare_surfaces(no_tibial, geom, with_cartilage=True, side="left").mirrored
