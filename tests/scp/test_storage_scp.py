"""The Storage SCP against DCMTK's storescu/echoscu over loopback (real processes, real disk)."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE, _config

from tests.support.dcmtk import echoscu, storescu
from tests.support.mr import mr_series
from tests.support.procs import kill9, wait_for

QUIET = 1.5
# these tests are about the quiet timer; policy "auto" has its own (test_completion_auto.py)
OPEN = {"scp": {"allow_any": True},
        "completion": {"quiet_seconds": QUIET, "poll_seconds": 0.2, "policy": "timer"}}


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta (what travelled on the wire)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    (group_len,) = struct.unpack("<I", data[140:144])
    return data[144 + group_len:]


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def wait_complete(node, study: str, series: str, versions: int = 1, timeout: float = 60) -> list[Path]:
    wait_for(lambda: len([v for v in node.versions(study, series) if (v / "announced").exists()])
             >= versions, timeout, what=f"{versions} complete version(s)")
    return node.versions(study, series)


def test_series_arrives_byte_identical_and_completes(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=30)
    study, series, _ = uids(files[0])
    node = node_factory(OPEN)
    assert echoscu(node.port).returncode == 0
    done = storescu(node.port, files)
    assert done.returncode == 0, done.stderr
    t_sent = time.time()
    (v1,) = wait_complete(node, study, series)
    assert time.time() - t_sent >= QUIET * 0.9  # not before the quiet period
    for f in files:
        stored = v1 / f"{uids(f)[2]}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(f)
    summary = __import__("json").loads((v1 / "summary.json").read_text())
    assert summary["instance_count"] == 30 and summary["modality"] == "MR"
    assert summary["geometry"]["is_3d"] and summary["geometry"]["consistent"]
    assert summary["calling_ae"] == "PACS" and summary["version"] == 1
    assert not list((node.spool / "incoming").iterdir())
    assert "PHANTOM" not in node.log() and "PHANTOM-0001" not in node.log()  # no patient IDs


def test_restart_mid_series_loses_nothing(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=20)
    study, series, _ = uids(files[0])
    config = {**OPEN, "completion": {"quiet_seconds": 3, "poll_seconds": 0.2, "policy": "timer"}}
    node = node_factory(config)
    assert storescu(node.port, files[:10]).returncode == 0
    kill9(node.proc)  # a crash mid-series
    node.start()  # same data folder, same port
    assert storescu(node.port, files[10:]).returncode == 0
    (v1,) = wait_complete(node, study, series)
    assert sorted(p.name for p in v1.glob("*.dcm")) == sorted(f"{uids(f)[2]}.dcm" for f in files)


def test_completion_resumes_after_restart(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=5)
    study, series, _ = uids(files[0])
    node = node_factory({**OPEN, "completion": {"quiet_seconds": 2, "poll_seconds": 0.2, "policy": "timer"}})
    assert storescu(node.port, files).returncode == 0
    node.stop()  # stopped before the quiet period ended
    time.sleep(2.5)  # down for longer than the quiet period: downtime is not quiet time
    assert not node.versions(study, series)
    node.start()
    t_start = time.time()
    (v1,) = wait_complete(node, study, series)
    assert time.time() - t_start >= 2 * 0.9  # a full quiet period after the restart
    assert len(list(v1.glob("*.dcm"))) == 5


@pytest.mark.parametrize("name,flag,ts", [
    ("MR_small_RLE.dcm", "-xr", RLELossless),
    ("MR_small_jpeg_ls_lossless.dcm", "-xt", JPEGLSLossless),
    ("MR_small_jp2klossless.dcm", "-xv", JPEG2000Lossless),
    ("MR_small_implicit.dcm", "-xi", ImplicitVRLittleEndian),
    ("MR_small.dcm", "-xd", DeflatedExplicitVRLittleEndian),  # storescu deflates on the wire
])
def test_compressed_transfer_syntaxes_received_and_decode(node_factory, name, flag, ts):
    src = Path(get_testdata_file(name))
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    node = node_factory(OPEN)
    done = storescu(node.port, [src], extra=[flag, "-R"])
    assert done.returncode == 0, done.stderr
    study, series, sop = uids(src)
    (v1,) = wait_complete(node, study, series)
    stored = pydicom.dcmread(v1 / f"{sop}.dcm")
    assert str(stored.file_meta.TransferSyntaxUID) == ts  # no re-encoding
    assert np.array_equal(stored.pixel_array, reference)


def test_unknown_calling_ae_and_wrong_address_are_rejected(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=2)
    node = node_factory({"scp": {"allow_loopback": False, "peers": [
        {"ae_title": "PACS", "hosts": ["127.0.0.0/8"]},
        {"ae_title": "FARAWAY", "hosts": ["10.9.8.0/24"]},
    ]}})
    assert echoscu(node.port, aet="PACS").returncode == 0
    unknown = storescu(node.port, files, aet="STRANGER")
    assert unknown.returncode != 0 and "Rejected" in unknown.stdout + unknown.stderr
    wrong_ip = echoscu(node.port, aet="FARAWAY")
    assert wrong_ip.returncode != 0
    assert not list((node.spool / "incoming").iterdir())
    assert node.log().count("association rejected") == 2


def _send_raw(port: int, paths: list[Path]) -> list[int]:
    """Send files' raw bytes as they are, over one association (storescu refuses to read a
    corrupt file). Returns the status of each."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(MRImageStorage)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="KNEENODE")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(p).Status) for p in paths]
        assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def test_watermark_gives_out_of_resources_and_no_file(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=3)
    node = node_factory({**OPEN, "spool": {"min_free_bytes": 2**62}})
    done = storescu(node.port, files)
    assert "Refused: OutOfResources" in done.stderr  # storescu's name for 0xA700
    assert not list((node.spool / "incoming").iterdir())
    assert not list((node.spool / "tmp").iterdir())
    assert echoscu(node.port).returncode == 0  # still up


def test_corrupt_dataset_fails_and_next_association_works(node_factory, tmp_path):
    good = mr_series(tmp_path / "src", slices=3)
    node = node_factory(OPEN)
    corrupt = tmp_path / "corrupt.dcm"
    raw = good[0].read_bytes()
    (group_len,) = struct.unpack("<I", raw[140:144])
    body = raw[144 + group_len:]
    corrupt.write_bytes(raw[:144 + group_len] + body[:40] + b"\xff\xff\xff\xff" * 8)
    no_uid = tmp_path / "no_study_uid.dcm"
    ds = pydicom.dcmread(good[1])
    del ds.StudyInstanceUID
    ds.save_as(no_uid, enforce_file_format=True)
    # one association: failures, then a good instance on the same association
    first, second, third = _send_raw(node.port, [corrupt, no_uid, good[0]])
    assert first in (0xC210, 0x0117)  # undecodable, or no readable SOP Instance UID in it
    assert (second, third) == (0xC212, 0x0000)
    assert storescu(node.port, good[1:]).returncode == 0  # and the next association works
    study, series, _ = uids(good[0])
    (v1,) = wait_complete(node, study, series)
    assert len(list(v1.glob("*.dcm"))) == 3
    assert "undecodable dataset" in node.log() or "instance refused" in node.log()


def test_duplicates_identical_and_different(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=4)
    study, series, sop = uids(files[0])
    node = node_factory({**OPEN, "completion": {"quiet_seconds": 4, "poll_seconds": 0.2, "policy": "timer"}})
    assert storescu(node.port, files).returncode == 0
    stored = node.spool / "incoming" / study / series / f"{sop}.dcm"
    before = stored.stat()
    assert storescu(node.port, [files[0]]).returncode == 0  # identical again
    after = stored.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    changed = tmp_path / "changed.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SeriesDescription = "SAG 3D DESS KNEE (corrected)"
    ds.save_as(changed, enforce_file_format=True)
    assert storescu(node.port, [changed]).returncode == 0
    (v1,) = wait_complete(node, study, series)
    newest = pydicom.dcmread(v1 / f"{sop}.dcm")
    assert newest.SeriesDescription.endswith("(corrected)")
    kept = list(v1.glob(f"{sop}.dcm.superseded-*"))
    assert len(kept) == 1 and dataset_bytes(kept[0]) == dataset_bytes(files[0])
    summary = __import__("json").loads((v1 / "summary.json").read_text())
    assert summary["instance_count"] == 4
    assert [e["event"] for e in summary["events"]] == ["duplicate_different"]


def test_late_arrivals_form_a_linked_new_version(node_factory, tmp_path):
    files = mr_series(tmp_path / "src", slices=6)
    study, series, _ = uids(files[0])
    node = node_factory(OPEN)
    assert storescu(node.port, files[:5]).returncode == 0
    wait_complete(node, study, series)
    assert storescu(node.port, files[5:]).returncode == 0
    v1, v2 = wait_complete(node, study, series, versions=2)
    assert len(list(v1.glob("*.dcm"))) == 5 and len(list(v2.glob("*.dcm"))) == 1
    summary = __import__("json").loads((v2 / "summary.json").read_text())
    assert summary["late_arrival"] and summary["previous_version"] == 1
    assert summary["previous_path"] == str(v1)
    assert "late_arrival" in [e["event"] for e in summary["events"]]


def test_four_concurrent_associations_four_series(node_factory, tmp_path):
    node = node_factory({**OPEN, "completion": {"quiet_seconds": 2, "poll_seconds": 0.2, "policy": "timer"}})
    sets = [mr_series(tmp_path / f"s{i}", slices=15, seed=i) for i in range(4)]
    results: list[int] = [None] * 4  # type: ignore[list-item]

    def send(i: int) -> None:
        results[i] = storescu(node.port, sets[i], aet=f"PACS{i}").returncode

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0, 0, 0]
    for i, files in enumerate(sets):
        study, series, _ = uids(files[0])
        (v1,) = wait_complete(node, study, series)
        names = sorted(p.name for p in v1.glob("*.dcm"))
        assert names == sorted(f"{uids(f)[2]}.dcm" for f in files)
        summary = __import__("json").loads((v1 / "summary.json").read_text())
        assert summary["calling_ae"] == f"PACS{i}"


def test_per_ae_quiet_period(node_factory, tmp_path):
    fast, slow = mr_series(tmp_path / "a", slices=2), mr_series(tmp_path / "b", slices=2, seed=3)
    node = node_factory({"scp": {"peers": [{"ae_title": "FAST", "quiet_seconds": 0.5},
                                           {"ae_title": "SLOW"}]},
                         "completion": {"quiet_seconds": 30, "poll_seconds": 0.2, "policy": "timer"}})
    assert storescu(node.port, fast, aet="FAST").returncode == 0
    assert storescu(node.port, slow, aet="SLOW").returncode == 0
    wait_complete(node, *uids(fast[0])[:2], timeout=25)  # well inside SLOW's 30 s
    time.sleep(1)  # not a wait for a result: a chance for a wrong early completion to show
    assert not node.versions(*uids(slow[0])[:2])  # 30 s default still running


def test_spool_temp_folder_is_on_spool_filesystem(node_factory):
    node = node_factory(OPEN)
    assert os.stat(node.spool / "tmp").st_dev == os.stat(node.spool / "incoming").st_dev


def test_default_accepts_local_senders_but_listed_peers_keep_their_addresses(node_factory):
    node = node_factory({"scp": {"peers": [{"ae_title": "FARAWAY", "hosts": ["10.9.8.0/24"]}]}})
    assert echoscu(node.port, aet="ANYLOCAL").returncode == 0  # allow_loopback (default)
    assert echoscu(node.port, aet="FARAWAY").returncode != 0


def test_max_associations_rejects_the_one_too_many(node_factory):
    node = node_factory({"scp": {"allow_any": True, "max_associations": 1}})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", node.port, ae_title="KNEENODE")
    try:
        assert held.is_established
        assert echoscu(node.port).returncode != 0
    finally:
        held.release()
    wait_for(lambda: echoscu(node.port).returncode == 0, 10, what="a free association slot")


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_multiframe_object_is_streamed_to_disk(node_factory, tmp_path):
    """A 300 MB Enhanced MR object: the node's peak memory must not grow by its size."""
    frames, rows, cols = 600, 512, 512
    ds = pydicom.dcmread(mr_series(tmp_path / "one", slices=1, rows=rows, columns=cols)[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.NumberOfFrames = frames
    ds.PixelData = np.zeros((frames, rows, cols), np.uint16).tobytes()
    big = tmp_path / "enhanced.dcm"
    ds.save_as(big, enforce_file_format=True)
    del ds
    node = node_factory(OPEN)
    before = _peak_rss_kb(node.proc.pid)
    done = storescu(node.port, [big], timeout=300)
    assert done.returncode == 0, done.stderr
    study, series, sop = uids(big)
    (v1,) = wait_complete(node, study, series, timeout=60)
    assert dataset_bytes(v1 / f"{sop}.dcm") == dataset_bytes(big)
    grown_mb = (_peak_rss_kb(node.proc.pid) - before) / 1024
    assert grown_mb < 64, f"peak RSS grew by {grown_mb:.0f} MB for a {big.stat().st_size >> 20} MB object"
