"""Access control rules (pure function, no network)."""

from __future__ import annotations

from kneenode.settings import PeerSettings, ScpSettings
from scp.access import check_association


def _scp(**kw) -> ScpSettings:
    return ScpSettings(peers=[PeerSettings(ae_title="PACS", hosts=["10.1.0.0/16"]),
                              PeerSettings(ae_title="MODALITY")], **kw)


def test_listed_peer_from_its_network_is_allowed():
    d = check_association(_scp(), calling_ae="PACS", called_ae="KNEENODE", address="10.1.2.3")
    assert d.allowed and d.peer is not None and d.peer.ae_title == "PACS"


def test_listed_peer_from_elsewhere_is_rejected_even_on_loopback():
    for addr in ("10.2.0.1", "127.0.0.1"):
        d = check_association(_scp(), calling_ae="PACS", called_ae="KNEENODE", address=addr)
        assert not d.allowed and "not allowed from" in d.reason


def test_peer_without_hosts_is_allowed_from_anywhere():
    d = check_association(_scp(), calling_ae="MODALITY", called_ae="X", address="192.0.2.7")
    assert d.allowed


def test_unknown_ae_remote_rejected_local_allowed_unless_disabled():
    scp = _scp()
    assert not check_association(scp, calling_ae="WHO", called_ae="K", address="192.0.2.7").allowed
    assert check_association(scp, calling_ae="WHO", called_ae="K", address="127.0.0.1").allowed
    assert check_association(scp, calling_ae="WHO", called_ae="K", address="::1").allowed
    strict = _scp(allow_loopback=False)
    assert not check_association(strict, calling_ae="WHO", called_ae="K",
                                 address="127.0.0.1").allowed


def test_allow_any_and_called_ae_check():
    assert check_association(_scp(allow_any=True), calling_ae="WHO", called_ae="K",
                             address="192.0.2.7").allowed
    strict = _scp(require_called_ae=True)
    d = check_association(strict, calling_ae="MODALITY", called_ae="OTHER", address="10.1.0.1")
    assert not d.allowed and "called AE" in d.reason
