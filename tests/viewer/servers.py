"""The peers of the browser test: Orthanc with DICOMweb, and a same-origin proxy serving OHIF.

Orthanc (Debian package, with the orthanc-dicomweb plugin) plays the PACS the node delivers to.
The proxy serves the prebuilt OHIF viewer (``tests/viewer/.ohif/<version>``, see install.sh) and
forwards ``/dicom-web/*`` to Orthanc, so the viewer and its data source share one origin (no CORS).
Every response the proxy gives is recorded, so a test can assert that nothing answered >= 400.

Orthanc 1.10 binds its ports on all addresses: callers run all of this inside a private network
namespace (see harness.py), where only loopback exists.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from kneenode.orthanc import orthanc_config as base_orthanc_config
from tests.support.procs import free_port, port_open, start, stop, wait_for

HERE = Path(__file__).resolve().parent
OHIF_VERSION = "3.13.2"
OHIF_DIST = HERE / ".ohif" / OHIF_VERSION
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"


def orthanc_config(root: Path, http_port: int, dicom_port: int) -> dict:
    """Orthanc's JSON configuration: the node's private Orthanc (loopback-only access, DICOMweb
    on, no authentication) with what the viewer needs on top."""
    return {
        **base_orthanc_config(root, aet=ORTHANC_AET, dicom_port=dicom_port, http_port=http_port),
        "Name": "kneenode-viewer-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "UnknownSopClassAccepted": True,
        "StableAge": 1,
        "HttpCompressionEnabled": False,
        "SyncStorageArea": False,  # a throw-away test PACS: no fsync per stored instance
        "SaveJobs": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        # No "Host": the plugin then writes BulkDataURIs with the request's Host header, which
        # the proxy passes on, so they point at the viewer's own origin.
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }


@dataclass
class Orthanc:
    """A real Orthanc process, configured in ``root``, stopped by PID."""

    root: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: object | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(self.root, self.http_port, self.dicom_port), indent=1))
        self.proc = start(["Orthanc", str(config)], log=self.root / "orthanc.log")
        wait_for(lambda: self._ready() or self.proc.poll() is not None, timeout, what="Orthanc")
        if self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited:\n{(self.root / 'orthanc.log').read_text()[-3000:]}")
        return self

    def _ready(self) -> bool:
        if not (port_open(self.http_port) and port_open(self.dicom_port)):
            return False
        try:
            return httpx.get(f"{self.url}/dicom-web/studies", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def upload(self, files: list[Path]) -> None:
        """Store files through Orthanc's REST API (the C-STORE path is scp.sender's)."""
        with httpx.Client(timeout=60) as client:
            for path in files:
                r = client.post(f"{self.url}/instances", content=path.read_bytes())
                r.raise_for_status()


def app_config(data_source_root: str = "/dicom-web") -> str:
    """OHIF's app-config.js: one DICOMweb data source on this origin, no tour, no telemetry."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "kneenode",
        "configuration": {
            "friendlyName": "kneenode test PACS (Orthanc)",
            "name": "orthanc",
            "wadoUriRoot": "/wado",
            "qidoRoot": data_source_root,
            "wadoRoot": data_source_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            # Not "pdf": OHIF would then ask for .../rendered, which Orthanc's DICOMweb plugin
            # does not offer for Encapsulated PDF (400); the bulk data route works.
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "kneenode",
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=1) + ";\n"


@dataclass
class Hit:
    """One response of the proxy."""

    method: str
    path: str
    status: int


def make_app(dist: Path, orthanc_url: str, hits: list[Hit]) -> Starlette:
    """OHIF's static files (SPA fallback to index.html) + ``/dicom-web`` and ``/wado`` to Orthanc."""
    # No keep-alive: Orthanc closes idle connections after about a second, and a request sent on
    # a connection it is closing fails ("server disconnected without sending a response").
    client = httpx.AsyncClient(base_url=orthanc_url, timeout=120,
                               limits=httpx.Limits(max_keepalive_connections=0))
    config_js = app_config()
    dist = dist.resolve()

    async def proxy(request: Request) -> Response:
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("accept", "content-type", "range", "host")}
        upstream = await client.send(
            client.build_request(request.method, url, headers=headers, content=await request.body()),
            stream=True)
        hits.append(Hit(request.method, url, upstream.status_code))
        keep = {k: v for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "content-length", "content-range")}
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=keep,
                                 background=_closer(upstream))

    async def static(request: Request) -> Response:
        rel = request.path_params.get("path", "")
        if rel == "app-config.js":
            hits.append(Hit(request.method, "/" + rel, 200))
            return Response(config_js, media_type="application/javascript")
        target = (dist / rel).resolve()
        if rel and target.is_file() and target.is_relative_to(dist):
            hits.append(Hit(request.method, "/" + rel, 200))
            # Hashed bundle names: let the browser cache them across the pages of one run.
            return FileResponse(target, headers={"Cache-Control": "max-age=3600"})
        if "." in rel.rsplit("/", 1)[-1]:  # a missing file, not an app route
            hits.append(Hit(request.method, "/" + rel, 404))
            return Response("not found", status_code=404)
        hits.append(Hit(request.method, "/" + rel, 200))
        return FileResponse(dist / "index.html")

    routes = [
        Route("/dicom-web/{rest:path}", proxy, methods=["GET", "POST"]),
        Route("/wado", proxy, methods=["GET"]),
        Route("/{path:path}", static, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _closer(upstream: httpx.Response):
    from starlette.background import BackgroundTask

    return BackgroundTask(upstream.aclose)


class Proxy:
    """The same-origin server, run by uvicorn in a thread of the calling process."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.port = free_port()
        self.hits: list[Hit] = []
        config = uvicorn.Config(make_app(dist, orthanc_url, self.hits), host="127.0.0.1",
                                port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self.thread.start()
        wait_for(lambda: port_open(self.port), 30, what="the viewer proxy")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def errors(self) -> list[Hit]:
        return [h for h in self.hits if h.status >= 400]


__all__ = ["Orthanc", "Proxy", "app_config", "make_app", "orthanc_config"]
