"""PDUs that crash pynetdicom 3.0's reactor are answered at once, and the node keeps serving.

Each case: a good series is acknowledged first, the malformed bytes go over a raw loopback
socket, the peer must get an answer (A-ASSOCIATE-RJ or A-ABORT) within seconds, not a
timeout, and a good storescu afterwards succeeds; nothing acknowledged is lost.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.common import EXPLICIT_LE, MR, assert_kept, edge_config, send_acknowledged
from tests.faults.wire import associate_rq, c_store_rq, connect, p_data, read_pdu
from tests.support.mr import mr_series


def _associated(port: int):
    s = connect(port)
    s.sendall(associate_rq([(1, MR, [EXPLICIT_LE])]))
    ac = read_pdu(s, timeout=30)
    assert ac is not None and ac[0] == 0x02, ac  # A-ASSOCIATE-AC
    return s


def _no_transfer_syntax(port: int):
    s = connect(port)
    s.sendall(associate_rq([(1, MR, [])]))
    return s, 0x03  # A-ASSOCIATE-RJ


def _empty_sop_instance_uid(port: int):
    s = _associated(port)
    s.sendall(p_data(1, 0x03, c_store_rq(MR, "")))
    return s, 0x07  # A-ABORT


def _random_dimse_bytes(port: int):
    s = _associated(port)
    s.sendall(p_data(1, 0x03, os.urandom(300)))
    return s, 0x07


@pytest.mark.parametrize("attack", [_no_transfer_syntax, _empty_sop_instance_uid,
                                    _random_dimse_bytes], ids=lambda f: f.__name__.strip("_"))
def test_malformed_pdu_is_answered_promptly_and_the_node_keeps_serving(node_factory, tmp_path,
                                                                       attack):
    # Every deadline at 120 s: an answer within the 60 s read is the node's own, never a timeout's.
    node = node_factory(edge_config(negotiation_timeout=120, pdu_timeout=120,
                                    network_timeout=120, acse_timeout=120, dimse_timeout=120))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=3))
    s, expected = attack(node.port)
    got = read_pdu(s, timeout=60)
    assert got is not None and got[0] == expected, got
    assert read_pdu(s, timeout=30) is None  # and the connection is closed
    s.close()
    later = send_acknowledged(node.port, mr_series(tmp_path / "b", slices=3, seed=2))
    assert_kept(node.spool, first + later)
    assert node.proc.poll() is None
