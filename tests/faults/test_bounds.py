"""Bounds on what is received: a deflate bomb, an oversized instance, a PDU declaring 4 GB.

The node's peak resident memory (VmHWM of the ``kneenode scp`` process, /proc) must grow by
less than 100 MB, the refused instance must leave nothing in the spool, and what was
acknowledged before must still be there.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import psutil
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.faults.common import (
    EXPLICIT_LE,
    MR,
    assert_kept,
    edge_config,
    peak_rss_mb,
    send_acknowledged,
    send_raw,
    sop_uid,
    stored_copies,
    tmp_files,
)
from tests.faults.wire import associate_rq, connect, pdu, read_pdu
from tests.support.dcmtk import echoscu
from tests.support.mr import mr_series

LIMIT = 64 * 1024**2


def _deflate_bomb(template: Path, out: Path, inflated: int) -> Path:
    """A Deflated Explicit VR LE file whose Pixel Data inflates to ``inflated`` zero bytes."""
    ds = pydicom.dcmread(template)
    del ds.PixelData
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    element = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(head.getvalue() + element)
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        body += deflater.compress(zeros)
    body += deflater.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with open(out, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        fh.write(body)
    return out


def test_deflate_bomb_is_refused_with_bounded_memory(node_factory, tmp_path):
    node = node_factory(edge_config(max_instance_bytes=LIMIT))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=3))
    template = mr_series(tmp_path / "b", slices=1, seed=3)[0]
    bomb = _deflate_bomb(template, tmp_path / "bomb.dcm", 200 * 1024**2)
    assert bomb.stat().st_size < 400 * 1024  # ~200 KB on the wire
    before = peak_rss_mb(node.proc.pid)
    (status,) = send_raw(node.port, [bomb], [DeflatedExplicitVRLittleEndian])
    assert status == 0xA702
    grown = peak_rss_mb(node.proc.pid) - before
    assert grown < 100, f"node peak RSS grew by {grown:.0f} MB on a deflate bomb"
    assert not stored_copies(node.spool, sop_uid(template))
    assert tmp_files(node.spool) == []
    assert "inflates past scp.max_instance_bytes" in node.log()
    assert_kept(node.spool, first)


def test_oversized_instance_is_refused_and_the_association_goes_on(node_factory, tmp_path):
    node = node_factory(edge_config(max_instance_bytes=1024 * 1024))
    big = mr_series(tmp_path / "big", slices=1, rows=1024, columns=1024, seed=4)[0]  # 2 MiB
    small = mr_series(tmp_path / "small", slices=2, seed=5)
    statuses = send_raw(node.port, [big, *small])
    assert statuses == [0xA702, 0x0000, 0x0000]
    assert not stored_copies(node.spool, sop_uid(big))
    assert tmp_files(node.spool) == []
    assert_kept(node.spool, small)


def test_pdu_declaring_4_gb_is_aborted_before_it_is_read(node_factory, tmp_path):
    node = node_factory(edge_config())
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=3))
    rss_before = psutil.Process(node.proc.pid).memory_info().rss / 1e6
    peak_before = peak_rss_mb(node.proc.pid)
    s = connect(node.port)
    s.sendall(associate_rq([(1, MR, [EXPLICIT_LE])]))
    ac = read_pdu(s, timeout=30)
    assert ac is not None and ac[0] == 0x02
    s.sendall(pdu(0x04, b"", declared=0xFFFFFFF0))  # P-DATA-TF header: 4 GB follow
    pushed = 0
    chunk = b"\0" * (1 << 20)
    try:
        while pushed < 512 * 1024**2:
            s.sendall(chunk)
            pushed += len(chunk)
    except OSError:
        pass
    assert pushed < 64 * 1024**2, f"the node took {pushed >> 20} MiB of a 4 GB PDU"
    got = read_pdu(s, timeout=10) if pushed == 0 else None
    assert got is None or got[0] == 0x07
    s.close()
    assert "over scp.max_declared_pdu" in node.log()
    grown = peak_rss_mb(node.proc.pid) - peak_before
    assert grown < 100, f"node peak RSS grew by {grown:.0f} MB"
    assert psutil.Process(node.proc.pid).memory_info().rss / 1e6 - rss_before < 100
    assert echoscu(node.port).returncode == 0
    assert_kept(node.spool, first)
