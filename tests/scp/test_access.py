"""Access control rules (pure function, no network): the peers the routes name."""

from __future__ import annotations

from kneenode.settings import Settings
from scp.access import check_association
from scp.routing import Origin, match_series, quiet_seconds_for


def _settings(**scp) -> Settings:
    return Settings(scp=scp, routes=[
        {"name": "pacs", "calling_ae": ["PACS"], "hosts": ["10.1.0.0/16"]},
        {"name": "modality", "calling_ae": ["MODALITY"], "quiet_seconds": 60},
        {"name": "research", "calling_ae": ["RESEARCH"], "called_ae": ["KNEE_RESEARCH"]},
        {"name": "ward", "hosts": ["10.7.0.0/24"]},
    ])


def test_listed_peer_from_its_network_is_allowed():
    d = check_association(_settings(), calling_ae="PACS", called_ae="KNEENODE", address="10.1.2.3")
    assert d.allowed and d.route is not None and d.route.name == "pacs"


def test_listed_peer_from_elsewhere_is_rejected_even_on_loopback():
    for addr in ("10.2.0.1", "127.0.0.1"):
        d = check_association(_settings(), calling_ae="PACS", called_ae="KNEENODE", address=addr)
        assert not d.allowed and "not allowed from" in d.reason


def test_peer_without_hosts_is_allowed_from_anywhere_and_hosts_alone_admit_an_address():
    d = check_association(_settings(), calling_ae="MODALITY", called_ae="X", address="192.0.2.7")
    assert d.allowed
    d = check_association(_settings(), calling_ae="ANYONE", called_ae="X", address="10.7.0.9")
    assert d.allowed and d.route is not None and d.route.name == "ward"


def test_a_route_with_a_called_ae_admits_only_that_virtual_ae():
    s = _settings(allow_loopback=False)
    ok = check_association(s, calling_ae="RESEARCH", called_ae="KNEE_RESEARCH", address="192.0.2.1")
    assert ok.allowed and ok.route is not None and ok.route.name == "research"
    wrong = check_association(s, calling_ae="RESEARCH", called_ae="KNEENODE", address="192.0.2.1")
    assert not wrong.allowed and "called AE 'KNEENODE'" in wrong.reason


def test_unknown_ae_remote_rejected_local_allowed_unless_disabled():
    s = _settings()
    assert not check_association(s, calling_ae="WHO", called_ae="K", address="192.0.2.7").allowed
    assert check_association(s, calling_ae="WHO", called_ae="K", address="127.0.0.1").allowed
    assert check_association(s, calling_ae="WHO", called_ae="K", address="::1").allowed
    strict = _settings(allow_loopback=False)
    assert not check_association(strict, calling_ae="WHO", called_ae="K",
                                 address="127.0.0.1").allowed


def test_allow_any_and_called_ae_check_knows_the_virtual_aes():
    assert check_association(_settings(allow_any=True), calling_ae="WHO", called_ae="K",
                             address="192.0.2.7").allowed
    strict = _settings(require_called_ae=True)
    d = check_association(strict, calling_ae="MODALITY", called_ae="OTHER", address="10.1.0.1")
    assert not d.allowed and "called AE" in d.reason
    for called in ("KNEENODE", "KNEE_RESEARCH"):  # its own title and every route's virtual AE
        assert check_association(strict, calling_ae="MODALITY", called_ae=called,
                                 address="10.1.0.1").allowed


def test_series_routing_first_match_wins_and_says_why():
    s = Settings(routes=[
        {"name": "ct", "calling_ae": ["PACS"], "modality": ["CT"], "action": "ignore"},
        {"name": "dess", "calling_ae": ["PACS"], "description": "dess"},
        {"name": "pacs", "calling_ae": ["PACS"], "body_part": "^knee$"},
    ])
    base = {"calling_ae": "PACS", "called_ae": "KNEENODE", "address": "10.0.0.1", "modality": "MR"}
    assert match_series(s, {**base, "modality": "CT"}).name == "ct"
    m = match_series(s, {**base, "series_description": "Sag 3D DESS"})
    assert m.name == "dess" and "calling_ae=PACS" in m.reason and "DESS" in m.reason
    m = match_series(s, {**base, "body_part_examined": "KNEE"})
    assert m.name == "pacs" and "body_part" in m.reason
    other = match_series(s, {**base, "calling_ae": "OTHER"})
    assert other.name == "default" and other.reason == "no route matched"


def test_quiet_period_from_the_first_route_of_the_sender_that_sets_one():
    s = _settings()
    assert quiet_seconds_for(s, Origin("MODALITY", "KNEENODE", "10.0.0.1")) == 60
    assert quiet_seconds_for(s, Origin("PACS", "KNEENODE", "10.1.0.1")) == 20  # completion default
