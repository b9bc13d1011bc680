"""The C-STORE / C-ECHO SCU: ``kneenode send``, ``kneenode echo`` and result delivery.

One association per call. Files are sent as stored (no decode) when the peer accepts their
transfer syntax; otherwise they are decoded and sent in an uncompressed syntax the peer accepted.
The report lists every file with its status, so a caller can retry only what was not sent.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

MAX_CONTEXTS = 128
_FALLBACKS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_DEST_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets); ValueError names the problem."""
        m = _DEST_RE.match(text.strip())
        if not m or not 0 < int(m["port"]) < 65536:
            raise ValueError(f"expected AET@HOST:PORT, got {text!r}")
        return cls(m["aet"], m["host"].strip("[]"), int(m["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class FileResult:
    """The outcome of one file: ``status`` is the DIMSE status, or None if never answered."""

    path: Path
    sop_instance_uid: str
    status: int | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)


@dataclass
class SendReport:
    """What happened to every file of a send."""

    destination: Destination
    results: list[FileResult] = field(default_factory=list)
    error: str = ""

    @property
    def sent(self) -> list[FileResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.error and all(r.ok for r in self.results)


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files given directly, plus every file below given folders (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def _meta(path: Path) -> tuple[UID, UID, str] | None:
    try:
        meta = read_file_meta_info(path)
        return (UID(meta.MediaStorageSOPClassUID), UID(meta.TransferSyntaxUID),
                str(meta.MediaStorageSOPInstanceUID))
    except Exception:  # noqa: BLE001 - not a DICOM file: reported per file
        return None


def _client_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = False
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _make_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae: AE, dest: Destination, tls: ssl.SSLContext | None) -> Association:
    tls_args = (tls, None) if tls is not None else None  # None: no server hostname check
    return ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                        tls_args=tls_args)  # type: ignore[arg-type]


def echo(dest: Destination, *, calling_ae: str = "KNEENODE", timeout: float = 30,
         tls: ssl.SSLContext | None = None) -> int | None:
    """C-ECHO; returns the status (0 = success) or None when no association/answer."""
    ae = _make_ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, dest, tls)
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if rsp and "Status" in rsp else None
    finally:
        assoc.release()


def send_files(
    files: Sequence[Path],
    dest: Destination,
    *,
    calling_ae: str = "KNEENODE",
    timeout: float = 60,
    tls: ssl.SSLContext | None = None,
    on_progress: Callable[[FileResult], None] | None = None,
) -> SendReport:
    """C-STORE ``files`` to ``dest`` over one association; never raises for peer problems."""
    report = SendReport(dest)
    metas = {f: _meta(f) for f in files}
    for f, m in metas.items():
        if m is None:
            report.results.append(FileResult(f, "", None, "not a DICOM file"))
    wanted = sorted({(m[0], m[1]) for m in metas.values() if m is not None})
    if not wanted:
        return report
    ae = _make_ae(calling_ae, timeout)
    for sop_class, syntax in _contexts(wanted):
        ae.add_requested_context(sop_class, syntax)
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream files as stored; only used with paths
    assoc = _associate(ae, dest, tls)
    if not assoc.is_established:
        report.error = f"association with {dest} not established (rejected, aborted or unreachable)"
        report.results.extend(FileResult(f, m[2], None, report.error)
                              for f, m in metas.items() if m is not None)
        return report
    try:
        for path, m in metas.items():
            if m is None:
                continue
            result = _send_one(assoc, path, *m)
            report.results.append(result)
            if on_progress is not None:
                on_progress(result)
            if not assoc.is_established:
                report.error = "association lost during the send"
                break
        sent = {r.path for r in report.results}
        report.results.extend(FileResult(f, m[2], None, report.error)
                              for f, m in metas.items() if m is not None and f not in sent)
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def _contexts(wanted: Sequence[tuple[UID, UID]]) -> list[tuple[UID, list[UID]]]:
    """Requested contexts: each SOP class with its own syntax plus uncompressed fallbacks."""
    by_class: dict[UID, list[UID]] = {}
    for sop_class, syntax in wanted:
        by_class.setdefault(sop_class, [])
        for ts in (syntax, *_FALLBACKS):
            if ts not in by_class[sop_class]:
                by_class[sop_class].append(ts)
    contexts = [(c, [ts]) for c, tss in by_class.items() for ts in tss]
    if len(contexts) > MAX_CONTEXTS:  # many SOP classes: one context each, all syntaxes
        contexts = [(c, tss) for c, tss in by_class.items()][:MAX_CONTEXTS]
    return contexts


def _send_one(assoc: Association, path: Path, sop_class: UID, syntax: UID, sop_uid: str
              ) -> FileResult:
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    try:
        if (sop_class, syntax) in accepted:
            rsp = assoc.send_c_store(path)
        else:
            fallback = next((ts for ts in _FALLBACKS if (sop_class, ts) in accepted), None)
            if fallback is None:
                return FileResult(path, sop_uid, None, "peer accepted no transfer syntax for it")
            rsp = assoc.send_c_store(_transcoded(path, fallback))
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        return FileResult(path, sop_uid, None, f"{type(exc).__name__}: {exc}")
    if rsp is None or "Status" not in rsp:
        return FileResult(path, sop_uid, None, "no response (timeout or abort)")
    return FileResult(path, sop_uid, int(rsp.Status))


def _transcoded(path: Path, syntax: UID) -> Dataset:
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    if syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
