"""The broker: dramatiq's RedisBroker on the node's redis, and where that redis is.

One redis carries both the message queues (dramatiq keys under ``<namespace>:mq``) and the job
store (``<namespace>:job:...``). With ``jobs.redis_url`` set, every host of a cluster points at
the same redis and shares the queues; otherwise the embedded redis of ``kneenode serve`` is used
(found through ``data_dir/redis/endpoint.json``).
"""

from __future__ import annotations

from pathlib import Path

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, TimeLimit

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import JobsSettings, Settings
from workers.redisproc import running_endpoint

QUEUES: tuple[str, ...] = ("cpu", "gpu", "io")


def redis_folder(settings: Settings) -> Path:
    """Where the embedded redis keeps its AOF and endpoint file."""
    return settings.data_dir / "redis"


def resolve_redis_url(settings: Settings) -> str:
    """The redis URL this process should use: the configured one, or the running embedded one.

    Raises
    ------
    NodeError
        CONFIG_ERROR when no redis_url is set and no embedded redis runs for this data_dir.
    """
    if settings.jobs.redis_url:
        return settings.jobs.redis_url
    endpoint = running_endpoint(redis_folder(settings))
    if endpoint is None:
        raise NodeError(
            ErrorCode.CONFIG_ERROR,
            f"no redis: jobs.redis_url is unset and no embedded redis runs for {settings.data_dir}",
            hint="Start the node with `kneenode serve` (same data_dir), or set jobs.redis_url.",
        )
    return str(endpoint["url"])


def make_client(url: str) -> redis.Redis:
    """A redis client for the job store (strings, not bytes; short timeouts, retried reconnects)."""
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
        health_check_interval=30,
    )


def mq_namespace(jobs: JobsSettings) -> str:
    """Redis key prefix of dramatiq's queues."""
    return f"{jobs.namespace}:mq"


def make_broker(
    url: str, jobs: JobsSettings, *, extra_middleware: list[Middleware] | None = None
) -> RedisBroker:
    """A RedisBroker with only the middleware the node uses.

    dramatiq's default Retries/Callbacks/Pipelines/AgeLimit are left out on purpose: retries,
    backoff and chaining are job-state decisions made by :class:`workers.middleware.JobMiddleware`.
    ``TimeLimit`` stays: it interrupts pure-Python stages in their thread (per-message limit).
    """
    middleware: list[Middleware] = [TimeLimit(time_limit=jobs.stage_time_limit_s * 1000)]
    middleware += extra_middleware or []
    return RedisBroker(
        url=url,
        middleware=middleware,
        namespace=mq_namespace(jobs),
        heartbeat_timeout=int(jobs.heartbeat_timeout_s * 1000),
        maintenance_chance=jobs.maintenance_chance,
    )


def queue_depths(client: redis.Redis, jobs: JobsSettings) -> dict[str, int]:
    """Messages waiting per queue (ready + delayed), for /metrics and /health."""
    ns = mq_namespace(jobs)
    pipe = client.pipeline(transaction=False)
    for q in QUEUES:
        pipe.llen(f"{ns}:{q}")
        pipe.hlen(f"{ns}:{q}.DQ.msgs")
    values = pipe.execute()
    return {q: int(values[2 * i]) + int(values[2 * i + 1]) for i, q in enumerate(QUEUES)}


_REQUEUE_DEAD = """
local moved = 0
for i = 1, #ARGV do
  local queue = ARGV[i]
  local acks = KEYS[1] .. ":__acks__." .. KEYS[2] .. "." .. queue
  local full = KEYS[1] .. ":" .. queue
  local ids = redis.call("smembers", acks)
  for _, id in ipairs(ids) do
    if redis.call("hexists", full .. ".msgs", id) > 0 then
      redis.call("rpush", full, id)
      moved = moved + 1
    end
  end
  redis.call("del", acks)
end
redis.call("zrem", KEYS[1] .. ":__heartbeats__", KEYS[2])
return moved
"""


def requeue_dead_worker(client: redis.Redis, jobs: JobsSettings, broker_id: str) -> int:
    """Put back every message a dead worker process had fetched but not acknowledged.

    dramatiq does this itself after ``heartbeat_timeout``; the supervisor that saw its child die
    calls this at once so a crashed stage restarts in seconds, not a minute.
    """
    queues = [name for q in QUEUES for name in (q, f"{q}.DQ")]
    moved = client.eval(_REQUEUE_DEAD, 2, mq_namespace(jobs), broker_id, *queues)
    return int(moved)
