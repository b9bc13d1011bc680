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


def test_the_report_pictures_are_written_beside_the_objects_and_pass_verify(
        series, labels, results, card, tmp_path):
    """Key slices (the PDF's page two) as PNG next to the DICOM kinds; ``verify`` ignores them;
    with the PDF off they are still drawn, with report_images off they are not."""
    import json

    from PIL import Image

    from pipeline.encode.pdf import key_slices
    from pipeline.encode.verify import expected_outputs, verify_outputs

    opts = EncodeSettings(pdf_key_slices=2)
    encoded = encode_results(source=series, labels=labels, results=results, model=card,
                             options=opts)
    out = tmp_path / "out"
    write_results(encoded, out)
    index = json.loads((out / "images" / "images.json").read_text())
    chosen = key_slices(labels, 2)
    assert [i["name"] for i in index] == [f"key-slice-{k + 1:04d}.png" for k in chosen]
    for item in index:
        with Image.open(out / "images" / item["name"]) as png:
            assert png.format == "PNG" and png.mode == "RGB" and max(png.size) >= 256
        assert item["caption"].startswith("Key slice")
    manifest = verify_outputs(out, expected_outputs(opts, len(series)),
                              study_uid=series[0].StudyInstanceUID)
    assert set(manifest) == {"seg", "sr", "overlay", "pdf"}

    no_pdf = encode_results(source=series, labels=labels, results=results, model=card,
                            options=EncodeSettings(pdf=False))
    assert no_pdf.pdf is None and len(no_pdf.images) == len(key_slices(labels, 3))
    none = encode_results(source=series, labels=labels, results=results, model=card,
                          options=EncodeSettings(report_images=False))
    assert none.pdf is not None and none.images == []
