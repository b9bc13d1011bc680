"""The encode stage as one call: configured objects, one study, distinct series, files on disk."""

from __future__ import annotations

import pydicom
import pytest

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import EncodeSettings, Settings
from pipeline.encode import encode_results, write_results


def test_all_objects_written_in_one_study(series, labels, results, card, tmp_path):
    opts = EncodeSettings(series_number_base=7000, description_prefix="KN")
    encoded = encode_results(
        source=series, labels=labels, results=results, model=card, options=opts
    )
    paths = write_results(encoded, tmp_path / "out")
    assert len(paths) == 3 + len(series)
    read = [pydicom.dcmread(p) for p in paths]
    assert {d.StudyInstanceUID for d in read} == {series[0].StudyInstanceUID}
    numbers = {d.Modality: int(d.SeriesNumber) for d in read}
    assert numbers == {"SEG": 7001, "SR": 7002, "MR": 7003, "DOC": 7004}
    assert len({d.SeriesInstanceUID for d in read}) == 4
    assert all(d.SeriesDescription.startswith("KN ") for d in read)
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_configurable_objects(series, labels, results, card):
    opts = EncodeSettings(sr=False, overlay=False, pdf=False)
    encoded = encode_results(
        source=series, labels=labels, results=results, model=card, options=opts
    )
    assert [k for k, _ in encoded.instances()] == ["seg"]
    with pytest.raises(NodeError) as err:
        encode_results(
            source=series,
            labels=labels,
            results=results,
            model=card,
            options=EncodeSettings(seg=False),
        )
    assert err.value.code == ErrorCode.CONFIG_ERROR


def test_settings_section_validates():
    assert Settings().encode.seg_keep_empty_frames is True
    with pytest.raises(ValueError):
        EncodeSettings(uid_prefix="1.2.x.")
    with pytest.raises(ValueError):
        EncodeSettings(unknown=True)
