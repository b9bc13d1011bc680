"""End to end: a phantom zip uploaded with ``kneenode upload`` to a real ``kneenode serve`` runs
the node's whole chain (demo model on the CPU) with the chosen profile; its results zip holds
what docs/upload.md lists, and the report's pictures are real PNG files.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom import dcmread

from kneenode.errors import NodeError
from pipeline.phantom import make_phantom, write_phantom
from tests.support.node import KNEENODE, Node, node_env
from tests.support.procs import free_port, wait_for
from workers.broker import make_client
from workers.bundle import bundle_name, iter_bundle, result_images, results_bundle
from workers.jobstate import JobStore

# Deadlines only (nothing here waits a fixed time): generous, the suite runs on loaded CPUs.
pytestmark = pytest.mark.timeout(1800)


def _config() -> dict[str, Any]:
    return {
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "poll_ms": 200,
                 "optional_stages": []},
        "segment": {"device": "cpu", "cpu_threads": 1},
        "profiles": {"research": {"encode": {"description_prefix": "RESEARCH"}}},
    }


def test_an_uploaded_phantom_finishes_and_its_results_zip_holds_what_the_docs_list(
        node_factory, tmp_path: Path) -> None:
    node: Node = node_factory(_config(), command="serve")
    paths = write_phantom(make_phantom(23, "small"), tmp_path / "phantom")
    archive = tmp_path / "knee.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths.dicom_files:
            zf.write(p, f"knee/{p.name}")
    done = subprocess.run([KNEENODE, "upload", str(archive), "--profile", "research",
                           "--user", "dana"], capture_output=True, text=True, timeout=600,
                          env=node_env(KNEENODE_CONFIG=str(node.config_path), COLUMNS="300"),
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    serve = json.loads((node.data_dir / "serve.json").read_text())
    store = JobStore(make_client(serve["redis_url"]), "kneenode")
    (job,) = store.list_jobs()
    wait_for(lambda: (store.get(job["id"]) or {}).get("state") in ("done", "failed", "ignored"),
             900, interval=0.5, what="the uploaded job to end")
    job = store.get(job["id"]) or {}
    assert job["state"] == "done", (job, store.events(job["id"]))
    assert (job["source"], job["user"], job["profile"]) == ("upload", "dana", "research")
    job_dir = Path(job["job_dir"])

    # the zip, streamed into an unseekable sink and into a file: the same bytes
    chunks = list(iter_bundle(job_dir))
    assert max(len(c) for c in chunks) <= 2 * 1024 * 1024  # never the whole zip at once
    with open(tmp_path / bundle_name(job_dir), "wb") as fh:
        results_bundle(job_dir, fh)
    data = (tmp_path / bundle_name(job_dir)).read_bytes()
    assert data == b"".join(chunks)
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.testzip() is None
    top = job["id"]
    names = set(zf.namelist())
    for fixed in ("labels.nii.gz", "results.json", "results.csv", "config.json", "report.pdf",
                  "images/images.json"):
        assert f"{top}/{fixed}" in names, sorted(names)
    kinds = {n.split("/")[2] for n in names if n.startswith(f"{top}/dicom/")}
    assert kinds == {"seg", "sr", "overlay", "pdf"}
    overlay = [n for n in names if n.startswith(f"{top}/dicom/overlay/")]
    assert len(overlay) == len(paths.dicom_files)

    # the label map in the zip is the job's, voxel for voxel, with its geometry
    extracted = tmp_path / "unzipped"
    zf.extractall(extracted)
    ours = sitk.ReadImage(str(extracted / top / "labels.nii.gz"))
    theirs = sitk.ReadImage(str(job_dir / "segment" / "labels.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert ours.GetOrigin() == theirs.GetOrigin() and ours.GetSpacing() == theirs.GetSpacing()
    results = json.loads((extracted / top / "results.json").read_text())
    assert results == json.loads((job_dir / "results.json").read_text())
    assert results["series_uid"] == job["series_uid"] and results["fem_cart_ml"] > 0
    csv = (extracted / top / "results.csv").read_text().splitlines()
    assert len(csv) == 2 and csv[0].startswith("study_uid,series_uid,side")
    seg = dcmread(next((extracted / top / "dicom" / "seg").glob("*.dcm")))
    assert seg.Modality == "SEG" and str(seg.SeriesDescription).startswith("RESEARCH")
    assert (extracted / top / "report.pdf").read_bytes().startswith(b"%PDF")

    # the report's pictures: real PNGs, key slices and the three maps, listed with captions
    images = result_images(job_dir)
    assert [i.name.split("-")[0] for i in images].count("key") >= 1
    assert {i.name for i in images if i.name.startswith("map-")} == {
        "map-femoral-cartilage-unrolled.png", "map-tibial-cartilage-from-above.png",
        "map-patellar-cartilage-from-behind.png"}
    for image in images:
        assert image.caption and image.path.is_file()
        with Image.open(image.path) as png:
            assert png.format == "PNG" and max(png.size) >= 256
            pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
            assert len(np.unique(pixels, axis=0)) > 20  # a picture, not a flat fill
        assert f"{top}/images/{image.name}" in names
    kept = tmp_path / "images"  # kept by pytest with the test's tmp folder, to look at
    kept.mkdir()
    for image in images:
        shutil.copy(image.path, kept / image.name)

    with pytest.raises(NodeError) as err:  # a job without results yet: refused up front
        next(iter_bundle(tmp_path / "no-such-job"))
    assert err.value.code == "FILE_NOT_FOUND"
