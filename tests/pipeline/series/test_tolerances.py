"""Reader tolerances: what real scanners write is read (with a warning when resampled), a real
missing slice is refused with its position; the SCP summary draws the same line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import ReaderSettings
from pipeline.series import read_series
from scp.summary import summarize_series
from tests.support.mr import SCANNER_SLICES as SLICES
from tests.support.mr import SCANNER_SPACING as SPACING
from tests.support.mr import mr_series, oblique_plane, scanner_like_series


def test_rounded_jittered_oblique_series_is_read_with_a_warning(tmp_path: Path) -> None:
    written = scanner_like_series(tmp_path / "s")
    _, _, normal = oblique_plane()
    # what the old reader refused: in-plane drift far above 1 % of the 0.5 mm pixel spacing
    positions = [np.array(pydicom.dcmread(p).ImagePositionPatient, float)
                 for p in sorted((tmp_path / "s").glob("*.dcm"))]
    first = positions[0]
    inplane = [np.linalg.norm((p - first) - ((p - first) @ normal) * normal) for p in positions]
    assert max(inplane) > 0.03
    vol = read_series(tmp_path / "s")
    assert len(vol.warnings) == 1 and vol.warnings[0].startswith("non-uniform slice spacing")
    assert "resampled onto a uniform" in vol.warnings[0]
    step = (written[-1] - written[0]) / (SLICES - 1)
    assert vol.image.GetSize()[2] == SLICES
    assert vol.image.GetSpacing()[2] == pytest.approx(step, abs=1e-9)
    assert abs(step - SPACING) < 0.005
    # linear resampling along the normal: slice k holds 100 x its uniform-grid distance
    arr = sitk.GetArrayFromImage(vol.image)
    expected = 100 * step * np.arange(SLICES) + 100
    assert np.abs(arr[:, 5, 5] - expected).max() < 0.6  # the written values are whole numbers
    assert np.ptp(arr, axis=(1, 2)).max() == 0  # every slice stays flat: no in-plane mixing
    # the written positions really are off a uniform grid (else the test proves nothing)
    off = np.abs((written - written[0]) - step * np.arange(SLICES)).max()
    assert off > ReaderSettings().uniform_tolerance_mm
    # without the rounding allowance the same series is refused as before
    with pytest.raises(NodeError) as info:
        read_series(tmp_path / "s", limits=ReaderSettings(position_precision_mm=0))
    assert info.value.message.startswith("slices are not stacked along their normal")
    summary = summarize_series(tmp_path / "s")["geometry"]
    assert summary["consistent"] and summary["slices"] == SLICES


def test_same_series_with_one_slice_removed_is_refused_with_the_gap(tmp_path: Path) -> None:
    written = scanner_like_series(tmp_path / "s", drop=17)
    with pytest.raises(NodeError) as info:
        read_series(tmp_path / "s")
    msg = info.value.message
    assert info.value.code == ErrorCode.INVALID_FORMAT
    assert msg.startswith("missing slices: gap of ") and "(1 slice(s) missing)" in msg
    assert f"between {written[16]:.3f} and {written[17]:.3f} mm along the normal" in msg
    assert "after slice 17 of 39" in msg
    median = float(np.median(np.diff(written)))
    assert f"gap of {written[17] - written[16]:.3f} mm" in msg and f"expected {median:.3f} mm" in msg
    summary = summarize_series(tmp_path / "s")["geometry"]
    assert not summary["consistent"] and summary["reason"].startswith("uneven slice spacing")


def test_uniform_series_is_read_as_is(tmp_path: Path) -> None:
    """Positions on a uniform grid: no resampling, no warning, pixels untouched."""
    mr_series(tmp_path / "s", slices=12)
    vol = read_series(tmp_path / "s")
    assert vol.warnings == ()
    ds = pydicom.dcmread(vol.slices[0][3].path)
    assert np.array_equal(sitk.GetArrayFromImage(vol.image)[3], ds.pixel_array.astype(np.float32))


def test_gap_tolerance_scales_with_spacing_and_stays_below_half() -> None:
    limits = ReaderSettings()
    assert limits.gap_tolerance_mm(0.7) == pytest.approx(3 ** 0.5 * 0.1)  # rounding dominates
    assert limits.gap_tolerance_mm(4.0) == pytest.approx(0.4)  # 10 % of the spacing
    assert limits.gap_tolerance_mm(0.3) == pytest.approx(0.12)  # never half the spacing
