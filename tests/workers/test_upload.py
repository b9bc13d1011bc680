"""Uploads become jobs through the edge's chain; every refusal keeps nothing (docs/upload.md).

Real files (phantom DICOM series and volumes, zips written with zipfile), a real redis-server,
real worker processes running the node's own ``prepare`` and a stage that records the settings
it ran with (``tests.workers.chains:upload_chain``), the CLI as a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import Settings
from pipeline.phantom import make_phantom, write_phantom
from pipeline.phantom.dicom_writer import to_stored
from pipeline.phantom.output import grid_image
from pipeline.series import read_series
from scp.completion import CompletionMonitor
from scp.spool import IMPORTING, Spool, hold_lock
from tests.support.node import KNEENODE, node_env
from tests.support.procs import wait_for
from tests.workers.conftest import Cluster
from workers.upload import UploadFile, check_declared_size, import_upload, unsafe_member

RESEARCH = {"research": {"encode": {"description_prefix": "RESEARCH"}}}
JOB_WAIT_S = 300
ZEROS = bytes(900_000)  # under the per-member ratio floor: only the whole archive's ratio shows


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    """A small phantom series (48 files) and its zip (a folder inside, as a PACS export)."""
    root = tmp_path_factory.mktemp("phantom")
    paths = write_phantom(make_phantom(21, "small"), root / "ph")
    archive = root / "knee.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths.dicom_files:
            zf.write(p, f"export/series1/{p.name}")
    return paths, archive


@pytest.fixture
def uploads(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """redis + a job creator (workers are started by the tests that need them)."""
    return cluster_factory(extra={"profiles": RESEARCH,
                                  "spool": {"min_free_bytes": 0, "min_free_percent": 0}},
                           chain="tests.workers.chains:upload_chain")


def _kept(settings: Settings) -> list[str]:
    """Every file left in the spool (complete, incoming, staging, tmp)."""
    root = settings.spool_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def _assert_nothing_kept(c: Cluster, settings: Settings) -> None:
    assert _kept(settings) == []
    assert c.store.list_jobs() == []
    assert list(c.store.client.scan_iter(c.store.key("key", "*"))) == []


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _good_members(paths) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    return [(f"s/{p.name}", p.read_bytes()) for p in paths.dicom_files]


def _wait_done(c: Cluster, job_id: str) -> dict:
    job = c.wait(job_id, {"done", "failed", "ignored"}, timeout=JOB_WAIT_S)
    assert job["state"] == "done", (job, c.store.events(job_id))
    return job


def _recorded_prefix(job: dict) -> str:
    return json.loads((Path(job["job_dir"]) / "s1" / "settings.json").read_text())["prefix"]


def test_a_phantom_zip_uploaded_with_the_cli_becomes_a_job_with_its_profile(
        uploads: Cluster, phantom, tmp_path: Path) -> None:
    paths, archive = phantom
    uploads.start_workers()
    done = subprocess.run([KNEENODE, "upload", str(archive), "--profile", "research",
                           "--user", "alice"], capture_output=True, text=True, timeout=300,
                          env=node_env(KNEENODE_CONFIG=str(uploads.config), COLUMNS="300"),
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (job,) = uploads.store.list_jobs()
    assert f"job {job['id']} created" in done.stdout
    job = _wait_done(uploads, job["id"])
    assert (job["source"], job["user"], job["profile"]) == ("upload", "alice", "research")
    assert job["closed_by"] == "upload" and job["instance_count"] == 48
    assert _recorded_prefix(job) == "RESEARCH"  # the profile reached the stages
    assert json.loads((Path(job["job_dir"]) / "config.json").read_text())["profile"] == "research"
    uploaded = [e for e in uploads.store.events(job["id"]) if e["kind"] == "uploaded"]
    assert uploaded and uploaded[0]["user"] == "alice" and uploaded[0]["format"] == "dicom-zip"
    series = Path(job["series_path"])
    assert sorted(p.name for p in series.glob("*.dcm")) == sorted(
        f"{dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in paths.dicom_files)
    # the files are the bytes as uploaded, as the SCP keeps them
    by_uid = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths.dicom_files}
    assert all((series / f"{uid}.dcm").read_bytes() == p.read_bytes() for uid, p in by_uid.items())
    summary = json.loads((series / "summary.json").read_text())
    assert summary["upload"]["user"] == "alice" and summary["closed_by"] == "upload"
    assert json.loads((series / "announced").read_text())["job_id"] == job["id"]
    assert not (series / IMPORTING).exists()
    assert list((uploads.settings.spool_dir / "uploads").iterdir()) == []


def test_a_folders_files_uploaded_as_streams_become_a_job(uploads: Cluster, phantom) -> None:
    paths, _ = phantom
    uploads.start_workers()
    handles = [open(p, "rb") for p in paths.dicom_files]  # noqa: SIM115 - closed below
    try:
        junk = [UploadFile("knee/.DS_Store", stream=io.BytesIO(b"\0junk")),
                UploadFile("knee/DICOMDIR", stream=io.BytesIO(b"not a series file"))]
        out = import_upload([*junk, *(UploadFile(f"knee/{p.name}", stream=h) for p, h in
                                      zip(paths.dicom_files, handles, strict=True))],
                            settings=uploads.settings, hand_off=uploads.creator,
                            profile="research", user="bob")
    finally:
        for h in handles:
            h.close()
    assert out.kind == "dicom-files" and out.instances == 48 and out.profile == "research"
    job = _wait_done(uploads, out.job_id)
    assert (job["source"], job["user"], job["profile"]) == ("upload", "bob", "research")
    assert _recorded_prefix(job) == "RESEARCH"
    # the same series again: the next version, a new job linked to the first
    again = import_upload([UploadFile(p.name, path=p) for p in paths.dicom_files],
                          settings=uploads.settings, hand_off=uploads.creator, user="bob")
    assert again.version == 2 and again.job_id != out.job_id
    job2 = _wait_done(uploads, again.job_id)
    assert job2["previous_job"] == out.job_id and job2["profile"] == "default"
    assert _recorded_prefix(job2) != "RESEARCH"


def test_a_nifti_volume_becomes_an_mr_series_and_a_job(uploads: Cluster, tmp_path: Path) -> None:
    ph = make_phantom(22, "small", orientation="coronal")
    image = sitk.Cast(grid_image(to_stored(ph.echoes[0]).astype(np.float32), ph.grid),
                      sitk.sitkUInt16)
    volume = tmp_path / "my_scan.nii.gz"
    sitk.WriteImage(image, str(volume))
    uploads.start_workers()
    out = import_upload([UploadFile(volume.name, path=volume)], settings=uploads.settings,
                        hand_off=uploads.creator, profile="research", user="carol",
                        fields={"PatientName": "DOE^JANE", "PatientID": "P-1"})
    assert out.kind == "nifti" and out.instances == image.GetSize()[2]
    job = _wait_done(uploads, out.job_id)
    assert (job["source"], job["user"], job["profile"]) == ("upload", "carol", "research")
    assert job["modality"] == "MR" and job["series_description"] == "UPLOAD my_scan"
    first = dcmread(next(Path(job["series_path"]).glob("*.dcm")), stop_before_pixels=True)
    assert (str(first.PatientName), first.PatientID, first.BodyPartExamined) == \
        ("DOE^JANE", "P-1", "KNEE")
    # the series reads back as the same volume: voxels exact, geometry to the written precision
    back = read_series(sorted(Path(job["series_path"]).glob("*.dcm"))).image
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    assert json.loads((Path(job["job_dir"]) / "prepare" / "volume.json").read_text())["slices"]


def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("s/link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _bomb() -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo("s/zeros.dcm")
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, bytes(40 * 1024 * 1024)  # deflates about 1000:1


def _sr(paths) -> bytes:
    ds = dcmread(paths.dicom_files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    out = Path(paths.root) / "sr.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes()


def _other_series(paths) -> bytes:
    ds = dcmread(paths.dicom_files[0])
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.999.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.999.2"
    out = Path(paths.root) / "other.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes()


# (case, extra members after the 48 good ones, settings overrides, profile, expected code, text)
REFUSALS = [
    ("dotdot", lambda p: [("s/../../evil.dcm", b"x")], {}, "", ErrorCode.UPLOAD_UNSAFE_PATH,
     "path leaving the folder"),
    ("absolute", lambda p: [("/tmp/evil.dcm", b"x")], {}, "", ErrorCode.UPLOAD_UNSAFE_PATH,
     "absolute path"),
    ("drive", lambda p: [("C:/evil.dcm", b"x")], {}, "", ErrorCode.UPLOAD_UNSAFE_PATH,
     "absolute path"),
    ("symlink", lambda p: [(_symlink(), b"/etc/passwd")], {}, "", ErrorCode.UPLOAD_UNSAFE_PATH,
     "symbolic link"),
    ("bomb", lambda p: [_bomb()], {}, "", ErrorCode.UPLOAD_BOMB, "upload.max_ratio"),
    ("many-small", lambda p: [(f"s/z{i}.dcm", ZEROS) for i in range(150)], {}, "",
     ErrorCode.UPLOAD_BOMB, "all members together"),
    ("unpacked", lambda p: [], {"upload": {"max_unpacked_bytes": 200_000}}, "",
     ErrorCode.UPLOAD_BOMB, "upload.max_unpacked_bytes"),
    ("members", lambda p: [], {"upload": {"max_members": 20}}, "",
     ErrorCode.UPLOAD_TOO_MANY_FILES, "upload.max_members = 20"),
    ("oversized", lambda p: [], {"upload": {"max_bytes": 100_000}}, "",
     ErrorCode.UPLOAD_TOO_LARGE, "upload.max_bytes = 100000"),
    ("instance", lambda p: [], {"scp": {"max_instance_bytes": 4096}}, "",
     ErrorCode.UPLOAD_TOO_LARGE, "scp.max_instance_bytes = 4096"),
    ("not-dicom", lambda p: [("s/notes.txt", b"not an image\n" * 50)], {}, "",
     ErrorCode.UPLOAD_NOT_DICOM, "s/notes.txt: not a DICOM file"),
    ("not-an-image", lambda p: [("s/sr.dcm", _sr(p))], {}, "", ErrorCode.NOT_AN_IMAGE,
     "Comprehensive 3D SR"),
    ("two-series", lambda p: [("s/other.dcm", _other_series(p))], {}, "",
     ErrorCode.UPLOAD_MANY_SERIES, "holds 2 series"),
    ("profile", lambda p: [], {}, "nope", ErrorCode.UNKNOWN_PROFILE,
     "no profile 'nope' (have: default, research)"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_has_its_code_and_keeps_nothing(uploads: Cluster, phantom, tmp_path: Path,
                                                    case) -> None:
    name, extra, overrides, profile, code, text = case
    paths, _ = phantom
    # the bad part comes last: everything before it was already received and stored
    archive = _zip(tmp_path / f"{name}.zip", [*_good_members(paths), *extra(paths)])
    settings = uploads.settings
    for section, values in overrides.items():
        current = getattr(settings, section)
        settings = settings.model_copy(update={section: current.model_copy(update=values)})
    with pytest.raises(NodeError) as err:
        import_upload([UploadFile(archive.name, path=archive)], settings=settings,
                      hand_off=uploads.creator, profile=profile, user="mallory")
    assert err.value.code == code, err.value
    assert text in err.value.message, err.value.message
    assert err.value.hint and not err.value.retryable
    _assert_nothing_kept(uploads, settings)


def test_the_cli_refuses_with_one_line_and_keeps_nothing(uploads: Cluster, phantom,
                                                         tmp_path: Path) -> None:
    paths, _ = phantom
    archive = _zip(tmp_path / "evil.zip", [*_good_members(paths), ("../evil.dcm", b"x")])
    done = subprocess.run([KNEENODE, "upload", str(archive)], capture_output=True, text=True,
                          timeout=300, check=False,
                          env=node_env(KNEENODE_CONFIG=str(uploads.config), COLUMNS="400"))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "UPLOAD_UNSAFE_PATH: evil.zip: path leaving the folder" in lines[0]
    _assert_nothing_kept(uploads, uploads.settings)


def test_zip_member_names_are_checked_before_anything_is_unpacked() -> None:
    def member(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFREG | mode) << 16
        return info

    assert unsafe_member(member("a/b/c.dcm")) == ""
    assert unsafe_member(member("a/..b/c.dcm")) == ""  # a name, not a parent reference
    assert "leaving" in unsafe_member(member("a\\..\\..\\c.dcm"))
    assert "absolute" in unsafe_member(member("\\\\server\\share\\c.dcm"))
    assert "symbolic" in unsafe_member(_symlink())


def test_the_edge_leaves_a_version_alone_while_an_upload_announces_it(tmp_path: Path,
                                                                      phantom) -> None:
    """The ``.importing`` lock: held by another live process, the completion monitor skips the
    version; once that process is gone (lock released by the kernel) it announces it."""
    paths, _ = phantom
    settings = Settings(data_dir=tmp_path / "data")
    spool = Spool(settings.spool_dir)
    version = spool.complete / "1.2.3" / "1.2.3.4" / "v1"
    version.mkdir(parents=True)
    for p in paths.dicom_files[:3]:
        (version / p.name).write_bytes(p.read_bytes())
    (version / "source.json").write_text("{}")
    hold = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(version / IMPORTING)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert hold_lock(version / IMPORTING) is None
        announced: list[str] = []
        monitor = CompletionMonitor(spool, settings, lambda s: announced.append(s.series_uid))
        assert monitor.poll_once() == [] and announced == []
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    wait_for(lambda: bool(monitor.poll_once()), 30, what="the monitor to announce the version")
    assert len(announced) == 1 and (version / "announced").exists()


def test_an_nrrd_float_volume_is_stored_as_a_series_and_a_4d_one_is_refused(
        uploads: Cluster, tmp_path: Path) -> None:
    ph = make_phantom(24, "small")
    image = grid_image(ph.echoes[0].astype(np.float32) / 7.0 - 3.0, ph.grid)  # float, negative
    volume = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(volume))
    out = import_upload([UploadFile(volume.name, path=volume)], settings=uploads.settings,
                        hand_off=uploads.creator, user="erin")
    assert out.kind == "nrrd" and out.instances == image.GetSize()[2] and out.job_id
    first = dcmread(next(out.series_path.glob("*.dcm")), stop_before_pixels=True)
    assert str(first.PatientName) == "ANONYMOUS^UPLOAD" and first.Modality == "MR"
    back = sitk.GetArrayFromImage(read_series(sorted(out.series_path.glob("*.dcm"))).image)
    original = sitk.GetArrayFromImage(image).astype(np.float64)
    assert back.min() == 0 and back.max() == 4095  # mapped linearly onto 12 bits
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.9999
    job = uploads.store.get(out.job_id) or {}
    assert job["state"] == "queued" and job["profile"] == "default" and job["user"] == "erin"

    four_d = tmp_path / "dwi.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(four_d))
    before = _kept(uploads.settings)
    with pytest.raises(NodeError) as err:
        import_upload([UploadFile(four_d.name, path=four_d)], settings=uploads.settings,
                      hand_off=uploads.creator)
    assert err.value.code == ErrorCode.INVALID_FORMAT and "4-D input" in err.value.message
    assert _kept(uploads.settings) == before and len(uploads.store.list_jobs()) == 1


def test_a_staging_folder_left_by_a_dead_upload_is_removed_by_the_next(
        uploads: Cluster, phantom) -> None:
    paths, archive = phantom
    stale = uploads.settings.spool_dir / "uploads" / "upload-dead"
    (stale / "tmp").mkdir(parents=True)
    (stale / "tmp" / "member-000000").write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    young = uploads.settings.spool_dir / "uploads" / "upload-starting"  # not locked yet
    young.mkdir()
    out = import_upload([UploadFile(archive.name, path=archive)], settings=uploads.settings,
                        hand_off=uploads.creator)
    assert out.instances == len(paths.dicom_files)
    assert [p.name for p in (uploads.settings.spool_dir / "uploads").iterdir()] == [young.name]


def test_a_declared_size_over_the_limit_is_refused_before_reading() -> None:
    settings = Settings(upload={"max_bytes": 10 * 1024**2})
    check_declared_size(settings, None)
    check_declared_size(settings, 10 * 1024**2)
    with pytest.raises(NodeError) as err:
        check_declared_size(settings, 20 * 1024**2)
    assert err.value.code == ErrorCode.UPLOAD_TOO_LARGE and "upload.max_bytes" in err.value.message


def test_the_cli_uploads_a_folder_with_its_files(uploads: Cluster, phantom, tmp_path: Path) -> None:
    paths, _ = phantom
    folder = tmp_path / "cd" / "DICOM"
    folder.mkdir(parents=True)
    for p in paths.dicom_files:
        (folder / p.stem).write_bytes(p.read_bytes())  # no suffix, as on a CD
    (folder / ".DS_Store").write_bytes(b"\0\0junk")
    done = subprocess.run([KNEENODE, "upload", str(folder), "--user", "frank"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=node_env(KNEENODE_CONFIG=str(uploads.config), COLUMNS="300"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "48 instances, dicom-files" in done.stdout and "profile 'default'" in done.stdout
    (job,) = uploads.store.list_jobs()
    assert (job["source"], job["user"], job["state"]) == ("upload", "frank", "queued")


def test_one_enhanced_mr_object_is_a_series_of_one_instance(uploads: Cluster,
                                                            tmp_path: Path) -> None:
    from pipeline.phantom.enhanced_writer import write_enhanced_series

    (path,) = write_enhanced_series(make_phantom(25, "small"), tmp_path / "mf")
    out = import_upload([UploadFile(path.name, path=path)], settings=uploads.settings,
                        hand_off=uploads.creator, user="gina")
    assert out.kind == "dicom-files" and out.instances == 1
    assert (out.series_path / f"{dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm"
            ).read_bytes() == path.read_bytes()
    job = uploads.store.get(out.job_id) or {}
    assert job["state"] == "queued" and job["instance_count"] == 1


def test_a_failed_hand_off_keeps_the_checked_series_for_the_edge_to_announce(
        tmp_path: Path, phantom) -> None:
    """Once renamed into the spool the series is accepted, as an acknowledged C-STORE is: a
    hand-off that fails (redis down; a raising function stands in for it) leaves it complete
    and unannounced, and the edge's completion monitor announces it on its next poll."""
    _, archive = phantom
    settings = Settings(data_dir=tmp_path / "data",
                        spool={"min_free_bytes": 0, "min_free_percent": 0})

    def down(series: object) -> str:
        raise ConnectionError("redis is down (test)")

    out = import_upload([UploadFile(archive.name, path=archive)], settings=settings,
                        hand_off=down, user="hal")
    assert out.job_id == "" and "redis is down" in out.hand_off_error
    assert not (out.series_path / "announced").exists()
    assert not (out.series_path / IMPORTING).exists() and (out.series_path / "summary.json").exists()
    jobs: list[str] = []
    monitor = CompletionMonitor(Spool(settings.spool_dir), settings,
                                lambda s: jobs.append(s.series_uid) or "job-1")
    assert [s.series_uid for s in monitor.poll_once()] == [out.series_uid] == jobs
    assert json.loads((out.series_path / "announced").read_text())["job_id"] == "job-1"

