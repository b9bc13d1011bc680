"""The quantify stage: quantify_to_folder outputs and the jobs layer's stage function on a real
DICOM qDESS phantom series (reader -> echoes, GE gradient tags -> T2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kneenode.settings import Settings
from pipeline.phantom import make_phantom, write_phantom
from pipeline.quantify import THICKNESS_REGIONS, quantify_to_folder
from workers.analysis import node_chain, prepare, quantify
from workers.stages import StageContext, fresh_work_dir


def test_quantify_to_folder_writes_results_and_arrays(tmp_path: Path) -> None:
    ph = make_phantom(31, "small", side="left", orientation="coronal")
    paths = write_phantom(ph, tmp_path / "ph")
    results = quantify_to_folder(sitk.ReadImage(str(paths.labels)), tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "quantify.json").read_text()) == json.loads(json.dumps(results))
    sub = sitk.ReadImage(str(out / "subregions.nii.gz"))
    assert set(np.unique(sitk.GetArrayViewFromImage(sub))) >= {11, 12, 13, 14, 15}
    pts = np.load(out / "thickness_points.npz")
    assert pts["femur_vertices_lps"].shape[1] == 3
    assert len(pts["tibia_thickness_mm"]) == len(pts["tibia_region"])
    tmap = np.load(out / "femoral_thickness_map.npy")
    assert tmap.ndim == 2 and np.isfinite(tmap).mean() > 0.3
    assert 1.0 < np.nanmedian(tmap) < 3.5
    assert results["side"] == "left"


def test_stage_function_reads_segment_labels_and_qdess_echoes(tmp_path: Path) -> None:
    ph = make_phantom(32, "small", side="right", orientation="sagittal", qdess=True)
    paths = write_phantom(ph, tmp_path / "ph")
    job = tmp_path / "job"

    def ctx_for(stage: str) -> StageContext:
        return StageContext(job_id="j1", job_dir=job, series_path=paths.dicom_dir,
                            work_dir=fresh_work_dir(job, stage), summary={}, settings=Settings())

    prepare(ctx_for("prepare"))  # the volume and its two echoes, as the chain runs it
    (job / "segment").mkdir(parents=True)
    shutil.copy(paths.labels, job / "segment" / "labels.nii.gz")
    quantify(ctx_for("quantify"))
    merged = json.loads((job / "results.json").read_text())
    assert merged["side"] == "right"  # merged into the job's results.json for the encoders
    res = json.loads((job / "quantify" / "quantify.json").read_text())
    assert res["side"] == "right"
    assert res["t2_protocol"]["spoiling"] == "vendor gradient tags"
    for region in THICKNESS_REGIONS:
        assert res[f"{region}_mm_mean"] is not None
        truth = ph.truth["t2_ms"][f"{region}_t2_ms_median"]
        assert abs(res[f"{region}_t2_ms_median"] - truth) < 4.0  # default blur biases thin plates up


def test_quantify_follows_segment_and_its_qc_in_the_chain() -> None:
    chain = node_chain(Settings())
    names = [s.name for s in chain]
    assert names.index("qc") == names.index("segment") + 1  # QC before anything is measured
    assert names.index("quantify") == names.index("qc") + 1
    assert chain[names.index("quantify")].queue == "cpu" and chain[names.index("quantify")].fn is quantify


def test_analyze_cli_writes_the_quantification_keys(tmp_path: Path, tiny_model: Path) -> None:
    """End to end through ``kneenode analyze`` with the segmentation tests' tiny random-weight
    model: whatever its label map, the section is there and every thickness key is a number or
    null with a reason."""
    from typer.testing import CliRunner

    from kneenode.cli import app

    ph = make_phantom(34, "small", side="right", orientation="sagittal", qdess=True)
    paths = write_phantom(ph, tmp_path / "ph")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(paths.dicom_dir), "--out", str(out), "--model-dir",
                                      str(tiny_model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    quant = json.loads((out / "results.json").read_text())
    for region in THICKNESS_REGIONS:
        assert quant[f"{region}_mm_mean"] is not None or quant["missing"][f"{region}_mm"]
    assert (out / "quantify" / "quantify.json").is_file()
    assert (out / "quantify" / "subregions.nii.gz").is_file()
