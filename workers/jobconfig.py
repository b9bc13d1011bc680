"""The job's own configuration: a snapshot taken at creation that every stage runs from.

A job records its profile, the route that chose it (and why), any ``--set`` overrides, its chain
(stage names and queues), the effective analysis settings and the model fingerprint (card and
checksums). Stages, retries and redeliveries rebuild the job's settings from this snapshot over
the worker's own settings (:func:`job_settings`), so a config change or a worker restart never
changes a job that already exists; ``kneenode reprocess`` makes a new job with a new snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kneenode.profiles import check_models, effective, model_fingerprint
from kneenode.settings import PROFILE_SECTIONS, DestinationSettings, JobsSettings, Settings
from scp.routing import RouteMatch
from scp.sender import Destination
from workers.stages import Stage, chain_for, load_stages

SNAPSHOT_VERSION = 1
#: The stage that compares with the priors; in a job's chain only when its route looks them up.
COMPARE_STAGE = "compare"
#: ``jobs`` keys that belong to the job (time limits, retries), not to the worker process.
JOB_KEYS: tuple[str, ...] = ("optional_stages", "stage_time_limit_s", "stage_time_limits",
                             "max_retries", "retry_min_backoff_s", "retry_max_backoff_s")


class StageRef(BaseModel):
    """One stage of the job's chain."""

    model_config = ConfigDict(extra="forbid")
    name: str
    queue: str


class JobConfig(BaseModel):
    """The snapshot stored in the job record (``config``) and in ``<job_dir>/config.json``."""

    model_config = ConfigDict(extra="forbid")
    version: int = SNAPSHOT_VERSION
    profile: str
    route: str
    route_reason: str
    sets: dict[str, Any] = Field(default_factory=dict)
    chain: list[StageRef]
    settings: dict[str, Any]
    models: dict[str, Any] = Field(default_factory=dict)
    reprocess_of: str = ""
    #: The route's ``priors`` settings when its lookup is on (docs/priors.md), else None.
    priors: dict[str, Any] | None = None
    #: Set on a prior job: the current job it was retrieved for (same snapshot otherwise).
    prior_of: str = ""

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.chain]


def _destinations(eff: Settings, match: RouteMatch) -> list[DestinationSettings]:
    """The route's destinations (else the profile's), plus the sender's ``return_to``."""
    dests = list(match.target.destinations if match.target.destinations is not None
                 else eff.delivery.destinations)
    if eff.delivery.to_sender and match.target.return_to:
        back = Destination.parse(match.target.return_to)
        if all((d.ae_title, d.host, d.port) != (back.ae_title, back.host, back.port) for d in dests):
            dests.append(DestinationSettings(ae_title=back.ae_title, host=back.host, port=back.port))
    return dests


def build_config(settings: Settings, stages: Sequence[Stage], match: RouteMatch, *,
                 profile: str | None = None, sets: Mapping[str, Any] | None = None,
                 reprocess_of: str = "") -> JobConfig:
    """The snapshot of a new job routed by ``match`` (profile: the route's unless given).

    Raises
    ------
    NodeError
        CONFIG_ERROR for an unknown profile or an invalid ``--set``.
    """
    name = profile or match.target.profile
    eff = effective(settings, name, dict(sets or {}))
    eff = eff.model_copy(update={"delivery": eff.delivery.model_copy(
        update={"destinations": _destinations(eff, match)})})
    priors = match.target.priors
    chain = [s for s in chain_for(stages, eff) if s.name != COMPARE_STAGE or priors.enabled]
    names = [s.name for s in chain]
    snapshot = {sec: getattr(eff, sec).model_dump(mode="json") for sec in PROFILE_SECTIONS}
    snapshot["jobs"] = {k: v for k, v in eff.jobs.model_dump(mode="json").items() if k in JOB_KEYS}
    return JobConfig(profile=name, route=match.name, route_reason=match.reason,
                     sets=dict(sets or {}), chain=[StageRef(name=s.name, queue=s.queue) for s in chain],
                     settings=snapshot, models=model_fingerprint(eff, names),
                     reprocess_of=reprocess_of,
                     priors=priors.model_dump(mode="json") if priors.enabled else None)


def startup_stages(settings: Settings) -> list[Stage]:
    """Every declared stage, after checking that each profile's model folders exist.

    Raises
    ------
    NodeError
        CONFIG_ERROR for a bad ``jobs.chain`` or a profile naming a missing model folder.
    """
    stages = load_stages(settings)
    check_models(settings, [s.name for s in stages])
    return stages


def job_settings(worker: Settings, config: JobConfig | Mapping[str, Any] | None) -> Settings:
    """The settings a job's stages run with: the worker's, with the job's snapshot applied.

    Jobs created before snapshots existed (no ``config``) run with the worker's settings.
    """
    if config is None:
        return worker
    cfg = config if isinstance(config, JobConfig) else JobConfig.model_validate(config)
    update: dict[str, Any] = {}
    for sec in PROFILE_SECTIONS:
        if sec in cfg.settings:
            update[sec] = type(getattr(worker, sec)).model_validate(cfg.settings[sec])
    jobs = cfg.settings.get("jobs")
    if jobs:
        update["jobs"] = JobsSettings.model_validate({**worker.jobs.model_dump(), **jobs})
    return worker.model_copy(update=update)


def job_chain(stages: Mapping[str, Stage], config: JobConfig | Mapping[str, Any] | None,
              fallback: Sequence[Stage]) -> list[Stage]:
    """The job's chain as this worker's stage objects (unknown names are left out: the
    middleware fails such a job with CONFIG_ERROR before running anything)."""
    if config is None:
        return list(fallback)
    cfg = config if isinstance(config, JobConfig) else JobConfig.model_validate(config)
    return [stages[s.name] for s in cfg.chain if s.name in stages]
