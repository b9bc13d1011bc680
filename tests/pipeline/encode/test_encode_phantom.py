"""The encoders on the knee phantom (pipeline.phantom): real geometry, files read from disk.

An oblique `small` phantom written as DICOM files, read back by path (unsorted), encoded with
every object enabled; the SEG must reproduce the phantom's label map voxel for voxel, the SR its
truth values, and dciodvfy must find no error in any object type.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from kneenode.settings import EncodeSettings
from pipeline.encode import encode_results, read_sr_measurements, segment_numbers, write_results
from pipeline.encode.common import load_source
from pipeline.phantom import make_phantom, write_phantom
from pipeline.series import read_series
from tests.pipeline.encode.conftest import dciodvfy


@pytest.fixture(scope="module")
def phantom_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("phantom")
    ph = make_phantom(7, "small", side="left", orientation="oblique")
    paths = write_phantom(ph, root)
    files = list(paths.dicom_files)
    random.Random(0).shuffle(files)
    truth = json.loads(paths.truth_json.read_text())
    results: dict[str, Any] = {"side": truth["side"], "bscore": -0.5}
    for part in ("volumes_ml", "thickness_mm", "t2_ms"):
        results.update(truth.get(part, {}))
    encoded = encode_results(
        source=files,
        labels=ph.subregions,
        results=results,
        model={
            "algorithm_name": "kneenode-phantom-demo",
            "algorithm_version": "0.1.0",
            "is_demo": True,
        },
        options=EncodeSettings(seg_subregions=True),
    )
    out = write_results(encoded, root / "out")
    return {
        "phantom": ph,
        "results": results,
        "paths": out,
        "files": paths.dicom_files,
        "dicom_dir": paths.dicom_dir,
    }


def _by_kind(job: dict[str, Any], kind: str) -> list[Path]:
    return [p for p in job["paths"] if p.parent.name == kind]


def test_seg_equals_phantom_labels(phantom_job):
    ph = phantom_job["phantom"]
    seg = hd.seg.segread(_by_kind(phantom_job, "seg")[0])
    uids = [
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in phantom_job["files"]
    ]
    numbers = segment_numbers(include_subregions=True)
    tissues = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=list(range(1, 10)),
        combine_segments=True,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(tissues, ph.labels)
    sub = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[numbers[k] for k in range(11, 16)]
    )
    for i, label in enumerate(range(11, 16)):
        np.testing.assert_array_equal(sub[..., i].astype(bool), ph.subregions == label)


def test_sr_equals_results(phantom_job):
    sr = pydicom.dcmread(_by_kind(phantom_job, "sr")[0])
    assert read_sr_measurements(sr) == phantom_job["results"]


@pytest.mark.parametrize("kind", ["seg", "sr", "overlay", "pdf"])
def test_dciodvfy_every_object_type(phantom_job, kind, tmp_path):
    ds = pydicom.dcmread(_by_kind(phantom_job, kind)[0])
    errors, warnings = dciodvfy(ds, tmp_path)
    assert errors == []
    assert all("99KNEENODE" in w for w in warnings), warnings


def test_one_study_consistent_series(phantom_job):
    study = pydicom.dcmread(phantom_job["files"][0], stop_before_pixels=True)
    seen = {}
    for p in phantom_job["paths"]:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert ds.StudyInstanceUID == study.StudyInstanceUID and ds.PatientID == study.PatientID
        seen.setdefault(p.parent.name, set()).add((ds.SeriesInstanceUID, int(ds.SeriesNumber)))
    assert {k: len(v) for k, v in seen.items()} == {"seg": 1, "sr": 1, "overlay": 1, "pdf": 1}
    base = int(study.SeriesNumber) * 100
    assert {k: next(iter(v))[1] for k, v in seen.items()} == {
        "seg": base + 1,
        "sr": base + 2,
        "overlay": base + 3,
        "pdf": base + 4,
    }


def test_slice_order_matches_the_series_reader(phantom_job):
    """The jobs layer passes pipeline.series' slice paths and label map; the orders must agree."""
    vol = read_series(phantom_job["dicom_dir"])
    paths = [str(ref.path) for ref in vol.slices[0]]
    shuffled = random.Random(3).sample(paths, len(paths))
    assert [str(d.filename) for d in load_source(shuffled, pixels=False)] == paths
