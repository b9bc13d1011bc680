"""Result delivery with a durable outbox: only what a destination has not accepted is resent.

The outbox is a JSON file in the job folder (written temp + fsync + rename after every answered
instance), listing per destination every result instance with its state, attempts and last
status. A crash or a retry picks up exactly the unsent instances; a destination that is down
costs one failed association per attempt, nothing more.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info

from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import DeliverySettings, DestinationSettings, Settings
from scp.sender import Destination, FileResult, send_files

log = get_logger(__name__)


@dataclass(frozen=True)
class Target:
    """A resolved destination with its TLS context (None for plain TCP)."""

    destination: Destination
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """What remains unsent after an attempt, per destination (empty = all delivered)."""

    pending: dict[str, int]
    errors: dict[str, str]

    @property
    def done(self) -> bool:
        return not any(self.pending.values())


def target_of(d: DestinationSettings) -> Target:
    """A destination's address and TLS context (also the priors' PACS, scp.priors)."""
    dest = Destination(d.ae_title, d.host, d.port)
    if not d.tls:
        return Target(dest)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=d.ca)
    ctx.check_hostname = False
    if d.ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    if d.cert is not None and d.key is not None:
        ctx.load_cert_chain(d.cert, d.key)
    return Target(dest, ctx)


def resolve_targets(settings: Settings) -> list[Target]:
    """The destinations of a job: ``delivery.destinations`` of its effective settings (the job
    creator has already put the route's destinations and the sender's ``return_to`` there)."""
    return [target_of(d) for d in settings.delivery.destinations]


def destinations_of(settings: Settings) -> list[str]:
    """The ``AET@HOST:PORT`` names of a job's destinations (its effective settings)."""
    return [str(t.destination) for t in resolve_targets(settings)]


def reset_destination(path: Path, destination: str) -> int:
    """Mark every instance of one destination pending again (an operator's resend); returns
    how many. A destination the outbox does not list yet is sent everything anyway."""
    if not path.exists():
        return 0
    box = json.loads(path.read_text())
    entries = box["destinations"].get(destination, {})
    for entry in entries.values():
        entry["state"] = "pending"
    write_json_atomic(path, box)
    return len(entries)


def outbox_summary(path: Path) -> dict[str, dict[str, Any]]:
    """Per destination: instances sent / total, the statuses it answered (counts by
    ``0xNNNN``), its last detail and the last attempt's answer (time, error); empty without
    an outbox (nothing delivered yet, or no destinations)."""
    if not path.exists():
        return {}
    box = json.loads(path.read_text())
    out: dict[str, dict[str, Any]] = {}
    for dest, entries in box.get("destinations", {}).items():
        statuses: dict[str, int] = {}
        for e in entries.values():
            shown = "no answer" if e.get("status") is None else f"0x{int(e['status']):04X}"
            statuses[shown] = statuses.get(shown, 0) + 1
        details = [e["detail"] for e in entries.values() if e.get("detail")]
        out[dest] = {"total": len(entries),
                     "sent": sum(1 for e in entries.values() if e["state"] == "sent"),
                     "statuses": statuses, "detail": details[-1] if details else "",
                     "last": box.get("answers", {}).get(dest, {})}
    return out


def load_outbox(path: Path, files: list[Path], targets: list[Target]) -> dict[str, Any]:
    """Read the outbox, adding any destination or file it does not list yet (as pending)."""
    box: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"destinations": {}}
    for target in targets:
        entries = box["destinations"].setdefault(str(target.destination), {})
        for f in files:
            sop = str(read_file_meta_info(f).MediaStorageSOPInstanceUID)
            entries.setdefault(sop, {"file": f.name, "state": "pending", "attempts": 0,
                                     "status": None, "detail": ""})
    return box


def deliver(
    outbox_path: Path, files: list[Path], targets: list[Target], options: DeliverySettings
) -> DeliveryReport:
    """Send every pending instance to every target (one association each); update the outbox.

    Never raises for peer problems: the report says what is still pending and why.
    """
    by_name = {f.name: f for f in files}
    box = load_outbox(outbox_path, files, targets)
    write_json_atomic(outbox_path, box)
    pending: dict[str, int] = {}
    errors: dict[str, str] = {}
    for target in targets:
        key = str(target.destination)
        entries = box["destinations"][key]
        todo = [by_name[e["file"]] for e in entries.values()
                if e["state"] != "sent" and e["file"] in by_name]
        if todo:
            def record(result: FileResult, entries: dict[str, Any] = entries) -> None:
                entry = entries[result.sop_instance_uid]
                entry.update(attempts=entry["attempts"] + 1, status=result.status,
                             detail=result.detail, state="sent" if result.ok else "pending")
                write_json_atomic(outbox_path, box)

            report = send_files(todo, target.destination, calling_ae=options.calling_ae,
                                timeout=options.timeout, tls=target.tls, on_progress=record)
            if report.error:
                errors[key] = report.error
            elif report.failed:
                first = report.failed[0]
                shown = "no answer" if first.status is None else f"0x{first.status:04X}"
                errors[key] = f"{len(report.failed)} refused, e.g. {first.path.name}: {shown}"
        pending[key] = sum(1 for e in entries.values() if e["state"] != "sent")
        box.setdefault("answers", {})[key] = {"t": round(time.time(), 3), "attempted": len(todo),
                                              "pending": pending[key], "error": errors.get(key, "")}
        log.info("delivery attempt", destination=key, sent=len(entries) - pending[key],
                 pending=pending[key], error=errors.get(key, ""))
    write_json_atomic(outbox_path, box)
    return DeliveryReport(pending, errors)
