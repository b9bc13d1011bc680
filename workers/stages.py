"""The declared chain of stages, and what a stage function receives.

A chain is a list of :class:`Stage` (name, queue, function). The node's chain is
:func:`workers.analysis.node_chain`; ``jobs.chain`` names the ``module:function`` that returns the
chain to run, so a deployment (or a test) plugs in its own list through the same mechanism.

Stage functions are plain ``fn(ctx: StageContext) -> None``: they read the series and earlier
stages' outputs from the job folder and write their own outputs under ``ctx.work_dir``. They raise
:class:`kneenode.errors.NodeError` for known failures. Idempotency is provided here: a finished
stage leaves ``<job_dir>/stages/<name>.done`` and is not run again; an unfinished stage's
``work_dir`` is emptied before it is re-run.
"""

from __future__ import annotations

import importlib
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic
from kneenode.settings import Settings

Queue = Literal["cpu", "gpu", "io"]


class StageCancelled(Exception):
    """Raised by :meth:`StageContext.check_cancelled`; ends the stage without an error."""


@dataclass(frozen=True)
class StageContext:
    """Everything a stage function may use; no broker, no redis.

    Attributes
    ----------
    job_id, job_dir
        The job and its folder (``data_dir/jobs/<job_id>``).
    series_path
        Folder of the complete series version (``*.dcm`` + ``summary.json``).
    work_dir
        This stage's output folder (``job_dir/<stage>``), empty at the start of an attempt.
    summary
        The series summary (see :mod:`scp.summary`).
    settings
        The node settings.
    device
        ``cpu`` or ``cuda:N`` for GPU stages (``cpu`` elsewhere).
    attempt
        1 for the first attempt of this stage in this run.
    cancelled
        Set when the job is cancelled while the stage runs; long stages may poll it.
    progress
        ``progress(done, total)`` for long steps (segmentation tiles); ``kneenode analyze``
        draws it as a progress bar, the node leaves it unset.
    """

    job_id: str
    job_dir: Path
    series_path: Path
    work_dir: Path
    summary: dict[str, Any]
    settings: Settings
    device: str = "cpu"
    attempt: int = 1
    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[int, int], None] | None = None

    def check_cancelled(self) -> None:
        """Raise :class:`StageCancelled` if the job was cancelled (call it between steps)."""
        if self.cancelled.is_set():
            raise StageCancelled(self.job_id)

    def stage_dir(self, name: str) -> Path:
        """Output folder of another (earlier) stage."""
        return self.job_dir / name


StageFn = Callable[[StageContext], None]


@dataclass(frozen=True)
class Stage:
    """One declared stage: a name, the queue whose workers run it, and a plain function.

    An ``optional`` stage runs only when ``jobs.optional_stages`` (of the job's profile) lists
    it and, if given, ``enabled(settings)`` holds (``shape``: an NSM model is configured).
    """

    name: str
    queue: Queue
    fn: StageFn
    optional: bool = False
    enabled: Callable[[Settings], bool] | None = None


def load_stages(settings: Settings) -> list[Stage]:
    """Import ``jobs.chain`` and return every stage it declares, optional ones included.

    A worker runs any of them: which ones a job runs is decided at job creation from the job's
    own settings (:func:`chain_for`) and stored with the job.

    Raises
    ------
    NodeError
        CONFIG_ERROR when the path does not import, or the chain is malformed.
    """
    spec = settings.jobs.chain
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        stages: list[Stage] = list(factory(settings))
    except (ImportError, AttributeError, TypeError) as exc:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"jobs.chain '{spec}' cannot be loaded: {exc}") from exc
    names = [s.name for s in stages]
    if not stages or len(set(names)) != len(names):
        raise NodeError(ErrorCode.CONFIG_ERROR, f"jobs.chain '{spec}' has no or duplicate stages: {names}")
    for s in stages:
        if s.queue not in ("cpu", "gpu", "io"):
            raise NodeError(ErrorCode.CONFIG_ERROR, f"stage '{s.name}' has unknown queue '{s.queue}'")
    return stages


def chain_for(stages: Sequence[Stage], settings: Settings) -> list[Stage]:
    """The stages a job with ``settings`` (its effective settings) runs, in order."""
    wanted = set(settings.jobs.optional_stages)
    return [s for s in stages if not s.optional
            or (s.name in wanted and (s.enabled is None or s.enabled(settings)))]


def load_chain(settings: Settings) -> list[Stage]:
    """The stages a job with these settings runs (:func:`load_stages` then :func:`chain_for`)."""
    return chain_for(load_stages(settings), settings)


def next_stage(chain: Sequence[Stage], name: str) -> Stage | None:
    """The stage after ``name``, or None at the end of the chain."""
    names = [s.name for s in chain]
    i = names.index(name)
    return chain[i + 1] if i + 1 < len(chain) else None


# -- idempotency markers ----------------------------------------------------------------------
def marker_path(job_dir: Path, stage: str) -> Path:
    """The done-marker of a stage."""
    return job_dir / "stages" / f"{stage}.done"


def is_done(job_dir: Path, stage: str) -> bool:
    """Whether the stage has committed in this job folder."""
    return marker_path(job_dir, stage).exists()


def mark_done(job_dir: Path, stage: str, info: dict[str, Any]) -> None:
    """Commit a stage: write its marker atomically (temp + fsync + rename + dir fsync)."""
    path = marker_path(job_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, info)


def clear_from(job_dir: Path, chain_names: Sequence[str], stage: str) -> None:
    """Forget ``stage`` and every later stage (``kneenode retry --from-stage``)."""
    for name in chain_names[list(chain_names).index(stage) :]:
        marker_path(job_dir, name).unlink(missing_ok=True)


def fresh_work_dir(job_dir: Path, stage: str) -> Path:
    """Empty the stage's output folder before an attempt (left-overs of a crashed attempt)."""
    work = job_dir / stage
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


# -- the node's chain -------------------------------------------------------------------------
# The node's stages (prepare -> segment -> quantify -> shape -> encode -> deliver) are declared in
# :func:`workers.analysis.node_chain`, the default of ``jobs.chain``.
