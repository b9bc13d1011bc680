"""A private Orthanc (Debian package) as the receiving PACS, for ``kneenode demo`` and the tests.

Started with its own configuration, storage and ports under a folder; stopped by PID. Orthanc
1.10 binds every address: its HTTP API refuses remote clients (``RemoteAccessAllowed`` false) and
its DICOM port only accepts the AE titles listed here.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc; :meth:`stop` ends it by PID."""

    process: subprocess.Popen[bytes]
    folder: Path
    aet: str
    dicom_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def destination(self) -> str:
        """``AET@127.0.0.1:PORT`` for kneenode's delivery settings."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> Any:
        """GET a REST path and decode its JSON."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as rsp:
            return json.loads(rsp.read())

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Every series of a study: MainDicomTags plus the instance count."""
        found = self.post("/tools/find", {"Level": "Series", "Expand": True,
                                          "Query": {"StudyInstanceUID": study_uid}})
        return [{**s["MainDicomTags"], "instances": len(s["Instances"])} for s in found]

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return json.loads(rsp.read())

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def orthanc_config(folder: Path, *, aet: str, dicom_port: int, http_port: int,
                   modalities: dict[str, list[Any]] | None = None, dicomweb: bool = True
                   ) -> dict[str, Any]:
    """The configuration of a private Orthanc under ``folder`` (pure): loopback-only REST, no
    authentication, stores from any AE, DICOMweb on when the plugin is installed."""
    config: dict[str, Any] = {
        "Name": "kneenode-orthanc",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities or {},
        "HttpTimeout": 60,
        "StableAge": 2,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb and DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": True},
    }
    return config


def start_orthanc(folder: Path, *, aet: str = "ORTHANC", dicom_port: int = 0, http_port: int = 0,
                  timeout: float = 60, modalities: dict[str, list[Any]] | None = None
                  ) -> Orthanc:
    """Start Orthanc with a private configuration and wait until its REST API answers.

    ``modalities`` are Orthanc's ``DicomModalities`` (``{"NAME": [AET, host, port]}``): the peers
    allowed to query it and the C-MOVE destinations it knows (docs/priors.md).
    """
    if shutil.which("Orthanc") is None:
        raise FileNotFoundError("Orthanc is not installed (Debian package 'orthanc')")
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or _free_port()
    http_port = http_port or _free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, aet=aet, dicom_port=dicom_port,
                                                http_port=http_port, modalities=modalities),
                                 indent=2))
    with open(folder / "orthanc.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT)
    node = Orthanc(proc, folder, aet, dicom_port, http_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: see {folder / 'orthanc.log'}")
        try:
            node.get("/system")
            return node
        except OSError:
            time.sleep(0.2)
    node.stop()
    raise TimeoutError(f"Orthanc did not answer within {timeout}s")
