"""What the console's pages show, read from the job store, the job folder and the node's health.

Plain functions returning dicts for the templates; no HTTP here. Patient name and ID are read
from the series headers only when ``http.show_patient`` is on and only for the page being drawn
(never stored, never logged).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from kneenode.joblist import closed_text, short_id, when
from kneenode.settings import Settings
from pipeline.encode.pdf import pdf_document
from pipeline.labels import TISSUE_KEYS
from pipeline.quantify.results import THICKNESS_REGIONS
from pipeline.quantify.t2 import T2_REGIONS
from pipeline.results import T2_PARTS
from scp.delivery import destinations_of, outbox_summary
from workers.broker import queue_depths
from workers.health import health
from workers.jobconfig import job_settings
from workers.jobstate import TERMINAL, JobStore

SEND_STATES = ("done", "running", "failed", "retry", "skipped", "pending")
RESULTS_FILE = "results.json"


def stage_cells(job: dict[str, Any]) -> list[dict[str, str]]:
    """One cell per stage of the job's chain: name and state (done, running, failed, pending)."""
    state = str(job.get("state", ""))
    cells = []
    for name in job.get("chain") or []:
        st = (job.get("stages") or {}).get(name, {})
        got = str(st.get("state") or "pending")
        if got == "error":  # an attempt that raised: failed, or waiting for its retry
            got = "retry" if state == "retry_wait" else "failed"
        if got == "running" and state.split(":")[0] in TERMINAL:
            got = "failed" if state == "failed" and job.get("stage") == name else "pending"
        if state == "retry_wait" and job.get("stage") == name:
            got = "retry"
        dur = st.get("duration")
        cells.append({"name": name, "state": got,
                      "title": f"{name}: {got}" + (f" ({dur:.1f} s)" if dur else "")})
    return cells


def patient(job: dict[str, Any]) -> dict[str, str]:
    """PatientName / PatientID of the job's series (first instance's header), empty if none."""
    folder = Path(str(job.get("series_path") or ""))
    first = next(iter(sorted(folder.glob("*.dcm"))), None) if folder.is_dir() else None
    if first is None:
        return {"name": "", "id": ""}
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True,
                             specific_tags=["PatientName", "PatientID"])
    except (OSError, ValueError, InvalidDicomError):  # the page shows no name; nothing else
        return {"name": "", "id": ""}
    return {"name": str(ds.get("PatientName", "")), "id": str(ds.get("PatientID", ""))}


def sender_of(job: dict[str, Any]) -> str:
    """Who sent the series: its calling AE, or ``upload`` (the uploader's name) for uploads."""
    if job.get("source") == "upload":
        return "upload"
    return str(job.get("calling_ae") or "")


def job_row(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """One line of the jobs list."""
    err = job.get("error") if isinstance(job.get("error"), dict) else {}
    row = {
        "id": job["id"], "short": short_id(job["id"]), "state": job.get("state", ""),
        "base": str(job.get("state", "")).split(":")[0], "profile": job.get("profile") or "",
        "sender": sender_of(job), "description": job.get("series_description") or "",
        "stages": stage_cells(job), "progress": job.get("progress") or 0,
        "code": err.get("code", ""), "hint": err.get("hint", ""), "message": err.get("message", ""),
        "created": when(job.get("created")), "updated": when(job.get("updated")),
        "reason": job.get("reason") or "", "user": job.get("user") or "",
    }
    if settings.http.show_patient:
        row["patient"] = patient(job)
    return row


def job_rows(store: JobStore, settings: Settings, *, state: str | None, sender: str | None,
             limit: int = 100) -> tuple[list[dict[str, Any]], list[str]]:
    """The jobs list (newest first) filtered by state and sender, and every sender seen."""
    jobs = store.list_jobs(state or None, 1000)
    senders = sorted({sender_of(j) for j in jobs} - {""})
    if sender:
        jobs = [j for j in jobs if sender_of(j) == sender]
    return [job_row(j, settings) for j in jobs[:limit]], senders


def _events(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for e in events:
        details = {k: v for k, v in e.items() if k not in ("t", "kind", "user", "operator")}
        out.append({"t": when(e.get("t")), "kind": str(e.get("kind", "")),
                    "user": str(e.get("user") or e.get("operator") or ""),
                    "details": json.dumps(details, default=str) if details else ""})
    return out


def delivery(job: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Per destination of the job: what it answered (from the outbox), also those not tried."""
    job_dir = Path(str(job.get("job_dir") or ""))
    answered = outbox_summary(job_dir / "outbox.json") if job.get("job_dir") else {}
    try:
        names = destinations_of(job_settings(settings, job.get("config")))
    except ValueError:  # a snapshot this node cannot read: show what the outbox says
        names = []
    out = []
    for name in dict.fromkeys([*names, *answered]):
        got = answered.get(name, {})
        last = got.get("last") or {}
        out.append({"name": name, "sent": got.get("sent", 0), "total": got.get("total", 0),
                    "statuses": ", ".join(f"{k} x {v}" for k, v in got.get("statuses", {}).items()),
                    "detail": got.get("detail", ""), "error": last.get("error", ""),
                    "when": when(last.get("t"))})
    return out


def job_detail(store: JobStore, settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """Everything the job page shows: the record, stages with timings, events, completion,
    delivery, and the actions its state allows."""
    row = job_row(job, settings)
    stages = []
    for name in job.get("chain") or []:
        st = (job.get("stages") or {}).get(name, {})
        dur = st.get("duration")
        stages.append({"name": name, "state": st.get("state") or "pending",
                       "attempts": st.get("attempts") or "", "start": when(st.get("start")),
                       "end": when(st.get("end")), "worker": st.get("worker") or "",
                       "duration": f"{dur:.2f}" if dur is not None else ""})
    base = row["base"]
    job_dir = Path(str(job.get("job_dir") or ""))
    dests = delivery(job, settings)
    return {
        **row, "job": job, "stage_rows": stages, "events": _events(store.events(job["id"])),
        "closed": closed_text(job) or job.get("closed_by") or "",
        "completion_wait_s": job.get("completion_wait_s") or "",
        "delivery": dests,
        "has_results": (job_dir / RESULTS_FILE).is_file(),
        "can": {
            "retry": base in ("done", "failed", "cancelled") and not job.get("purged"),
            "reprocess": not job.get("purged") and bool(job.get("series_path")),
            "cancel": base not in TERMINAL,
            "resend": base in ("done", "failed") and bool(dests) and (job_dir / "encode").is_dir(),
            "review": base == "review",
        },
    }


def results_table(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The measurements of ``results.json`` grouped for the results page: thickness (mm),
    volumes (mL), T2 (ms, only regions with a value) and shape (BScore, fit quality).

    Each value keeps its key and the exact number, so a reader (and the test) can compare the
    page with the file; the page shows it rounded.
    """
    def cell(key: str) -> dict[str, Any]:
        return {"key": key, "value": results.get(key)}

    thickness = [{"name": r, "cells": [cell(f"{r}_mm_{s}") for s in ("mean", "std", "median")]}
                 for r in THICKNESS_REGIONS]
    volumes = [{"name": t, "cells": [cell(f"{t}_ml")]} for t in TISSUE_KEYS.values()]
    t2 = [{"name": f"{r}{p}", "cells": [cell(f"{r}{p}_t2_ms_{s}") for s in ("mean", "std", "median")]}
          for r in T2_REGIONS for p in T2_PARTS]
    t2 = [row for row in t2 if any(c["value"] is not None for c in row["cells"])]
    shape = [{"name": k, "cells": [cell(k)]} for k in ("bscore", "nsm_assd_bone_mm",
                                                        "nsm_assd_cart_mm")]
    return {"thickness": thickness, "volumes": volumes, "t2": t2, "shape": shape}


def read_results(job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's ``results.json``, None before quantify wrote it."""
    path = Path(str(job.get("job_dir") or "")) / RESULTS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def pdf_report(job: dict[str, Any]) -> bytes | None:
    """The PDF inside the job's Encapsulated PDF result object, None when there is none."""
    folder = Path(str(job.get("job_dir") or "")) / "encode" / "pdf"
    first = next(iter(sorted(folder.glob("*.dcm"))), None) if folder.is_dir() else None
    if first is None:
        return None
    return pdf_document(pydicom.dcmread(first))


_GPU_CACHE: dict[str, Any] = {"t": 0.0, "value": None}


def gpu_status() -> list[dict[str, str]]:
    """The GPUs ``nvidia-smi`` reports (name, memory used/total, load), cached 10 s; empty on a
    machine without one."""
    if time.monotonic() - _GPU_CACHE["t"] < 10:
        return _GPU_CACHE["value"] or []
    out: list[dict[str, str]] = []
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            text = subprocess.run(
                [exe, "--query-gpu=name,memory.used,memory.total,utilization.gpu",
                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
                check=True).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        for line in text.strip().splitlines():
            name, used, total, load = (p.strip() for p in line.split(","))
            out.append({"name": name, "memory": f"{used} / {total} MiB", "load": f"{load} %"})
    _GPU_CACHE.update(t=time.monotonic(), value=out)
    return out


def front(store: JobStore, settings: Settings) -> dict[str, Any]:
    """Health at a glance: the /health document, queue depths, jobs by state, GPUs, last errors."""
    status, doc = health(store, settings)
    page: dict[str, Any] = {"http_status": status, "health": doc, "gpus": gpu_status(),
                            "gpu_devices": settings.jobs.gpu_devices,
                            "depths": {}, "counts": {}, "errors": []}
    if doc.get("redis") != "ok":
        return page
    page["depths"] = queue_depths(store.client, settings.jobs)
    page["counts"] = {k: v for k, v in store.count_by_state().items() if v}
    page["errors"] = [job_row(j, settings) for j in store.list_jobs("failed", 5)]
    return page
