"""A fast stand-in for the node's chain whose stages wait at a gate the test opens.

Same stage names and queues as :func:`workers.analysis.node_chain` (prepare cpu, segment gpu,
quantify cpu, encode cpu, deliver io), no models: ``encode`` copies the first three source
instances as the "results" and ``deliver`` is the node's real delivery (durable outbox, C-STORE).
Each stage first waits until ``<data_dir>/gates/<stage>`` exists, so a test can hold a job in
``running:<stage>`` for as long as a fault takes, then let it go on.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from kneenode.settings import Settings
from workers.analysis import deliver, series_files
from workers.stages import Stage, StageContext

STAGES = (("prepare", "cpu"), ("segment", "gpu"), ("quantify", "cpu"), ("encode", "cpu"),
          ("deliver", "io"))


def gate(data_dir: Path, stage: str) -> Path:
    """The file that lets ``stage`` run."""
    return data_dir / "gates" / stage


def open_gates(data_dir: Path, *stages: str) -> None:
    """Let ``stages`` (all when none are named) run from now on."""
    (data_dir / "gates").mkdir(parents=True, exist_ok=True)
    for stage in stages or [s for s, _ in STAGES]:
        gate(data_dir, stage).touch()


def _wait_gate(ctx: StageContext, stage: str) -> None:
    while not gate(ctx.settings.data_dir, stage).exists():
        ctx.check_cancelled()
        time.sleep(0.02)


def _encode(ctx: StageContext) -> None:
    out = ctx.work_dir / "mr"
    out.mkdir()
    for f in series_files(ctx.series_path)[:3]:
        shutil.copyfile(f, out / f.name)


def _stage(name: str):
    def fn(ctx: StageContext) -> None:
        _wait_gate(ctx, name)
        if name == "encode":
            _encode(ctx)
        elif name == "deliver":
            deliver(ctx)

    fn.__name__ = name
    return fn


def gated_chain(settings: Settings) -> list[Stage]:
    """prepare -> segment -> quantify -> encode -> deliver, each behind its gate."""
    del settings
    return [Stage(name, queue, _stage(name)) for name, queue in STAGES]  # type: ignore[arg-type]
