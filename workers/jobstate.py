"""The job store in redis: one self-describing record per job, and its append-only events.

Keys (all under ``<namespace>:``):

``job:<id>`` (hash)
    id, study/series UIDs, version, series_path, job_dir, calling_ae, called_ae, address, state,
    stage, run, chain (JSON list), progress, attempts, created/updated (epoch s), previous_job,
    reason, error (JSON with code, message, hint), route, route_reason, profile, config (JSON: the
    job's configuration snapshot, :mod:`workers.jobconfig`), reprocess_of / reprocessed_as (linked
    jobs of ``kneenode reprocess``), and one ``stage:<name>`` field per stage (JSON: state, start,
    end, duration, attempts, worker).
``job:<id>:events`` (list of JSON)
    Append-only: created, selected/ignored, queued, start, end, retry, failed, cancelled, ...
``jobs`` (sorted set, score = creation time), ``series:<uid>:jobs`` (list: every job of a series,
oldest first, for the link to an earlier job), ``key:<series_uid>:<version>`` (job id of that
series version: creation is idempotent), ``lease:<job>:<stage>`` (message id running that stage),
``metrics:*`` (cross-process counters and stage-duration histograms).

States: ``created`` (record written, first message not yet sent), ``queued``, ``running:<stage>``,
``retry_wait``, ``review`` (QC failed and ``qc.on_fail = "hold"``: waits for ``kneenode release``
or ``discard``, see :mod:`workers.review`), ``done``, ``failed``, ``ignored``, ``cancelled``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

TERMINAL: frozenset[str] = frozenset({"done", "failed", "ignored", "cancelled"})
STATES: tuple[str, ...] = (
    "created", "queued", "running", "retry_wait", "review", "done", "failed", "ignored", "cancelled"
)
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600
)
_JSON_FIELDS = ("chain", "error", "config", "priors")

_TRANSITION = """
local st = redis.call("hget", KEYS[1], "state")
if not st or redis.call("hget", KEYS[1], "run") ~= ARGV[1] then return 0 end
local base = string.match(st, "^[^:]+")
if base == "done" or base == "failed" or base == "ignored" or base == "cancelled" then return 0 end
for i = 2, #ARGV, 2 do redis.call("hset", KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""


def now() -> float:
    """Wall-clock time in epoch seconds (records are read on other hosts)."""
    return time.time()


def new_job_id() -> str:
    """A short, time-ordered, unique job id (sortable by creation second)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class JobStore:
    """Read and write job records; every method is one short redis round trip or transaction.

    Parameters
    ----------
    client
        A redis client created with ``decode_responses=True``.
    namespace
        Key prefix (``jobs.namespace``).
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client: Any = client  # decode_responses=True: str values (redis-py types say bytes)
        self.ns = namespace
        self._release = client.register_script(_RELEASE)
        self._transition = client.register_script(_TRANSITION)

    # -- keys -------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """A namespaced redis key."""
        return ":".join((self.ns, *parts))

    # -- creation ---------------------------------------------------------------------------
    def create(self, series_uid: str, version: int, fields: dict[str, Any]) -> tuple[str, bool]:
        """Create the job of one series version, or return the one that exists.

        Returns ``(job_id, created)``. Idempotent per (series_uid, version): the id is claimed
        with SET NX first, so a crash between claim and record leaves a claim that the next call
        completes with the same id.
        """
        claim = self.key("key", series_uid, str(version))
        job_id = new_job_id()
        if not self.client.set(claim, job_id, nx=True):
            existing = str(self.client.get(claim))
            if self.client.exists(self.key("job", existing)):
                return existing, False
            job_id = existing
        previous = self.client.lrange(self.key("series", series_uid, "jobs"), -1, -1)
        t = now()
        record = {
            "id": job_id, "series_uid": series_uid, "version": version, "state": "created",
            "stage": "", "run": 1, "attempts": 0, "progress": 0.0, "created": t, "updated": t,
            "previous_job": previous[0] if previous else "", "reason": "", "error": None,
            **fields,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key("job", job_id), mapping=_encode(record))
        pipe.zadd(self.key("jobs"), {job_id: t})
        pipe.rpush(self.key("series", series_uid, "jobs"), job_id)
        pipe.execute()
        self.event(job_id, "created", version=version, previous_job=record["previous_job"])
        return job_id, True

    def create_linked(self, source: dict[str, Any], fields: dict[str, Any], *,
                      user: str = "") -> str:
        """A new job of the same series version as ``source`` (``kneenode reprocess``).

        Not idempotent on purpose: every call is a new job, linked both ways
        (``reprocess_of`` / ``reprocessed_as``) and last in the series' job list. ``user``
        (who asked) goes into both jobs' events.
        """
        job_id = new_job_id()
        t = now()
        keep = ("series_uid", "version", "study_uid", "series_path", "calling_ae", "called_ae",
                "address", "modality", "series_description", "instance_count")
        record = {
            **{k: source[k] for k in keep if k in source},
            "id": job_id, "state": "created", "stage": "", "run": 1, "attempts": 0,
            "progress": 0.0, "created": t, "updated": t, "previous_job": source["id"],
            "reprocess_of": source["id"], "reason": "", "error": None, **fields,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key("job", job_id), mapping=_encode(record))
        pipe.zadd(self.key("jobs"), {job_id: t})
        pipe.rpush(self.key("series", str(source["series_uid"]), "jobs"), job_id)
        pipe.hset(self.key("job", source["id"]), "reprocessed_as", job_id)
        pipe.execute()
        self.event(job_id, "created", version=record.get("version"), reprocess_of=source["id"],
                   **_by(user))
        self.event(source["id"], "reprocessed", job=job_id, profile=fields.get("profile", ""),
                   **_by(user))
        return job_id

    # -- reads ------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job record with JSON fields decoded and a ``stages`` dict, or None."""
        raw = self.client.hgetall(self.key("job", job_id))
        return _decode(raw) if raw else None

    def match_ids(self, part: str) -> list[str]:
        """Job IDs equal to ``part``, or that start or end with it (the CLI's short IDs)."""
        if self.client.exists(self.key("job", part)):
            return [part]
        ids = self.client.zrevrange(self.key("jobs"), 0, -1)
        return [i for i in ids if part and (i.startswith(part) or i.endswith(part))]

    def list_jobs(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest jobs first; ``state`` filters (``running`` matches every ``running:<stage>``)."""
        ids = self.client.zrevrange(self.key("jobs"), 0, -1)
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 200):
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids[start : start + 200]:
                pipe.hgetall(self.key("job", job_id))
            for raw in pipe.execute():
                if not raw:
                    continue
                try:
                    job = _decode(raw)
                except (ValueError, TypeError):  # one damaged record must not hide every job
                    continue
                if state is None or job["state"] == state or job["state"].startswith(f"{state}:"):
                    out.append(job)
                    if len(out) >= limit:
                        return out
        return out

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (``running:<stage>`` counted as ``running``)."""
        counts = dict.fromkeys(STATES, 0)
        ids = self.client.zrange(self.key("jobs"), 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.key("job", job_id), "state")
        for state in pipe.execute():
            if state:
                base = str(state).split(":", 1)[0]
                counts[base] = counts.get(base, 0) + 1
        return counts

    def count_by_route(self) -> dict[tuple[str, str, str], int]:
        """How many jobs per (state, profile, route); ``running:<stage>`` counted as ``running``."""
        counts: dict[tuple[str, str, str], int] = {}
        ids = self.client.zrange(self.key("jobs"), 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.key("job", job_id), "state", "profile", "route")
        for state, profile, route in pipe.execute():
            if state:
                key = (str(state).split(":", 1)[0], profile or "", route or "")
                counts[key] = counts.get(key, 0) + 1
        return counts

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every event of the job, oldest first."""
        return [json.loads(e) for e in self.client.lrange(self.key("job", job_id, "events"), 0, -1)]

    # -- writes -----------------------------------------------------------------------------
    def event(self, job_id: str, kind: str, **data: Any) -> None:
        """Append one event (never rewritten)."""
        self._event(self.client, job_id, kind, **data)

    def _event(self, target: Any, job_id: str, kind: str, **data: Any) -> None:
        item = {"t": round(now(), 3), "kind": kind, **data}
        target.rpush(self.key("job", job_id, "events"), json.dumps(item, default=str))

    def update(self, job_id: str, **fields: Any) -> None:
        """Set record fields (JSON-encoding dicts and lists) and the ``updated`` time."""
        fields["updated"] = now()
        self.client.hset(self.key("job", job_id), mapping=_encode(fields))

    def stage_update(self, job_id: str, stage: str, **info: Any) -> dict[str, Any]:
        """Merge ``info`` into the job's ``stage:<name>`` field and return the result."""
        merged = self._merged_stage(job_id, stage, info)
        self.client.hset(self.key("job", job_id), f"stage:{stage}", json.dumps(merged))
        return merged

    def _merged_stage(self, job_id: str, stage: str, info: dict[str, Any]) -> dict[str, Any]:
        raw = self.client.hget(self.key("job", job_id), f"stage:{stage}")
        return {**(json.loads(raw) if raw else {}), **info}

    def transition(self, job_id: str, run: int, **fields: Any) -> bool:
        """Set fields only if the job is still live in run ``run`` (atomic, in redis).

        A worker never overwrites ``cancelled`` (or another end state, or a newer run started by
        ``kneenode retry``) with its own progress.
        """
        fields["updated"] = now()
        flat: list[Any] = [str(run)]
        for k, v in _encode(fields).items():
            flat += [k, v]
        return bool(self._transition(keys=[self.key("job", job_id)], args=flat))

    def stage_started(self, job_id: str, stage: str, run: int, worker: str) -> int:
        """Record a stage attempt starting; return its attempt number, 0 if the job has ended."""
        if not self.transition(job_id, run, state=f"running:{stage}", stage=stage):
            return 0
        # One transaction after the check: with appendfsync always every write round trip costs
        # an fsync, so the start is recorded in one. The lease makes this stage's only writer.
        key = self.key("job", job_id)
        attempt = int(self.client.hget(key, f"attempts:{stage}") or 0) + 1
        merged = self._merged_stage(job_id, stage, {
            "state": "running", "start": now(), "end": None, "duration": None,
            "attempts": attempt, "worker": worker, "error": None})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={f"attempts:{stage}": attempt, f"stage:{stage}": json.dumps(merged)})
        pipe.hincrby(key, "attempts", 1)
        self._event(pipe, job_id, "start", stage=stage, attempt=attempt, worker=worker)
        pipe.execute()
        return attempt

    def stage_committed(self, job_id: str, stage: str, duration: float) -> None:
        """Record a stage's successful end: its record, its duration histogram, the event."""
        merged = self._merged_stage(job_id, stage, {"state": "done", "end": now(),
                                                    "duration": duration})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key("job", job_id), f"stage:{stage}", json.dumps(merged))
        self._observe(pipe, stage, duration)
        self._event(pipe, job_id, "end", stage=stage, duration=round(duration, 4))
        pipe.execute()

    def stage_attempts(self, job_id: str, stage: str) -> int:
        """How many attempts of ``stage`` have started in this job's current run."""
        return int(self.client.hget(self.key("job", job_id), f"attempts:{stage}") or 0)

    def fail(self, job_id: str, stage: str, error: dict[str, Any], run: int | None = None) -> bool:
        """Mark the job failed with its error (code, message, hint); with ``run``, only if live."""
        if run is None:
            self.update(job_id, state="failed", stage=stage, error=error)
        elif not self.transition(job_id, run, state="failed", stage=stage, error=error):
            return False
        self.event(job_id, "failed", stage=stage, **error)
        return True

    def ignore(self, job_id: str, code: str, reason: str) -> None:
        """Mark a series not selected for analysis, with the reason."""
        self.update(job_id, state="ignored", reason=reason, error={"code": code, "message": reason})
        self.event(job_id, "ignored", code=code, reason=reason)

    def cancel(self, job_id: str, *, user: str = "") -> bool:
        """Cancel a job that has not ended; False if it had already ended."""
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.key("job", job_id))
                    state = pipe.hget(self.key("job", job_id), "state")
                    if state is None or str(state).split(":")[0] in TERMINAL:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(self.key("job", job_id), mapping={"state": "cancelled", "updated": now()})
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.event(job_id, "cancelled", **_by(user))
        return True

    def restart(self, job_id: str, from_stage: str, *, user: str = "") -> int:
        """Prepare a job for ``kneenode retry``: new run number, attempts of later stages reset."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        chain: list[str] = job["chain"]
        run = int(self.client.hincrby(self.key("job", job_id), "run", 1))
        later = chain[chain.index(from_stage) :]
        self.client.hdel(self.key("job", job_id), *[f"attempts:{s}" for s in later])
        # rerun_stage: if the message is lost, reconciliation re-sends it as a rerun too.
        self.update(job_id, state="queued", stage=from_stage, error=None, rerun_stage=from_stage)
        self.event(job_id, "retry", from_stage=from_stage, run=run, **_by(user))
        return run

    # -- leases: one running copy of a stage ------------------------------------------------
    def acquire_lease(self, job_id: str, stage: str, message_id: str, ttl_s: float) -> bool:
        """Claim a stage for one message; the same message (redelivered) may take it over."""
        key = self.key("lease", job_id, stage)
        if self.client.set(key, message_id, nx=True, px=int(ttl_s * 1000)):
            return True
        if self.client.get(key) == message_id:
            self.client.pexpire(key, int(ttl_s * 1000))
            return True
        return False

    def release_lease(self, job_id: str, stage: str, message_id: str) -> None:
        """Drop the claim if this message still holds it."""
        self._release(keys=[self.key("lease", job_id, stage)], args=[message_id])

    # -- metrics shared by every process ----------------------------------------------------
    def incr(self, counter: str, amount: int = 1) -> None:
        """Increment a node-wide counter (series completed, deliveries failed, ...)."""
        self.client.hincrby(self.key("metrics", "counters"), counter, amount)

    def counters(self) -> dict[str, int]:
        """Every node-wide counter."""
        return {k: int(v) for k, v in self.client.hgetall(self.key("metrics", "counters")).items()}

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Add one stage duration to that stage's histogram."""
        pipe = self.client.pipeline(transaction=True)
        self._observe(pipe, stage, seconds)
        pipe.execute()

    def _observe(self, pipe: Any, stage: str, seconds: float) -> None:
        index = next((i for i, b in enumerate(DURATION_BUCKETS) if seconds <= b), len(DURATION_BUCKETS))
        key = self.key("metrics", "stage_seconds", stage)
        pipe.hincrby(key, f"b{index}", 1)
        pipe.hincrbyfloat(key, "sum", seconds)
        pipe.hincrby(key, "count", 1)
        pipe.sadd(self.key("metrics", "stages"), stage)

    def stage_histograms(self) -> dict[str, dict[str, float]]:
        """Raw per-bucket counts, sum and count of each stage's durations."""
        out = {}
        for stage in sorted(self.client.smembers(self.key("metrics", "stages"))):
            raw = self.client.hgetall(self.key("metrics", "stage_seconds", stage))
            out[stage] = {k: float(v) for k, v in raw.items()}
        return out


def _by(user: str) -> dict[str, str]:
    """The ``user`` field of an operator's event (left out when nobody is named)."""
    return {"user": user} if user else {}


def _encode(fields: dict[str, Any]) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for k, v in fields.items():
        if isinstance(v, (dict, list)) or v is None:
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = int(v)
        else:
            out[k] = v if isinstance(v, (int, float)) else str(v)
    return out


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    job: dict[str, Any] = {"stages": {}}
    for k, v in raw.items():
        if k.startswith("stage:"):
            job["stages"][k[6:]] = json.loads(v)
        elif k in _JSON_FIELDS:
            job[k] = json.loads(v) if v else None
        elif k in ("version", "run", "attempts", "instance_count") or k.startswith("attempts:"):
            job[k] = int(v)
        elif k in ("created", "updated", "progress"):
            job[k] = float(v)
        else:
            job[k] = v
    chain = job.get("chain") or []
    job["stages"] = {s: job["stages"][s] for s in chain if s in job["stages"]} | {
        s: i for s, i in job["stages"].items() if s not in chain
    }
    return job
