"""Stage chains used by the job-system tests, plugged in through ``jobs.chain`` (the real mechanism).

Each stage does what the series summary's ``behaviour`` entry for it says, and appends
``start``/``end`` lines to ``<job_dir>/trace.log`` so tests can check that no stage completed twice:

``ok`` (default), ``sleep:S`` (Python sleep, cancel-aware), ``busy:S`` (pure-Python loop: dramatiq's
time limit can interrupt it), ``stuck:S`` (one C-level sleep: nothing but the watchdog can stop it),
``flaky:N`` (CUDA-OOM-like RuntimeError on the first N attempts), ``transient:N`` (NodeError
SEND_FAILED on the first N attempts), ``permanent`` (NodeError INVALID_FORMAT).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import Settings
from workers.analysis import prepare
from workers.stages import Stage, StageContext


def _trace(ctx: StageContext, name: str, what: str) -> None:
    with open(ctx.job_dir / "trace.log", "a", encoding="utf-8") as fh:
        fh.write(f"{name} {what} {ctx.attempt} {os.getpid()} {time.time():.6f}\n")
        fh.flush()
        os.fsync(fh.fileno())


def behave(ctx: StageContext, name: str) -> None:
    """Run the behaviour the series asks of stage ``name``."""
    _trace(ctx, name, "start")
    spec = str((ctx.summary.get("behaviour") or {}).get(name, "ok"))
    kind, _, arg = spec.partition(":")
    if kind == "sleep":
        end = time.monotonic() + float(arg)
        while time.monotonic() < end:
            ctx.check_cancelled()
            time.sleep(0.02)
    elif kind == "busy":
        end = time.monotonic() + float(arg)
        while time.monotonic() < end:
            sum(range(1000))
    elif kind == "stuck":
        time.sleep(float(arg))  # a C call: the in-thread time limit cannot interrupt it
    elif kind in ("flaky", "transient") and ctx.attempt <= int(arg):
        if kind == "flaky":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (test fault)")
        raise NodeError(ErrorCode.SEND_FAILED, f"destination refused (test fault {ctx.attempt})")
    elif kind == "permanent":
        raise NodeError(ErrorCode.INVALID_FORMAT, "series is not a volume (test fault)")
    (ctx.work_dir / "out.txt").write_text(name, encoding="utf-8")
    _trace(ctx, name, "end")


def _stage(name: str):
    def fn(ctx: StageContext) -> None:
        behave(ctx, name)

    fn.__name__ = name
    return fn


def fault_chain(settings: Settings) -> list[Stage]:
    """s1 (cpu) -> s2 (gpu) -> s3 (cpu) -> s4 (io) -> s5 (cpu, optional)."""
    del settings
    return [
        Stage("s1", "cpu", _stage("s1")),
        Stage("s2", "gpu", _stage("s2")),
        Stage("s3", "cpu", _stage("s3")),
        Stage("s4", "io", _stage("s4")),
        Stage("s5", "cpu", _stage("s5"), optional=True),
    ]


def prepare_chain(settings: Settings) -> list[Stage]:
    """The node's own prepare stage alone (independent of what the default chain grows into)."""
    del settings
    return [Stage("prepare", "cpu", prepare)]


def noop_chain(settings: Settings) -> list[Stage]:
    """Six no-op stages on the node's queues (benchmark of the job system's own overhead)."""
    del settings
    names = [("prepare", "cpu"), ("segment", "gpu"), ("quantify", "cpu"), ("shape", "gpu"),
             ("encode", "cpu"), ("deliver", "io")]
    return [Stage(n, q, _noop) for n, q in names]  # type: ignore[arg-type]


def _noop(ctx: StageContext) -> None:
    del ctx


def trace_lines(job_dir: Path) -> list[list[str]]:
    """The parsed trace of a job."""
    path = job_dir / "trace.log"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def delivery_chain(settings: Settings) -> list[Stage]:
    """s1 (cpu) -> deliver (io): the deliver stage follows the ``delivery`` retry policy."""
    del settings
    return [Stage("s1", "cpu", _stage("s1")), Stage("deliver", "io", _stage("deliver"))]


def _recording(name: str):
    def fn(ctx: StageContext) -> None:
        behave(ctx, name)
        seen = {"prefix": ctx.settings.encode.description_prefix,
                "configuration": ctx.settings.segment.configuration, "pid": os.getpid()}
        (ctx.work_dir / "settings.json").write_text(json.dumps(seen), encoding="utf-8")

    fn.__name__ = name
    return fn


def settings_chain(settings: Settings) -> list[Stage]:
    """s1 (cpu) -> s2 (gpu) -> s3 (cpu): each records the settings it ran with
    (``<stage>/settings.json``: encode.description_prefix, segment.configuration)."""
    del settings
    return [Stage("s1", "cpu", _recording("s1")), Stage("s2", "gpu", _recording("s2")),
            Stage("s3", "cpu", _recording("s3"))]


def lossy_encode_chain(settings: Settings) -> list[Stage]:
    """The node's own chain, whose ``encode`` loses one overlay image of a series described
    ``... LOSSY`` after writing it (a disk or encoder that drops a file cannot be produced on
    demand for real; this stands in for it). Every other series runs exactly the node's chain."""
    from dataclasses import replace

    from workers.analysis import node_chain

    return [replace(s, fn=_lossy_encode) if s.name == "encode" else s for s in node_chain(settings)]


def _lossy_encode(ctx: StageContext) -> None:
    from workers.analysis import encode

    encode(ctx)
    if "LOSSY" in str(ctx.summary.get("series_description", "")):
        min((ctx.work_dir / "overlay").glob("*.dcm")).unlink()


def upload_chain(settings: Settings) -> list[Stage]:
    """The node's own prepare (an uploaded series must read as a volume) -> s1 (cpu), which
    records the settings it ran with (``s1/settings.json``: the chosen profile's values)."""
    del settings
    return [Stage("prepare", "cpu", prepare), Stage("s1", "cpu", _recording("s1"))]


DEMO_CARD = {"algorithm_name": "kneenode-test-model", "algorithm_version": "7.1",
             "checkpoint_sha256": ["c" * 64]}


def _measure(ctx: StageContext) -> None:
    """Stands in for segment + quantify (no model needed): the series' UIDs, the test model's
    card, the side the summary's ``test_side`` names and two thickness values."""
    from pipeline.results import update_results

    behave(ctx, "measure")
    update_results(ctx.job_dir, {
        "study_uid": ctx.summary.get("study_uid"), "series_uid": ctx.summary.get("series_uid"),
        "model": DEMO_CARD, "side": ctx.summary.get("test_side"),
        "med_wb_fem_cart_mm_mean": float(ctx.summary.get("test_thickness", 2.0)),
        "femur_ml": 61.25})


def history_chain(settings: Settings) -> list[Stage]:
    """measure (cpu) -> deliver (io, a no-op) -> the node's real ``history`` stage (cpu)."""
    from workers.recording import HISTORY_STAGE, record_history

    del settings
    return [Stage("measure", "cpu", _measure), Stage("deliver", "io", _stage("deliver")),
            Stage(HISTORY_STAGE, "cpu", record_history)]
