"""Connections cannot starve the edge: half-open peers, caps per address, deadlines, idle peers.

Real ``kneenode scp`` processes, raw loopback sockets for the misbehaving peers (their bytes are
built by hand in tests.faults.wire) and DCMTK storescu / pynetdicom for the good ones.

No assertion here measures speed (a loaded machine may be slow at anything). "At once" is shown by
what the node answers (an A-ASSOCIATE-RJ, never a deadline's A-ABORT) or by the order of events
(a sender served while the misbehaving peers are still held); a deadline is shown by the node's
log line and by not firing early. Read timeouts are the only upper bounds.
"""

from __future__ import annotations

import os
import socket
import time

from pynetdicom import AE

from tests.faults.common import (
    EXPLICIT_LE,
    MR,
    assert_kept,
    edge_config,
    send_acknowledged,
)
from tests.faults.wire import answer_after, associate_rq, connect, p_data, read_pdu
from tests.support.dcmtk import echoscu, storescu
from tests.support.mr import mr_series

VERIFICATION = "1.2.840.10008.1.1"


def _still_open(sock: socket.socket) -> bool:
    """Nothing received (no A-ABORT yet) and not closed: a non-blocking peek."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # bytes (an A-ABORT) or b"" (closed)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _half_open(port: int, n_partial: int, n_garbage: int) -> list[socket.socket]:
    """Connections that send the start of an A-ASSOCIATE-RQ, or a few random bytes, then stop."""
    rq = associate_rq([(1, MR, [EXPLICIT_LE])])
    socks = []
    for i in range(n_partial + n_garbage):
        s = connect(port)
        s.sendall(rq[: 10 + i] if i < n_partial else os.urandom(3))
        socks.append(s)
    return socks


def test_sixteen_half_open_connections_do_not_lock_out_a_sender(node_factory, tmp_path):
    node = node_factory(edge_config(negotiation_timeout=10))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=3))
    socks = _half_open(node.port, 8, 8)
    one = mr_series(tmp_path / "b", slices=1, seed=1)
    done = storescu(node.port, one)
    assert done.returncode == 0, done.stdout + done.stderr
    # Served while all 16 were still held: not one has had its deadline's A-ABORT yet.
    assert all(_still_open(s) for s in socks)

    # ... and each of them is ended at the negotiation deadline (A-ABORT, then closed).
    for s in socks:
        got = read_pdu(s, timeout=60)
        assert got is None or got[0] == 0x07, got
        assert read_pdu(s, timeout=60) is None
        s.close()
    assert node.log().count("at the deadline") == 16 and "scp.negotiation_timeout" in node.log()
    assert_kept(node.spool, first + one)


def test_a_silent_connection_is_ended_at_the_negotiation_deadline(node_factory, tmp_path):
    node = node_factory(edge_config(negotiation_timeout=2))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=2))
    s = connect(node.port)  # sends nothing at all
    took, got = answer_after(s, timeout=60)
    assert got is None or got[0] == 0x07, got
    assert took > 1.5, f"ended after {took:.1f} s, before the 2 s deadline"
    assert "no complete A-ASSOCIATE-RQ within 2 s" in node.log()
    s.close()
    assert echoscu(node.port).returncode == 0
    assert_kept(node.spool, first)


def test_per_address_cap_rejects_at_once_and_other_addresses_still_get_in(node_factory, tmp_path):
    node = node_factory(edge_config(max_associations=3, max_associations_per_address=2,
                                    negotiation_timeout=120))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=2))
    holders = []
    for _ in range(2):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="KNEENODE")
        assert assoc.is_established
        holders.append(assoc)
    try:
        third = echoscu(node.port)  # a third one from 127.0.0.1: an A-ASSOCIATE-RJ, no wait
        assert third.returncode != 0 and "Rejected" in third.stdout + third.stderr
        assert "scp.max_associations_per_address" in node.log()
        other = AE(ae_title="OTHER")
        other.add_requested_context(VERIFICATION)
        elsewhere = other.associate("127.0.0.1", node.port, ae_title="KNEENODE",
                                    bind_address=("127.0.0.2", 0))
        assert elsewhere.is_established  # the third slot, from another address
        full = other.associate("127.0.0.1", node.port, ae_title="KNEENODE",
                               bind_address=("127.0.0.3", 0))
        assert full.is_rejected  # all three slots taken: scp.max_associations
        assert "(scp.max_associations)" in node.log()
        elsewhere.release()
    finally:
        for a in holders:
            a.release()
    assert echoscu(node.port).returncode == 0
    assert_kept(node.spool, first)


def test_pending_cap_answers_a_rejection_at_once(node_factory, tmp_path):
    node = node_factory(edge_config(max_pending_per_address=3, negotiation_timeout=60))
    silent = [connect(node.port, source="127.0.0.2") for _ in range(3)]
    extra = connect(node.port, source="127.0.0.2")
    got = read_pdu(extra, timeout=30)  # the deadline is 60 s: this answer cannot be its abort
    assert got is not None and got[0] == 0x03, got  # A-ASSOCIATE-RJ
    assert got[1][1:] == b"\x02\x03\x02"  # transient, service provider, local limit exceeded
    assert "scp.max_pending_per_address" in node.log()
    one = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=1))  # other address: in
    for s in silent + [extra]:
        s.close()
    assert_kept(node.spool, one)


def test_idle_association_is_aborted_after_network_timeout(node_factory, tmp_path):
    node = node_factory(edge_config(network_timeout=2))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=2))
    s = connect(node.port)
    s.sendall(associate_rq([(1, VERIFICATION, ["1.2.840.10008.1.2"])]))
    ac = read_pdu(s, timeout=30)
    assert ac is not None and ac[0] == 0x02
    took, got = answer_after(s, timeout=60)  # send nothing more
    assert got is None or got[0] == 0x07, got
    assert took > 1.5, f"idle association ended after {took:.1f} s, before the 2 s timeout"
    s.close()
    assert echoscu(node.port).returncode == 0
    assert_kept(node.spool, first)


def test_a_pdu_trickled_past_its_deadline_is_aborted(node_factory, tmp_path):
    """Slowloris inside an association: one byte of a P-DATA-TF every 0.5 s."""
    node = node_factory(edge_config(pdu_timeout=2, network_timeout=600, dimse_timeout=600))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=2))
    s = connect(node.port)
    s.sendall(associate_rq([(1, MR, [EXPLICIT_LE])]))
    ac = read_pdu(s, timeout=30)
    assert ac is not None and ac[0] == 0x02
    pdu = p_data(1, 0x03, b"\0" * 200)
    t0 = time.monotonic()
    aborted = None
    for byte in pdu:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        s.settimeout(0.5)
        try:
            aborted = s.recv(10)
            break
        except TimeoutError:
            continue
    took = time.monotonic() - t0
    assert aborted is not None and aborted[:1] == b"\x07", aborted
    assert took > 1.5, f"aborted after {took:.1f} s, before the 2 s PDU deadline"
    assert "scp.pdu_timeout" in node.log()  # that deadline, not the (600 s) network timeout
    s.close()
    assert echoscu(node.port).returncode == 0
    assert_kept(node.spool, first)


def test_stalled_tls_handshakes_do_not_block_the_accept_loop(node_factory, pki, tmp_path):
    """TCP connections to the TLS port that never send a ClientHello, then a real TLS sender."""
    node = node_factory(edge_config(negotiation_timeout=20, tls={
        "enabled": True, "cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
        "ca": str(pki / "ca.crt"), "require_client_cert": True}))
    stalled = [connect(node.port) for _ in range(3)]
    files = mr_series(tmp_path / "a", slices=2)
    done = storescu(node.port, files, timeout=60, extra=[
        "+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(_still_open(s) for s in stalled)  # served before their deadline ended them
    for s in stalled:
        s.close()
    assert_kept(node.spool, files)


def test_stop_is_prompt_with_connections_holding_part_of_a_pdu(node_factory, tmp_path):
    node = node_factory(edge_config(negotiation_timeout=120, pdu_timeout=120))
    first = send_acknowledged(node.port, mr_series(tmp_path / "a", slices=2))
    socks = _half_open(node.port, 3, 3)
    assert echoscu(node.port).returncode == 0  # served beside them (and they have been read)
    code = node.stop()
    # A graceful exit, not the KILL after 20 s: the 120 s deadlines were not waited for.
    assert code == 0, node.log()[-2000:]
    for s in socks:
        s.close()
    assert_kept(node.spool, first)
