"""Phantom: determinism, truth against its own label map, geometry of sides and orientations,
valid DICOM (dciodvfy), qDESS echoes whose T2 the analytic formula recovers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from pipeline.phantom import ImagingParams, make_phantom, write_phantom
from pipeline.phantom import geometry as g
from pipeline.phantom.pose import orientation_direction
from pipeline.phantom.truth import integrate_volumes, labels_from_material

BONES = ("femur_ml", "tibia_ml", "patella_ml")
MENISCI = ("med_men_ml", "lat_men_ml")


def _centroid_lps(ph, label: int) -> np.ndarray:
    kji = np.argwhere(ph.labels == label).astype(np.float64)
    return ph.grid.index_to_lps(kji[:, ::-1]).mean(axis=0)


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a = make_phantom(7, "small", orientation="oblique", qdess=True)
    b = make_phantom(7, "small", orientation="oblique", qdess=True)
    c = make_phantom(8, "small", orientation="oblique", qdess=True)
    assert np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(x, y) for x, y in zip(a.echoes, b.echoes, strict=True))
    assert a.truth == b.truth
    assert not np.array_equal(a.labels, c.labels)
    assert a.truth["thickness_mm"] != c.truth["thickness_mm"]


@pytest.mark.parametrize(("seed", "orientation"), [(0, "sagittal"), (1, "coronal"), (2, "axial"),
                                                   (3, "oblique")])
def test_label_map_volumes_match_analytic_volumes(seed: int, orientation: str) -> None:
    ph = make_phantom(seed, "small", orientation=orientation)
    analytic, counted = ph.truth["volumes_ml"], ph.truth["label_volumes_ml"]
    for key, v in analytic.items():
        assert v > 0, key
        tol = 0.01 if key in BONES else 0.12 if key in MENISCI else 0.05
        assert abs(counted[key] - v) <= tol * v, (key, counted[key], v)


def test_volume_integration_converges() -> None:
    ph = make_phantom(11, "small", orientation="oblique")
    to_local = ph.pose.grid_to_local(ph.grid)

    def label_at(ijk: np.ndarray) -> np.ndarray:
        local = (ijk @ to_local[0].T + to_local[1]).astype(np.float32)
        return labels_from_material(g.classify(ph.anatomy, local).material)

    fine = integrate_volumes(ph.labels, ph.grid, label_at, sub=5)
    for lab, key in enumerate(ph.truth["volumes_ml"], start=1):
        assert abs(fine[lab] / 1000 - ph.truth["volumes_ml"][key]) <= 0.01 * fine[lab] / 1000, key


def _ray_inside(anatomy: g.Anatomy, start: np.ndarray, direction: np.ndarray, codes: set[int],
                length: float = 6.0, step: float = 0.002) -> float:
    """Length (mm) of the ray start + s * direction, 0 <= s <= length, inside materials ``codes``."""
    s = np.arange(0.0, length, step) + step / 2
    pts = start[None, :] + s[:, None] * direction[None, :]
    mat = g.classify(anatomy, pts.astype(np.float32)).material
    return float(np.isin(mat, list(codes)).sum() * step)


def test_thickness_truth_along_bone_normals() -> None:
    """A ray along the bone-surface normal crosses exactly the configured thickness."""
    thickness = {"ant_fem_cart": 2.1, "med_wb_fem_cart": 1.9, "lat_wb_fem_cart": 1.4,
                 "med_post_fem_cart": 1.3, "lat_post_fem_cart": 1.6, "med_tib_cart": 2.0,
                 "lat_tib_cart": 2.4, "pat_cart": 2.7}
    ph = make_phantom(5, "small", thickness=thickness)
    a = ph.anatomy
    assert ph.truth["thickness_mm"]["lat_tib_cart_mm_mean"] == 2.4
    fem = {g.ANT_FEM, g.MED_WB_FEM, g.LAT_WB_FEM, g.MED_POST_FEM, g.LAT_POST_FEM}
    cases = [  # (region, sign of m, polar angle on the condyle in degrees)
        ("med_wb_fem_cart", 1, 0.0), ("lat_wb_fem_cart", -1, 10.0), ("med_post_fem_cart", 1, -60.0),
        ("lat_post_fem_cart", -1, -90.0), ("ant_fem_cart", 1, 70.0),
    ]
    for region, sign, deg in cases:
        n = np.array([0.0, math.sin(math.radians(deg)), -math.cos(math.radians(deg))])
        start = np.array([sign * a.condyle_m, 0.0, 0.0]) + (a.condyle_r - 0.5) * n
        got = _ray_inside(a, start, n, fem)
        assert abs(got - thickness[region]) < 0.01, (region, got)
    up = np.array([0.0, 0.0, 1.0])
    for region, sign in (("med_tib_cart", 1), ("lat_tib_cart", -1)):
        start = np.array([sign * a.condyle_m, a.plateau_ap, a.plateau_top - 0.5])
        code = g.MED_TIB_CART if sign > 0 else g.LAT_TIB_CART
        assert abs(_ray_inside(a, start, up, {code}) - thickness[region]) < 0.01, region
    start = np.array([0.0, a.patella_c[0] - a.patella_half[1] + 0.5, a.patella_c[1]])
    got = _ray_inside(a, start, np.array([0.0, -1.0, 0.0]), {g.PAT_CART})
    assert abs(got - thickness["pat_cart"]) < 0.01
    # flat plates (tibial, patellar): volume = ellipse area x thickness, for the continuous
    # anatomy (exact) and for the label map (voxelised)
    am, aap = a.tib_cart_axes
    ph_half, pr = a.patella_half, a.patella_round
    plates = {"med_tib_cart": math.pi * am * aap, "lat_tib_cart": math.pi * am * aap,
              "pat_cart": math.pi * (ph_half[0] - pr) * (ph_half[2] - pr)}
    for region, area in plates.items():
        want_ml = area * thickness[region] / 1000
        assert abs(ph.truth["volumes_ml"][f"{region}_ml"] - want_ml) < 0.005 * want_ml, region
        assert abs(ph.truth["label_volumes_ml"][f"{region}_ml"] - want_ml) < 0.05 * want_ml, region
    # every region is present in the subregion truth map
    for code in (*fem, g.MED_TIB_CART, g.LAT_TIB_CART, g.PAT_CART):
        assert (ph.subregions == code).sum() > 10, code


def test_subregions_follow_the_research_plane_rule() -> None:
    """The research pipeline's rule (notch roof plane, 0.6 distance fraction, notch-centre ML
    split) applied to the cartilage voxels reproduces the truth subregions up to thin slivers."""
    a = g.build_anatomy(0.5, g.DEFAULT_THICKNESS_MM)
    h = 0.25
    axes = [np.arange(-20, 20, h), np.arange(-14, 14, h), np.arange(-14, 16, h)]
    mm, aa, ss = np.meshgrid(*axes, indexing="ij")
    q = np.stack([mm.ravel(), aa.ravel(), ss.ravel()], axis=1).astype(np.float32)
    mat = g.classify(a, q).material.reshape(mm.shape)
    fem = (mat >= g.ANT_FEM) & (mat <= g.LAT_POST_FEM)
    strips = fem.any(axis=2)  # (m, ap)
    amin = np.array([axes[1][np.flatnonzero(col)].min() if col.any() else -np.inf for col in strips])
    central = np.abs(axes[0]) < a.condyle_m  # search the notch between the condyle centres
    a_ant = amin[central].max()
    a_min = aa[fem].min()
    a_post = a_ant + 0.6 * (a_min - a_ant)
    bounds = g.wb_bounds(a)
    assert abs(a_ant - bounds["anterior_ap_mm"]) <= 1.5 * h
    assert abs(a_post - bounds["posterior_ap_mm"]) <= 1.5 * h
    rule = np.where(aa > a_ant, g.ANT_FEM, np.where(aa > a_post, np.where(mm > 0, g.MED_WB_FEM, g.LAT_WB_FEM),
                                                   np.where(mm > 0, g.MED_POST_FEM, g.LAT_POST_FEM)))
    assert np.mean(rule[fem] != mat[fem]) < 0.03
    for code in (g.ANT_FEM, g.MED_WB_FEM, g.LAT_WB_FEM, g.MED_POST_FEM, g.LAT_POST_FEM):
        mine = mat == code
        assert np.mean(rule[mine] != code) < 0.10, code  # slivers: t / R is large at this scale


@pytest.mark.parametrize("side", ["left", "right"])
def test_side_geometry(side: str) -> None:
    """Right knee: medial tibial cartilage at larger LPS x than lateral; left knee: the reverse."""
    ph = make_phantom(2, "small", side=side, orientation="coronal")
    assert ph.truth["side"] == side
    med, lat = _centroid_lps(ph, 5), _centroid_lps(ph, 6)
    assert (med[0] > lat[0]) == (side == "right")
    # femur above tibia, patella anterior (smaller y in LPS) of the femur
    assert _centroid_lps(ph, 1)[2] > _centroid_lps(ph, 2)[2]
    assert _centroid_lps(ph, 3)[1] < _centroid_lps(ph, 1)[1]


def test_orientation_presets() -> None:
    expect = {"sagittal": ((0, 1, 0), (0, 0, -1)), "coronal": ((1, 0, 0), (0, 0, -1)),
              "axial": ((1, 0, 0), (0, 1, 0))}
    for name, (row, col) in expect.items():
        d = orientation_direction(name)
        assert np.allclose(d[:, 0], row) and np.allclose(d[:, 1], col)
        assert np.allclose(d[:, 2], np.cross(row, col))
    ob = make_phantom(4, "small", orientation="oblique").grid.matrix
    angle = math.degrees(math.acos(abs(ob[:, 2] @ np.array([-1.0, 0, 0]))))
    assert 10 < angle < 30
    assert np.allclose(ob.T @ ob, np.eye(3))


def _dciodvfy(path: Path) -> str:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dicom3tools) is required"
    res = subprocess.run([exe, str(path)], check=False, capture_output=True, text=True, timeout=60)
    return res.stdout + res.stderr


@pytest.mark.parametrize("qdess", [False, True])
def test_written_series_is_valid_dicom(tmp_path: Path, qdess: bool) -> None:
    ph = make_phantom(3, "small", side="left", orientation="oblique", qdess=qdess)
    paths = write_phantom(ph, tmp_path / "out")
    n_slices = ph.grid.size[2]
    assert len(paths.dicom_files) == n_slices * (2 if qdess else 1)
    for f in (paths.dicom_files[0], paths.dicom_files[-1]):
        report = _dciodvfy(f)
        assert "Error" not in report, report
        assert "MRImage" in report
    ds = pydicom.dcmread(paths.dicom_files[-1])
    assert str(ds.PatientName).startswith("PHANTOM^") and ds.PatientID.startswith("KNEENODE-PHANTOM")
    assert ds.PatientIdentityRemoved == "YES" and ds.Laterality == "L" and ds.Modality == "MR"
    assert np.allclose([float(v) for v in ds.ImageOrientationPatient],
                       np.r_[ph.grid.matrix[:, 0], ph.grid.matrix[:, 1]], atol=1e-7)
    again = write_phantom(ph, tmp_path / "again")  # same phantom, same bytes (UIDs included)
    assert paths.dicom_files[-1].read_bytes() == again.dicom_files[-1].read_bytes()
    truth = json.loads(paths.truth_json.read_text())
    assert truth["side"] == "left" and truth["seed"] == 3
    assert set(truth["thickness_mm"]) >= {f"{r}_mm_mean" for r in g.REGION_CODES}
    lab = sitk.ReadImage(str(paths.labels))
    assert np.array_equal(sitk.GetArrayFromImage(lab), ph.labels)
    assert np.allclose(lab.GetDirection(), ph.grid.direction) and np.allclose(lab.GetOrigin(), ph.grid.origin)
    sub = sitk.GetArrayFromImage(sitk.ReadImage(str(paths.subregions)))
    assert set(np.unique(sub)) == {0, 1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15}
    assert (paths.t2_map is not None) == qdess
    if qdess:
        t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(paths.t2_map)))
        assert np.array_equal(t2, ph.t2_map)
    if qdess:
        e1, e2 = (pydicom.dcmread(p) for p in (paths.dicom_files[0], paths.dicom_files[-1]))
        assert (int(e1.EchoNumbers), int(e2.EchoNumbers)) == (1, 2)
        assert float(e2.EchoTime) == pytest.approx(2 * float(e1.RepetitionTime) - float(e1.EchoTime))
        assert float(e1[0x0019, 0x10B6].value) == 3132 and float(e1[0x0019, 0x10B7].value) == 1800
        assert e1.private_block(0x0019, "GEMS_ACQU_01")[0xB6].value == e1[0x0019, 0x10B6].value


def test_qdess_t2_is_recovered_by_the_analytic_formula() -> None:
    clean = make_phantom(6, "small", qdess=True, imaging=ImagingParams(noise_sigma=0, psf_sigma_vox=0))
    e1, e2 = clean.echoes
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = clean.qdess_params.t2_from_ratio(e2 / e1)
    truth = clean.truth["t2_ms"]
    for region, code in g.REGION_CODES.items():
        inside = clean.subregions == code
        assert np.allclose(t2[inside], clean.t2_map[inside], atol=1e-3), region
        assert abs(np.mean(t2[inside]) - truth[f"{region}_t2_ms_mean"]) < 1e-3
        # T2 rises with depth: the superficial half is higher than the deep half
        deep, sup = truth[f"{region}_deep_t2_ms_mean"], truth[f"{region}_superficial_t2_ms_mean"]
        assert 3.0 < sup - deep < 7.0, region
        mid = clean.truth["t2_mid_depth_ms"][region]
        assert abs(truth[f"{region}_t2_ms_median"] - mid) < 1.5, region
    # with the default noise (no blur), region medians stay close
    noisy = make_phantom(6, "small", qdess=True, imaging=ImagingParams(psf_sigma_vox=0))
    e1, e2 = noisy.echoes
    t2 = noisy.qdess_params.t2_from_ratio(e2 / e1)
    for region, code in g.REGION_CODES.items():
        got = np.median(t2[noisy.subregions == code])
        assert abs(got - noisy.truth["t2_ms"][f"{region}_t2_ms_median"]) < 2.0, region


def test_invalid_arguments_are_refused() -> None:
    for kwargs in ({"preset": "huge"}, {"orientation": "diagonal"}, {"side": "middle"},
                   {"thickness": {"menisc_cart": 1.0}}, {"thickness": {"pat_cart": -1.0}},
                   {"t2_ms": {"pat_cart": 0.0}}):
        with pytest.raises(ValueError):
            make_phantom(1, **kwargs)


def test_cli_writes_a_phantom(tmp_path: Path) -> None:
    from kneenode.cli_app import app
    from kneenode.commands import analysis  # noqa: F401  (registers the command)

    out = tmp_path / "ph"
    res = CliRunner().invoke(app, ["phantom", str(out), "--seed", "3", "--side", "right",
                                   "--orientation", "coronal", "--qdess"])
    assert res.exit_code == 0, res.output
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["side"] == "right" and truth["orientation"] == "coronal" and truth["qdess"]
    assert len(list((out / "dicom").glob("*.dcm"))) == 96
    again = CliRunner().invoke(app, ["phantom", str(out)])
    assert again.exit_code != 0
    rle = CliRunner().invoke(app, ["phantom", str(tmp_path / "rle"), "--compression", "rle"])
    assert rle.exit_code == 0, rle.output
    first = min((tmp_path / "rle" / "dicom").glob("*.dcm"))
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"


@pytest.mark.parametrize("qdess", [False, True])
def test_enhanced_mr_object_is_valid_and_reads_back(tmp_path: Path, qdess: bool) -> None:
    """One Enhanced MR object: dciodvfy clean, frames echo-major with their dimension index,
    and the series reader recovers every echo voxel for voxel on the phantom's grid."""
    from pipeline.phantom.dicom_writer import to_stored
    from pipeline.series import read_series

    ph = make_phantom(3, "small", side="left", orientation="oblique", qdess=qdess)
    paths = write_phantom(ph, tmp_path / "out", enhanced=True)
    assert [p.name for p in paths.dicom_files] == ["MF00001.dcm"]
    report = _dciodvfy(paths.dicom_files[0])
    assert "EnhancedMRImage" in report and "Error" not in report and "Warning" not in report, report
    ds = pydicom.dcmread(paths.dicom_files[0])
    n = ph.grid.size[2]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1"
    assert int(ds.NumberOfFrames) == n * (2 if qdess else 1)
    pointers = [int(i.DimensionIndexPointer) for i in ds.DimensionIndexSequence]
    assert pointers == ([0x00189082] if qdess else []) + [0x00209056, 0x00209057]
    frames = ds.PerFrameFunctionalGroupsSequence
    last = frames[-1]
    assert list(last.FrameContentSequence[0].DimensionIndexValues) == (
        [2, 1, n] if qdess else [1, n])
    assert last.MREchoSequence[0].EffectiveEchoTime == pytest.approx(ph.echo_times_ms[-1])
    assert np.allclose([float(v) for v in last.PlanePositionSequence[0].ImagePositionPatient],
                       ph.grid.slice_positions()[-1], atol=1e-5)
    vol = read_series(paths.dicom_dir)
    assert vol.source_format == "dicom-multiframe" and len(vol.echoes) == len(ph.echoes)
    for img, echo in zip(vol.echoes, ph.echoes, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(img), to_stored(echo).astype(np.float32))
    assert np.allclose(vol.image.GetOrigin(), ph.grid.origin, atol=1e-4)
    assert [ref.frame for ref in vol.slices[0]] == list(range(1, n + 1))  # echo 1 first
    if qdess:
        assert vol.acquisition["gl_area"] == 3132.0 and vol.acquisition["repetition_time_ms"] == 20.36
    single = write_phantom(ph, tmp_path / "single")  # its own study: never one series, two classes
    first = pydicom.dcmread(single.dicom_files[0], stop_before_pixels=True)
    assert first.StudyInstanceUID != ds.StudyInstanceUID and first.PatientID == ds.PatientID
    again = write_phantom(ph, tmp_path / "again", enhanced=True)
    assert again.dicom_files[0].read_bytes() == paths.dicom_files[0].read_bytes()


def test_cli_writes_an_enhanced_phantom(tmp_path: Path) -> None:
    from kneenode.cli_app import app
    from kneenode.commands import analysis  # noqa: F401  (registers the command)

    out = tmp_path / "enh"
    res = CliRunner().invoke(app, ["phantom", str(out), "--qdess", "--enhanced",
                                   "--compression", "rle"])
    assert res.exit_code == 0, res.output
    files = list((out / "dicom").glob("*.dcm"))
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5" and int(ds.NumberOfFrames) == 96
    assert ds.pixel_array.shape == (96, 64, 64)
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["files"]["sop_class"] == "enhanced_mr" and truth["files"]["frames"] == 96
