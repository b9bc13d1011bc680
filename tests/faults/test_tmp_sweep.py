"""Orphan temp files in spool/tmp are swept while the node runs; a live receive's file is not."""

from __future__ import annotations

import time

from tests.faults.common import (
    EXPLICIT_LE,
    MR,
    assert_kept,
    dataset_bytes,
    edge_config,
    sop_uid,
    tmp_files,
)
from tests.faults.wire import associate_rq, c_store_rq, connect, p_data, read_pdu, store_status
from tests.support.mr import mr_series
from tests.support.procs import wait_for

GRACE = 0.5


def _half_sent(port: int, path, uid: str):
    """An association that has sent the C-STORE command and half of the data set."""
    s = connect(port)
    s.sendall(associate_rq([(1, MR, [EXPLICIT_LE])]))
    ac = read_pdu(s, timeout=30)
    assert ac is not None and ac[0] == 0x02
    data = dataset_bytes(path)
    s.sendall(p_data(1, 0x03, c_store_rq(MR, uid)) + p_data(1, 0x00, data[: len(data) // 2]))
    return s, data[len(data) // 2:]


def test_orphan_temp_files_are_swept_but_not_a_live_receive(node_factory, tmp_path):
    config = edge_config(network_timeout=120)
    config["spool"] = {"tmp_sweep_seconds": 0.2, "tmp_grace_seconds": GRACE}
    node = node_factory(config)
    live_file, aborted_file = mr_series(tmp_path / "a", slices=2, rows=256, columns=256)
    live, rest = _half_sent(node.port, live_file, sop_uid(live_file))
    wait_for(lambda: len(tmp_files(node.spool)) == 1, 30, what="the live receive's temp file")
    (live_tmp,) = tmp_files(node.spool)
    wait_for(lambda: time.time() - (node.spool / "tmp" / live_tmp).stat().st_mtime > GRACE * 2,
             30, what="the live temp file to be older than the grace period")

    aborted, _ = _half_sent(node.port, aborted_file, sop_uid(aborted_file))
    wait_for(lambda: len(tmp_files(node.spool)) == 2, 30, what="the second temp file")
    aborted.close()  # gone mid-receive: its temp file is an orphan now
    wait_for(lambda: tmp_files(node.spool) == [live_tmp], 30, what="the orphan to be swept")
    assert "removed orphan temp files" in node.log()

    live.sendall(p_data(1, 0x02, rest))  # the live receive finishes: nothing of it was lost
    rsp = read_pdu(live, timeout=30)
    assert rsp is not None and rsp[0] == 0x04 and store_status(rsp[1]) == 0x0000
    live.close()
    assert_kept(node.spool, [live_file])
    wait_for(lambda: tmp_files(node.spool) == [], 30, what="an empty temp folder")
