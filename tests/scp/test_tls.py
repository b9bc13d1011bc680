"""DICOM TLS: storescu with a client certificate signed by our CA gets in; without, it does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from scp.sender import Destination, echo
from tests.support.dcmtk import storescu
from tests.support.mr import mr_series


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throw-away CA with a server and a client certificate (openssl CLI)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=kneenode test CA", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", cwd=d)
    return d


def test_tls_with_client_certificate(node_factory, pki, tmp_path):
    files = mr_series(tmp_path / "s", slices=3)
    node = node_factory({"scp": {"allow_any": True, "tls": {
        "enabled": True, "cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
        "ca": str(pki / "ca.crt"), "require_client_cert": True}}})
    ok = storescu(node.port, files, extra=["+tls", str(pki / "client.key"), str(pki / "client.crt"),
                                            "+cf", str(pki / "ca.crt")])
    assert ok.returncode == 0, ok.stderr
    anonymous = storescu(node.port, files, extra=["+tla", "+cf", str(pki / "ca.crt")])
    assert anonymous.returncode != 0
    plain = storescu(node.port, files)
    assert plain.returncode != 0
    assert echo(Destination("KNEENODE", "127.0.0.1", node.port), timeout=5) is None  # no TLS
    stored = list((node.spool / "incoming").rglob("*.dcm"))
    assert len(stored) == 3


def test_delivery_over_tls_to_a_tls_peer(node_factory, pki, tmp_path):
    """The SCU side: a TLS destination with our client certificate (what delivery uses)."""
    from kneenode.settings import DestinationSettings
    from scp.delivery import target_of
    from scp.sender import send_files

    files = mr_series(tmp_path / "s", slices=2)
    node = node_factory({"scp": {"allow_any": True, "tls": {
        "enabled": True, "cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
        "ca": str(pki / "ca.crt"), "require_client_cert": True}}})
    target = target_of(DestinationSettings(ae_title="KNEENODE", host="127.0.0.1", port=node.port,
                                         tls=True, ca=pki / "ca.crt", cert=pki / "client.crt",
                                         key=pki / "client.key"))
    report = send_files(files, target.destination, tls=target.tls, timeout=30)
    assert report.ok, report
    no_cert = target_of(DestinationSettings(ae_title="KNEENODE", host="127.0.0.1", port=node.port,
                                          tls=True, ca=pki / "ca.crt"))
    assert not send_files(files, no_cert.destination, tls=no_cert.tls, timeout=30).ok
