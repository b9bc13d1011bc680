"""The SCU side: ``kneenode echo`` / ``kneenode send`` against DCMTK's storescp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from scp.sender import Destination, collect_files, echo, send_files
from tests.support.dcmtk import dcmtk_env
from tests.support.mr import mr_series
from tests.support.procs import free_port, port_open, start, stop, wait_for

KNEENODE = str(Path(sys.executable).with_name("kneenode"))


@pytest.fixture
def storescp(tmp_path):
    """DCMTK storescp accepting only uncompressed syntaxes (its default), files into out/."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = start(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                 log=tmp_path / "storescp.log", env=dcmtk_env())
    wait_for(lambda: port_open(port), 10, what="storescp")
    yield Destination("STORESCP", "127.0.0.1", port), out
    stop(proc)


def received_sops(out: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in out.iterdir() if p.is_file()}


def test_destination_parse():
    assert Destination.parse("PACS@10.0.0.1:104") == Destination("PACS", "10.0.0.1", 104)
    assert Destination.parse("P@[::1]:11112").host == "::1"
    for bad in ("PACS10.0.0.1:104", "PACS@host", "PACS@host:0", "TOO_LONG_AE_TITLE_X@h:1"):
        with pytest.raises(ValueError):
            Destination.parse(bad)


def test_echo_and_send_cli(storescp, tmp_path):
    dest, out = storescp
    files = mr_series(tmp_path / "series", slices=12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    done = subprocess.run([KNEENODE, "echo", str(dest)], check=False, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "success" in done.stdout
    done = subprocess.run([KNEENODE, "send", str(tmp_path / "series"), "--to", str(dest)],
                          check=False, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "sent 12/12" in done.stdout
    got = received_sops(out)
    for f in files:
        sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert np.array_equal(pydicom.dcmread(got[sop]).pixel_array, pydicom.dcmread(f).pixel_array)


def test_send_falls_back_to_an_accepted_syntax(storescp):
    dest, out = storescp
    src = Path(get_testdata_file("MR_small_jp2klossless.dcm"))
    assert pydicom.dcmread(src).file_meta.TransferSyntaxUID == JPEG2000Lossless
    report = send_files([src], dest)
    assert report.ok, report
    (received,) = received_sops(out).values()
    ds = pydicom.dcmread(received)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # storescp's default
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(src).pixel_array)


def test_unreachable_peer_and_non_dicom_files_are_reported(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    files = mr_series(tmp_path / "s", slices=2)
    dest = Destination("NOBODY", "127.0.0.1", free_port())
    assert echo(dest, timeout=5) is None
    report = send_files([junk, *files], dest, timeout=5)
    assert not report.ok and "not established" in report.error
    assert {r.path for r in report.failed} == {junk, *files}
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    done = subprocess.run([KNEENODE, "send", str(junk), "--to", "bad-destination"],
                          check=False, capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "AET@HOST:PORT" in done.stderr


def test_collect_files_recurses_and_rejects_missing(tmp_path):
    files = mr_series(tmp_path / "a" / "b", slices=3)
    assert collect_files([tmp_path / "a"]) == files
    with pytest.raises(FileNotFoundError):
        collect_files([tmp_path / "missing"])


def test_json_logs_carry_uids_not_patient_identity(node_factory, tmp_path):
    files = mr_series(tmp_path / "s", slices=3)
    node = node_factory({"logging": {"format": "json", "level": "DEBUG"},
                         "completion": {"quiet_seconds": 0.5, "poll_seconds": 0.1}})
    report = send_files(files, Destination("KNEENODE", "127.0.0.1", node.port), calling_ae="LOGS")
    assert report.ok
    ds = pydicom.dcmread(files[0])
    wait_for(lambda: "series complete" in node.log(), 20, what="completion")
    records = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    stored = [r for r in records if r.get("event") == "instance stored"]
    assert len(stored) == 3 and all(r["series_uid"] == ds.SeriesInstanceUID for r in stored)
    assert any(r.get("event") == "series complete" for r in records)
    text = node.log()
    assert str(ds.PatientName) not in text and str(ds.PatientID) not in text
