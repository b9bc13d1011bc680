"""The broker: dramatiq's RedisBroker on the node's redis, and where that redis is.

One redis carries both the message queues (dramatiq keys under ``<namespace>:mq``) and the job
store (``<namespace>:job:...``). With ``jobs.redis_url`` set, every host of a cluster points at
the same redis and shares the queues; otherwise the embedded redis of ``kneenode serve`` is used
(found through ``data_dir/redis/endpoint.json``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import Middleware, TimeLimit
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from kneenode.errors import ErrorCode, NodeError
from kneenode.logs import get_logger
from kneenode.settings import JobsSettings, Settings
from workers.redisproc import running_endpoint

log = get_logger(__name__)
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


def reconnect_policy(retry_s: float) -> Retry:
    """Retry a lost redis connection for about ``retry_s`` seconds (backoff 50 ms doubling to 1 s).

    A restart of the embedded redis takes about a second; without this a stage's bookkeeping
    (start, commit, the next stage's message) would fail on the first refused connection.
    """
    retries, waited = 0, 0.0
    backoff = ExponentialBackoff(cap=1.0, base=0.05)
    while waited < retry_s:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries)


def make_client(url: str, *, retry_s: float = 0.0, decode: bool = True) -> redis.Redis:
    """A redis client for the job store (strings, not bytes; short timeouts).

    ``retry_s`` > 0: connection errors are retried with :func:`reconnect_policy` (workers, the
    hand-off, reconciliation); 0 keeps redis-py's short default (status pages answer at once).
    """
    extra: dict[str, Any] = {}
    if retry_s > 0:
        extra = {"retry": reconnect_policy(retry_s),
                 "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
    return redis.Redis.from_url(
        url, decode_responses=decode, socket_connect_timeout=5, socket_timeout=30,
        health_check_interval=30, **extra,
    )


def mq_namespace(jobs: JobsSettings) -> str:
    """Redis key prefix of dramatiq's queues."""
    return f"{jobs.namespace}:mq"


class WakeUp(Middleware):
    """After a message is enqueued for now (not delayed), wake one idle consumer of its queue."""

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
        if delay is None and isinstance(broker, NodeBroker):
            broker.notify(message.queue_name)


class NodeBroker(RedisBroker):
    """RedisBroker whose idle consumers block on a wake-up list instead of sleeping.

    Stock dramatiq consumers poll redis with a growing sleep (up to ``worker_timeout``), which
    puts tens of milliseconds on every hop between stages. Here every enqueue pushes a token on
    ``<namespace>:wake:<queue>`` and a consumer with free capacity waits in BLPOP on it, so a
    hop costs a few redis round trips. ``jobs.poll_ms`` stays the upper bound of the wait (a
    lost token, e.g. across a redis restart, costs at most that).
    """

    def notify(self, queue_name: str) -> None:
        """Push one wake-up token for ``queue_name`` (bounded list)."""
        key = f"{self.namespace}:wake:{queue_name}"
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, 255)
        pipe.execute()

    def wait_for_work(self, queue_name: str, timeout_ms: int) -> None:
        """Block until a token for ``queue_name`` arrives or ``timeout_ms`` passes."""
        self.client.blpop([f"{self.namespace}:wake:{queue_name}"], timeout=timeout_ms / 1000)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakeableConsumer


class _WakeableConsumer(_RedisConsumer):
    """dramatiq's redis consumer that never sleeps blindly.

    Idle with free capacity: BLPOP on the wake-up list. Busy (prefetch used up): wait for this
    consumer's next ack/nack, so a freed worker thread gets the next message at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._freed = threading.Event()

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)
        finally:
            self._freed.set()

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)
        finally:
            self._freed.set()

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                self._freed.clear()
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                free = self.prefetch - self.outstanding_message_count
                if free > 0:
                    self.message_cache = self.broker.do_fetch(self.queue_name, free)
                    if self.message_cache:
                        continue
                    if not self.queue_name.endswith(".DQ"):
                        self.broker.wait_for_work(self.queue_name, self.timeout)
                        return None
                if free > 0:  # a delay queue: look again after poll_ms (retry delays are seconds)
                    time.sleep(self.timeout / 1000)
                else:
                    self._freed.wait(self.timeout / 1000)
                return None
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None


def make_broker(
    url: str, jobs: JobsSettings, *, extra_middleware: list[Middleware] | None = None
) -> NodeBroker:
    """A RedisBroker with only the middleware the node uses.

    dramatiq's default Retries/Callbacks/Pipelines/AgeLimit are left out on purpose: retries,
    backoff and chaining are job-state decisions made by :class:`workers.middleware.JobMiddleware`.
    ``TimeLimit`` stays: it interrupts pure-Python stages in their thread (per-message limit).
    """
    middleware: list[Middleware] = [TimeLimit(time_limit=jobs.stage_time_limit_s * 1000), WakeUp()]
    middleware += extra_middleware or []
    return NodeBroker(
        client=_broker_client(url, jobs.redis_retry_s),
        middleware=middleware,
        namespace=mq_namespace(jobs),
        heartbeat_timeout=int(jobs.heartbeat_timeout_s * 1000),
        maintenance_chance=jobs.maintenance_chance,
    )


def _broker_client(url: str, retry_s: float) -> redis.Redis:
    """dramatiq's client (bytes), with the same reconnect policy as the job store, no timeout
    on reads (consumers block in BLPOP)."""
    extra: dict[str, Any] = {}
    if retry_s > 0:
        extra = {"retry": reconnect_policy(retry_s),
                 "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
    return redis.Redis.from_url(url, socket_connect_timeout=5, **extra)


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


def requeue_orphans(client: redis.Redis, jobs: JobsSettings) -> int:
    """At start of a node with its own (embedded) redis: requeue every fetched, unacked message.

    No worker can be alive yet, so whatever a worker had fetched before a crash (power loss,
    ``kill -9`` of the whole node) goes straight back to its queue instead of waiting for
    dramatiq's heartbeat timeout. Never call this on a redis shared with other hosts.
    """
    prefix = f"{mq_namespace(jobs)}:__acks__."
    owners = {str(k)[len(prefix):].split(".", 1)[0] for k in client.scan_iter(f"{prefix}*")}
    moved = 0
    for owner in sorted(owners):
        try:
            moved += requeue_dead_worker(client, jobs, owner)
        except redis.ResponseError:  # one damaged key set must not keep the others' messages
            log.exception("requeue of a dead worker's messages failed", worker_id=owner)
    return moved


def durability_warning(client: redis.Redis) -> str | None:
    """Warn (and return why) when an external redis may lose writes it has acknowledged.

    The hand-off's guarantee (a series marked announced has a job) holds only if redis fsyncs
    before it answers: ``appendonly yes`` with ``appendfsync always``. Servers that forbid
    CONFIG are not judged.
    """
    try:
        config = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    except redis.RedisError:
        return None
    if config.get("appendonly") == "yes" and config.get("appendfsync") == "always":
        return None
    reason = (f"redis runs with appendonly={config.get('appendonly')} "
              f"appendfsync={config.get('appendfsync')}: a power failure can lose jobs it has "
              "acknowledged (reconciliation re-creates jobs of complete series, but not their "
              "progress); set appendonly yes and appendfsync always")
    log.warning("redis durability", reason=reason)
    return reason
