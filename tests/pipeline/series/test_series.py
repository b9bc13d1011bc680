"""Series reader: geometry equals the phantom truth; every broken series gets its precise reason;
multi-frame, compressed, NIfTI and NRRD inputs; exact reorientation round trips."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import ReaderSettings
from pipeline.phantom import grid_image, make_phantom, write_phantom
from pipeline.phantom.dicom_writer import to_stored
from pipeline.series import orientation_code, read_series, reorient


def _assert_geometry(img: sitk.Image, ph) -> None:
    assert img.GetSize() == ph.grid.size
    assert np.allclose(img.GetOrigin(), ph.grid.origin, atol=1e-5)
    assert np.allclose(img.GetSpacing(), ph.grid.spacing, atol=1e-6)
    assert np.allclose(img.GetDirection(), ph.grid.direction, atol=1e-7)


@pytest.fixture(scope="module")
def qdess_series(tmp_path_factory: pytest.TempPathFactory):
    ph = make_phantom(21, "small", orientation="sagittal", qdess=True, side="right")
    out = tmp_path_factory.mktemp("qdess")
    return ph, write_phantom(ph, out).dicom_dir


@pytest.fixture(scope="module")
def plain_series(tmp_path_factory: pytest.TempPathFactory):
    ph = make_phantom(22, "small", orientation="coronal", side="left")
    out = tmp_path_factory.mktemp("plain")
    return ph, write_phantom(ph, out).dicom_dir


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "series"
    shutil.copytree(src, dst)
    return dst


def _reason(folder: Path | list[Path], code: ErrorCode = ErrorCode.INVALID_FORMAT, **kw) -> str:
    with pytest.raises(NodeError) as info:
        read_series(folder, **kw)
    assert info.value.code == code, info.value
    return info.value.message


@pytest.mark.parametrize("orientation", ["sagittal", "coronal", "axial", "oblique"])
def test_geometry_equals_phantom_truth(tmp_path: Path, orientation: str) -> None:
    ph = make_phantom(30, "small", orientation=orientation)
    folder = write_phantom(ph, tmp_path).dicom_dir
    # file names and order must not matter: shuffle them
    rng = np.random.default_rng(0)
    for f in sorted(folder.iterdir()):
        f.rename(folder / f"x{rng.integers(1e9)}.dcm")
    vol = read_series(folder)
    _assert_geometry(vol.image, ph)
    assert vol.echo_times_ms == (ph.qdess_params.te_ms,) and not vol.is_multi_echo
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), to_stored(ph.image).astype(np.float32))
    # the slice references follow the volume order
    positions = [pydicom.dcmread(r.path, stop_before_pixels=True).ImagePositionPatient
                 for r in vol.slices[0]]
    assert np.allclose(np.array(positions, dtype=float), ph.grid.slice_positions(), atol=1e-5)
    assert vol.series_instance_uid and vol.study_instance_uid and vol.frame_of_reference_uid
    assert vol.header is not None and "PixelData" not in vol.header
    # labels on the reader's grid line up with the truth (same grid => same physical voxels)
    labels = grid_image(ph.labels, ph.grid)
    assert np.allclose(labels.GetDirection(), vol.image.GetDirection(), atol=1e-7)


def test_anisotropic_non_square_grid(tmp_path: Path) -> None:
    """Rows != columns and three different spacings: catches any swap of i/j or of PixelSpacing."""
    ph = make_phantom(31, "small", orientation="oblique", spacing=(0.6, 0.8, 1.1), shape=(72, 56, 40))
    vol = read_series(write_phantom(ph, tmp_path).dicom_dir)
    _assert_geometry(vol.image, ph)
    assert vol.image.GetSize() == (72, 56, 40)
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), to_stored(ph.image).astype(np.float32))
    ds = pydicom.dcmread(vol.slices[0][0].path)
    assert (ds.Rows, ds.Columns) == (56, 72) and [float(v) for v in ds.PixelSpacing] == [0.8, 0.6]


def test_qdess_echoes_grouped_by_echo_time(qdess_series) -> None:
    ph, folder = qdess_series
    vol = read_series(folder)
    assert vol.is_multi_echo and vol.echo_times_ms == (6.428, 34.292)
    for img, echo in zip(vol.echoes, ph.echoes, strict=True):
        _assert_geometry(img, ph)
        assert np.array_equal(sitk.GetArrayFromImage(img), to_stored(echo).astype(np.float32))
    e1, e2 = (sitk.GetArrayFromImage(e) for e in vol.echoes)
    assert np.allclose(sitk.GetArrayFromImage(vol.image), np.sqrt(e1**2 + e2**2))
    acq = vol.acquisition
    assert acq["repetition_time_ms"] == 20.36 and acq["flip_angle_deg"] == 20.0
    assert acq["gl_area"] == 3132.0 and acq["tg_us"] == 1800.0
    assert len(vol.slices) == 2 and len(vol.source_sop_instance_uids) == ph.grid.size[2]
    assert set(vol.slices[0]).isdisjoint(vol.slices[1])


def test_echoes_with_one_echo_time_split_by_echo_numbers(qdess_series, tmp_path: Path) -> None:
    ph, src = qdess_series
    folder = _copy(src, tmp_path)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.EchoTime = "6.428"  # both echoes labelled with the first echo time
        ds.save_as(f)
    vol = read_series(folder)
    assert vol.echo_times_ms == (6.428, 6.428)
    for img, echo in zip(vol.echoes, ph.echoes, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(img), to_stored(echo).astype(np.float32))


def test_header_keeps_large_values_without_the_file(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path)
    for f in _files(folder):
        ds = pydicom.dcmread(f)
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", b"x" * 20000)
        ds.save_as(f)
    vol = read_series(folder)
    shutil.rmtree(folder)  # the header must not read the (deferred) value from disk any more
    assert vol.header is not None
    assert vol.header.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value == b"x" * 20000
    assert vol.header.PatientID.startswith("KNEENODE-PHANTOM")


def test_spacing_between_slices_is_ignored(plain_series, tmp_path: Path) -> None:
    ph, src = plain_series
    folder = _copy(src, tmp_path)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.SpacingBetweenSlices = "5.0"
        ds.SliceThickness = "3.0"
        ds.save_as(f)
    _assert_geometry(read_series(folder).image, ph)


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def test_missing_slice(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path)
    _files(folder)[20].unlink()
    _files(folder)[20].unlink()  # two adjacent slices gone
    msg = _reason(folder)
    assert msg.startswith("missing slices") and "2 slice(s) missing" in msg


def test_duplicate_slice(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path)
    ds = pydicom.dcmread(_files(folder)[10])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "dup.dcm")
    assert _reason(folder).startswith("duplicate slice position")
    # an exact copy of an instance (same SOP Instance UID) is harmless
    folder2 = _copy(plain_series[1], tmp_path / "b")
    shutil.copy(_files(folder2)[10], folder2 / "copy.dcm")
    _assert_geometry(read_series(folder2).image, plain_series[0])


def _edit(folder: Path, index: int, **changes) -> None:
    f = _files(folder)[index]
    ds = pydicom.dcmread(f)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(f)


def test_uneven_spacing(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path)
    ds = pydicom.dcmread(_files(folder)[30])
    normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
    pos = np.array(ds.ImagePositionPatient, float) + 0.3 * normal
    _edit(folder, 30, ImagePositionPatient=[f"{v:.6f}" for v in pos])
    assert _reason(folder).startswith("uneven slice spacing")


def test_slices_off_the_normal(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path)
    ds = pydicom.dcmread(_files(folder)[5])
    row = np.array(ds.ImageOrientationPatient[:3], float)
    pos = np.array(ds.ImagePositionPatient, float) + 2.0 * row
    _edit(folder, 5, ImagePositionPatient=[f"{v:.6f}" for v in pos])
    assert _reason(folder).startswith("slices are not stacked along their normal")


def test_mixed_orientations(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path)
    _edit(folder, 7, ImageOrientationPatient=["0", "1", "0", "0", "0", "-1"])
    assert _reason(folder).startswith("mixed orientations: 2 distinct")


def test_two_d_and_too_small_inputs(plain_series, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(_files(plain_series[1])[0], one / "a.dcm")
    assert _reason(one).startswith("2-D input")
    few = tmp_path / "few"
    few.mkdir()
    for f in _files(plain_series[1])[:4]:
        shutil.copy(f, few / f.name)
    assert _reason(few).startswith("too few slices: 4")
    assert _reason(plain_series[1], limits=ReaderSettings(min_matrix=128)).startswith("image too small")


def test_file_list_and_json_sidecars(plain_series, tmp_path: Path) -> None:
    ph, src = plain_series
    files = _files(src)
    _assert_geometry(read_series(files).image, ph)
    assert "missing" in _reason([*files, tmp_path / "gone.dcm"], ErrorCode.FILE_NOT_FOUND)
    folder = _copy(src, tmp_path)
    (folder / "series.json").write_text("{}")  # a spool record next to the instances
    _assert_geometry(read_series(folder).image, ph)


def test_other_failures(plain_series, qdess_series, tmp_path: Path) -> None:
    assert "does not exist" in _reason(tmp_path / "nope", ErrorCode.FILE_NOT_FOUND)
    folder = _copy(plain_series[1], tmp_path)
    (folder / "notes.txt").write_text("not dicom")
    assert "notes.txt is not a readable DICOM file" in _reason(folder, ErrorCode.DICOM_ERROR)
    mixed = _copy(plain_series[1], tmp_path / "m")
    shutil.copy(_files(qdess_series[1])[0], mixed / "other.dcm")
    assert _reason(mixed).startswith("the folder holds 2 series")
    echoes = _copy(qdess_series[1], tmp_path / "e")
    _files(echoes)[-1].unlink()  # last slice of echo 2 only
    assert _reason(echoes).startswith("echo groups differ: 48 slices")
    sized = _copy(plain_series[1], tmp_path / "s")
    ds = pydicom.dcmread(_files(sized)[3])
    ds.Rows, ds.Columns = 32, 128
    ds.save_as(_files(sized)[3])
    assert _reason(sized).startswith("mixed matrix sizes")


def test_more_header_inconsistencies(plain_series, tmp_path: Path) -> None:
    folder = _copy(plain_series[1], tmp_path / "a")
    _edit(folder, 4, PixelSpacing=["0.5", "0.5"])
    assert _reason(folder).startswith("mixed pixel spacings")
    folder = _copy(plain_series[1], tmp_path / "b")
    for f in _files(folder):
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = ["1", "0", "0", "0.5", "0.5", "0"]
        ds.save_as(f)
    assert "is not two orthonormal vectors" in _reason(folder)
    folder = _copy(plain_series[1], tmp_path / "c")
    ds = pydicom.dcmread(_files(folder)[9])
    del ds.EchoTime
    ds.save_as(_files(folder)[9])
    assert _reason(folder) == "some frames have an EchoTime and others have none"
    folder = _copy(plain_series[1], tmp_path / "d")
    ds = pydicom.dcmread(_files(folder)[2])
    del ds.ImagePositionPatient
    ds.save_as(_files(folder)[2])
    assert "ImagePositionPatient is missing or malformed" in _reason(folder)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    ph = make_phantom(23, "small", orientation="axial")
    folder = write_phantom(ph, tmp_path, transfer_syntax=syntax).dicom_dir
    assert pydicom.dcmread(_files(folder)[0]).file_meta.TransferSyntaxUID == syntax
    report = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", str(_files(folder)[0])],
                            check=False, capture_output=True, text=True, timeout=60)
    assert "Error" not in report.stdout + report.stderr and "MRImage" in report.stderr + report.stdout
    vol = read_series(folder)
    _assert_geometry(vol.image, ph)
    for img, echo in zip(vol.echoes, ph.echoes, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(img), to_stored(echo).astype(np.float32))


@pytest.mark.parametrize("qdess", [False, True])
def test_multiframe_enhanced_mr(tmp_path: Path, qdess: bool) -> None:
    ph = make_phantom(24, "small", orientation="oblique", qdess=qdess)
    files = write_phantom(ph, tmp_path / "src").dicom_files
    legacy = [pydicom.dcmread(f) for f in files]
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1)
    out = tmp_path / "mf"
    out.mkdir()
    mf.save_as(out / "multiframe.dcm")
    for target in (out, out / "multiframe.dcm"):  # a folder or the file itself
        vol = read_series(target)
        assert vol.source_format == "dicom-multiframe"
        _assert_geometry(vol.image, ph)
        assert len(vol.echoes) == (2 if qdess else 1)
        for img, echo in zip(vol.echoes, ph.echoes, strict=True):
            assert np.array_equal(sitk.GetArrayFromImage(img), to_stored(echo).astype(np.float32))
        assert all(ref.frame is not None for ref in vol.slices[0])
        if qdess:
            assert vol.acquisition["gl_area"] == 3132.0 and vol.acquisition["repetition_time_ms"] == 20.36


def _as_enhanced_mr(mf: Dataset) -> Dataset:
    """Move the legacy-converted attributes to where a true Enhanced MR object keeps them."""
    mf.SOPClassUID = mf.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    shared = mf.SharedFunctionalGroupsSequence[0]
    unassigned = shared.UnassignedSharedConvertedAttributesSequence[0]
    timing = Dataset()
    timing.RepetitionTime, timing.FlipAngle = unassigned.RepetitionTime, unassigned.FlipAngle
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    del unassigned.RepetitionTime, unassigned.FlipAngle
    for item in mf.PerFrameFunctionalGroupsSequence:
        per = item.UnassignedPerFrameConvertedAttributesSequence[0]
        echo = Dataset()
        echo.EffectiveEchoTime = per.EchoTime
        item.MREchoSequence = Sequence([echo])
        del per.EchoTime
    return mf


def test_true_enhanced_mr_functional_groups(tmp_path: Path) -> None:
    ph = make_phantom(27, "small", orientation="coronal", qdess=True)
    legacy = [pydicom.dcmread(f) for f in write_phantom(ph, tmp_path / "src").dicom_files]
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=3,
        sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path / "enhanced.dcm"
    _as_enhanced_mr(mf).save_as(path)
    vol = read_series(path)
    assert vol.sop_class_uid == EnhancedMRImageStorage and vol.echo_times_ms == (6.428, 34.292)
    assert vol.acquisition["repetition_time_ms"] == 20.36 and vol.acquisition["flip_angle_deg"] == 20
    _assert_geometry(vol.image, ph)


def test_rescale_slope_and_intercept_are_applied(plain_series, tmp_path: Path) -> None:
    ph, src = plain_series
    folder = _copy(src, tmp_path)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-10"
        ds.save_as(f)
    got = sitk.GetArrayFromImage(read_series(folder).image)
    assert np.array_equal(got, to_stored(ph.image).astype(np.float32) * 2 - 10)


def test_nifti_and_nrrd_inputs(tmp_path: Path) -> None:
    ph = make_phantom(25, "small", orientation="oblique")
    img = grid_image(ph.image, ph.grid)
    for name in ("vol.nii.gz", "vol.nrrd"):
        sitk.WriteImage(img, str(tmp_path / name))
        vol = read_series(tmp_path / name)
        assert vol.source_format in {"nifti", "nrrd"} and vol.echo_times_ms == (None,)
        _assert_geometry(vol.image, ph)
        assert np.allclose(sitk.GetArrayFromImage(vol.image), ph.image, atol=1e-3)
    flat = sitk.GetImageFromArray(np.zeros((1, 64, 64), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    assert _reason(tmp_path / "flat.nii.gz").startswith("2-D input")
    four = sitk.JoinSeries([img, img])
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    assert _reason(tmp_path / "four.nii.gz").startswith("4-D input")


@pytest.mark.parametrize("orientation", ["sagittal", "coronal", "axial", "oblique"])
def test_reorientation_round_trip_is_exact(orientation: str) -> None:
    ph = make_phantom(26, "small", orientation=orientation)
    src = grid_image(ph.image, ph.grid)  # the reader's geometry is tested above
    labels = grid_image(ph.labels, ph.grid)
    reference = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    reference.SetDirection(tuple(np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float).reshape(-1)))
    for target in ("LPS", "RAS", "PIL", "ASR", reference):
        moved, plan = reorient(src, target)
        want = target if isinstance(target, str) else orientation_code(reference.GetDirection())
        assert orientation_code(moved.GetDirection()) == want
        # same physical voxels: a few voxels map to the same point with the same value
        rng = np.random.default_rng(1)
        for _ in range(5):
            idx = [int(rng.integers(n)) for n in moved.GetSize()]
            pt = moved.TransformIndexToPhysicalPoint(idx)
            back_idx = src.TransformPhysicalPointToIndex(pt)
            assert np.allclose(src.TransformIndexToPhysicalPoint(back_idx), pt, atol=1e-6)
            assert moved[idx] == src[back_idx]
        # round trip of the image and of a label map predicted in model orientation: exact
        back = plan.undo(moved)
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src))
        assert back.GetOrigin() == src.GetOrigin() and back.GetDirection() == src.GetDirection()
        assert back.GetSpacing() == src.GetSpacing()
        lab_model = plan.apply(labels)
        assert np.array_equal(sitk.GetArrayFromImage(plan.undo(lab_model)), ph.labels)
        arr = plan.to_target_array(ph.labels)
        assert np.array_equal(plan.to_source_array(arr), ph.labels)
