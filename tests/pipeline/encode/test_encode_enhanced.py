"""The encoders on Enhanced MR (multi-frame) phantoms: single echo and two-echo qDESS in one object.

The phantom is written twice, as one Enhanced MR object and as classic single-frame files (same
pixels and geometry); the Enhanced one is read by the series reader and encoded as the node's
``encode`` stage does (slice paths and frame numbers of ``volume.json``). Every object must pass
dciodvfy, reference the frames of the echo the volume was built from, and carry the same content
as the classic encoding: SEG voxel-exact against the label map (rebuilt through its frame
references), SR values, overlay pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedMRImageStorage

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import EncodeSettings
from pipeline.encode import encode_results, read_sr_measurements, segment_numbers, write_results
from pipeline.encode.common import load_source
from pipeline.encode.sr_viewer import outlines_by_key
from pipeline.phantom import make_phantom, write_phantom
from pipeline.series import read_series
from tests.pipeline.encode.conftest import dciodvfy

MODEL = {"algorithm_name": "kneenode-phantom-demo", "algorithm_version": "0.1.0", "is_demo": True}


def _results(truth_json: Path) -> dict[str, Any]:
    truth = json.loads(truth_json.read_text())
    results: dict[str, Any] = {"side": truth["side"], "bscore": 0.25}
    for part in ("volumes_ml", "thickness_mm", "t2_ms"):
        results.update(truth.get(part, {}))
    return results


def _kinds(paths: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in paths:
        out.setdefault(p.parent.name, []).append(p)
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["single-echo", "qdess"])
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    qdess = request.param
    root = tmp_path_factory.mktemp("enhanced")
    ph = make_phantom(9, "small", side="right", orientation="oblique", qdess=qdess)
    enhanced = write_phantom(ph, root / "enhanced", enhanced=True)
    classic = write_phantom(ph, root / "classic")
    vol = read_series(enhanced.dicom_dir)  # what prepare writes into volume.json
    slices = [str(ref.path) for ref in vol.slices[0]]
    frames = [ref.frame for ref in vol.slices[0]]
    results = _results(enhanced.truth_json)
    opts = EncodeSettings(seg_subregions=True, sr_source_images=True)
    out = {}
    for name, source, numbers in (("enhanced", slices, frames),
                                  ("classic", [str(r.path) for r in read_series(
                                      classic.dicom_dir).slices[0]], None)):
        encoded = encode_results(source=source, frames=numbers, labels=ph.subregions,
                                 results=results, model=MODEL, options=opts)
        out[name] = _kinds(write_results(encoded, root / f"out-{name}"))
    return {"phantom": ph, "qdess": qdess, "frames": frames, "results": results,
            "source": enhanced.dicom_files[0], "out": out["enhanced"], "classic": out["classic"]}


def test_seg_is_voxel_exact_through_its_frame_references(job):
    ph, frames = job["phantom"], job["frames"]
    source = pydicom.dcmread(job["source"], stop_before_pixels=True)
    seg = hd.seg.segread(job["out"]["seg"][0])
    numbers = segment_numbers(include_subregions=True)
    tissues = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID, source_frame_numbers=frames,
        segment_numbers=list(range(1, 10)), combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(tissues, ph.labels)
    sub = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID, source_frame_numbers=frames,
        segment_numbers=[numbers[k] for k in range(11, 16)])
    for i, label in enumerate(range(11, 16)):
        np.testing.assert_array_equal(sub[..., i].astype(bool), ph.subregions == label)


def test_seg_references_the_frames_of_the_first_echo(job):
    n = job["phantom"].grid.size[2]
    seg = pydicom.dcmread(job["out"]["seg"][0])
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0]
            for f in seg.PerFrameFunctionalGroupsSequence]
    assert {r.ReferencedSOPClassUID for r in refs} == {EnhancedMRImageStorage}
    assert {int(r.ReferencedFrameNumber) for r in refs} == set(range(1, n + 1))  # echo 1: 1..n
    instances = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert len(instances) == 1 and "ReferencedFrameNumber" not in instances[0]
    assert [int(v) for v in seg.SourceImageSequence[0].ReferencedFrameNumber] == list(range(1, n + 1))
    classic = pydicom.dcmread(job["classic"]["seg"][0])
    assert seg.PixelData == classic.PixelData  # same frames, same bits as the classic series
    # the template's single-frame stand-in leaves no trace: no MR Image Storage anywhere
    assert b"1.2.840.10008.5.1.4.1.1.4\x00" not in job["out"]["seg"][0].read_bytes()


@pytest.mark.parametrize("kind", ["seg", "sr", "overlay", "pdf"])
def test_dciodvfy_every_object_type(job, kind, tmp_path):
    for path in (job["out"][kind][0], job["out"][kind][-1]):
        errors, warnings = dciodvfy(pydicom.dcmread(path), tmp_path)
        assert errors == []
        assert all("99KNEENODE" in w for w in warnings), warnings


def test_sr_values_and_frame_references(job):
    sr = pydicom.dcmread(job["out"]["sr"][0])
    assert read_sr_measurements(sr) == job["results"]
    assert set(outlines_by_key(sr)) == set(outlines_by_key(pydicom.dcmread(job["classic"]["sr"][0])))
    n = job["phantom"].grid.size[2]
    seen: list[int] = []

    def walk(items) -> None:
        for item in items:
            if item.get("ValueType") == "IMAGE" and "ReferencedSOPSequence" in item:
                ref = item.ReferencedSOPSequence[0]
                if ref.ReferencedSOPClassUID == EnhancedMRImageStorage:
                    seen.append(int(ref.ReferencedFrameNumber))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert seen and all(1 <= f <= n for f in seen)  # outlines and source images name echo-1 frames
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    source_uid = pydicom.dcmread(job["source"], stop_before_pixels=True).SOPInstanceUID
    listed = [r.ReferencedSOPInstanceUID for s in evidence for r in s.ReferencedSOPSequence]
    assert listed.count(source_uid) == 1


def test_overlay_one_image_per_slice_referencing_its_frame(job):
    frames = job["frames"]
    images = sorted((pydicom.dcmread(p) for p in job["out"]["overlay"]),
                    key=lambda d: int(d.InstanceNumber))
    assert len(images) == len(frames)
    assert [int(d.SourceImageSequence[0].ReferencedFrameNumber) for d in images] == frames
    classic = sorted((pydicom.dcmread(p) for p in job["classic"]["overlay"]),
                     key=lambda d: int(d.InstanceNumber))
    mid = len(images) // 2
    assert images[mid].PixelData == classic[mid].PixelData  # the same picture as the classic one


def test_pdf_references_the_instance_once(job):
    pdf = pydicom.dcmread(job["out"]["pdf"][0])
    assert [r.ReferencedSOPClassUID for r in pdf.SourceInstanceSequence] == [EnhancedMRImageStorage]


def test_without_frame_numbers_the_first_echo_is_used(job):
    """A path (or dataset) alone: the encoders take every frame of the shortest echo time."""
    views = load_source([job["source"]], pixels=False)
    assert [v.frame_number for v in views] == job["frames"]
    in_memory = load_source([pydicom.dcmread(job["source"])], pixels=True)
    assert [v.frame_number for v in in_memory] == job["frames"]
    expected = job["phantom"].echoes[0][len(views) // 2]
    got = np.frombuffer(in_memory[len(views) // 2].PixelData, dtype="<u2").reshape(expected.shape)
    np.testing.assert_array_equal(got, np.clip(np.rint(expected), 0, 65535))


def test_bad_frame_numbers_are_refused(job):
    n = int(pydicom.dcmread(job["source"], stop_before_pixels=True).NumberOfFrames)
    with pytest.raises(NodeError) as err:
        load_source([job["source"]], pixels=False, frames=[n + 1])
    assert err.value.code == ErrorCode.DICOM_ERROR and "outside" in err.value.message
    with pytest.raises(NodeError, match="frame numbers for"):
        load_source([job["source"]] * 2, pixels=False, frames=[1])


def test_compressed_and_legacy_converted_sources(tmp_path):
    """An RLE-compressed Enhanced MR object and a Legacy Converted Enhanced MR object (highdicom,
    from the classic files) give the same SEG bits and overlay pictures as the plain one."""
    from pipeline.encode import encode_overlay, encode_seg

    ph = make_phantom(5, "small", orientation="axial", qdess=True)
    plain = write_phantom(ph, tmp_path / "plain", enhanced=True).dicom_files[0]
    rle = write_phantom(ph, tmp_path / "rle", enhanced=True,
                        transfer_syntax="1.2.840.10008.1.2.5").dicom_files[0]
    legacy = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=[pydicom.dcmread(p) for p in write_phantom(ph, tmp_path / "c").dicom_files],
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1)
    legacy_path = tmp_path / "legacy.dcm"
    legacy.save_as(legacy_path)
    seg_bits, pictures = [], []
    for path in (plain, rle, legacy_path):
        seg = encode_seg(source=[path], labels=ph.labels, model=MODEL)
        errors, _ = dciodvfy(seg, tmp_path, name=f"seg-{path.stem}.dcm")
        assert errors == [], (path, errors)
        seg_bits.append(seg.PixelData)
        overlay = encode_overlay(source=[path], labels=ph.labels, model=MODEL)
        assert len(overlay) == ph.grid.size[2]
        pictures.append(overlay[10].PixelData)
        frames = {int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for f in seg.PerFrameFunctionalGroupsSequence}
        echo1 = {i + 1 for i, item in enumerate(pydicom.dcmread(path).PerFrameFunctionalGroupsSequence)
                 if _echo_time(item) == pytest.approx(ph.echo_times_ms[0])}
        assert frames == echo1  # the first echo's frames, wherever the object puts them
    assert seg_bits[0] == seg_bits[1] == seg_bits[2]
    assert pictures[0] == pictures[1] == pictures[2]


def _echo_time(item: pydicom.Dataset) -> float:
    if "MREchoSequence" in item:
        return float(item.MREchoSequence[0].EffectiveEchoTime)
    return float(item.UnassignedPerFrameConvertedAttributesSequence[0].EchoTime)
