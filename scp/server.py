"""The Storage SCP process: pynetdicom server + spool + completion monitor.

:func:`start_scp` is what ``kneenode scp`` and ``kneenode serve`` call. It is the only place with
process-wide pynetdicom settings (chunked receive, temp folder on the spool's filesystem), set at
start, never at import.
"""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom import config as pydicom_config
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from kneenode.logs import get_logger
from kneenode.settings import Settings, TlsSettings
from scp.announce import OnComplete
from scp.completion import CompletionMonitor
from scp.connections import ConnectionGuard, EdgeRequestHandler, EdgeServer
from scp.early import EarlyCompletion
from scp.handlers import handle_echo, handle_requested, handle_store
from scp.pynetdicom_hooks import TESTED_WITH, install_receive_file_factory, version_supported
from scp.receive import ReceiveRegistry, TmpSweeper
from scp.spool import Spool

log = get_logger(__name__)


def accepted_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can decode here, uncompressed first.

    Compressed syntaxes come from pydicom's decoder registry, so installing a decoder plugin
    (pylibjpeg-*, pyjpegls, gdcm) widens what the SCP accepts without code changes.
    """
    native = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
              ExplicitVRBigEndian]
    compressed = [uid for uid, decoder in _PIXEL_DATA_DECODERS.items()
                  if uid not in native and decoder[0].is_available]
    return [str(u) for u in native] + sorted(str(u) for u in compressed)


def tls_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """Server-side TLS context from the settings (None when TLS is off)."""
    if not tls.enabled:
        return None
    if tls.cert is None or tls.key is None:
        raise ValueError("scp.tls.enabled needs scp.tls.cert and scp.tls.key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca)
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    if tls.ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_ae(settings: Settings) -> AE:
    """The application entity with every storage SOP class, C-ECHO and the timeouts."""
    ae = AE(ae_title=settings.scp.ae_title)
    syntaxes = accepted_transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    # The edge's own caps (scp.connections) count associations; pynetdicom's count would also
    # include connections still negotiating and threads of closed ones, so it is set out of reach.
    ae.maximum_associations = 1_000_000
    ae.acse_timeout = settings.scp.acse_timeout
    ae.dimse_timeout = settings.scp.dimse_timeout
    ae.network_timeout = settings.scp.network_timeout
    ae.maximum_pdu_size = settings.scp.max_pdu
    return ae


@dataclass
class ScpHandle:
    """A running SCP. ``stop()`` is graceful: no new associations, in-flight ones finish."""

    ae: AE
    server: ThreadedAssociationServer
    monitor: CompletionMonitor
    spool: Spool
    port: int
    sweeper: TmpSweeper | None = None
    _stopped: bool = field(default=False)

    def stop(self, grace_seconds: float = 30) -> None:
        """Stop listening, let active associations finish (up to ``grace_seconds``), then stop."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()  # closes the listening socket; running associations continue
        guard = getattr(self.server, "guard", None)
        if guard is not None:  # connections still negotiating have nothing to finish
            guard.end("the node is stopping", pending_only=True)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(
            a.is_established for a in self.server.active_associations
        ):
            time.sleep(0.05)
        if guard is not None:  # wakes any still blocked reading a PDU
            guard.end("the node is stopping", pending_only=False)
        for assoc in self.server.active_associations:
            if assoc.is_established:  # still busy after the grace period
                log.warning("aborting association still open at shutdown",
                            calling_ae=str(assoc.requestor.ae_title))
            assoc.abort()  # also idle connections that never sent an A-ASSOCIATE-RQ
        self.monitor.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        log.info("storage SCP stopped")


def start_scp(settings: Settings, on_complete: OnComplete) -> ScpHandle:
    """Start the Storage SCP and its completion monitor (non-blocking)."""
    spool = Spool(settings.spool_dir, fsync=settings.spool.fsync)
    for stale in spool.tmp.iterdir():  # never acknowledged: a crash mid-receive
        stale.unlink(missing_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    # Header reads on the hot path check UIDs themselves (scp.spool.is_valid_uid); pydicom's
    # per-element value validation doubled the handler's time.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    tempfile.tempdir = str(spool.tmp)  # received data sets land on the spool fs
    if not version_supported():
        log.warning("pynetdicom version not the one scp.pynetdicom_hooks was written for",
                    tested=TESTED_WITH)
    registry = ReceiveRegistry(settings.scp.max_instance_bytes)
    install_receive_file_factory(registry.new_file)
    ae = build_ae(settings)
    monitor = CompletionMonitor(spool, settings, on_complete)
    early = EarlyCompletion(spool, settings, monitor)  # completion.policy "auto", on release
    guard = ConnectionGuard(settings.scp)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [settings, guard]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [spool, settings, early.stored, registry]),
        *early.handlers(),
    ]
    server = ae.make_server(
        (settings.scp.host, settings.scp.port),
        evt_handlers=handlers,
        ssl_context=tls_context(settings.scp.tls),
        server_class=EdgeServer,
        request_handler=EdgeRequestHandler,
    )
    assert isinstance(server, EdgeServer)
    server.guard = guard
    threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True).start()
    port = int(server.server_address[1])
    monitor.start()
    sweeper = TmpSweeper(registry, spool.tmp, settings.spool.tmp_sweep_seconds,
                         settings.spool.tmp_grace_seconds)
    sweeper.start()
    log.info("storage SCP listening", ae_title=settings.scp.ae_title, host=settings.scp.host,
             port=port, spool=str(spool.root), tls=settings.scp.tls.enabled)
    return ScpHandle(ae=ae, server=server, monitor=monitor, spool=spool, port=port,
                     sweeper=sweeper)
