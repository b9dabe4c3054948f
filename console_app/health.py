"""Is anything running? Worker and beat health and the depth of each Celery queue, for the overview.

- Queue depth: ``LLEN`` of each queue in ``task_queues`` (Celery's Redis transport keeps a queue as a list, plus
  one list per priority step when priorities are used: those are added in).
- Consumers: ``inspect().active_queues()`` (workers answer within ``timeout``), cached for :data:`CACHE_SECONDS`
  per app, so a page reload does not wait for the broadcast again.
- Beat: the age of the sweeper's heartbeat (``<send queue>:sweep-heartbeat``, written after every sweep); beat
  schedules a sweep every ``SWEEP_INTERVAL`` seconds, so an older heartbeat (or none) means beat or the worker
  taking the maintenance queue is not running.

Nothing here raises: a broker that cannot be reached gives ``available=False`` and the page says "unknown".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: How long the consumers' answer is reused.
CACHE_SECONDS = 5.0
#: How long workers get to answer the broadcast.
INSPECT_TIMEOUT = 1.0
#: Socket timeouts of the console's own broker connection: a broker that never answers costs ~1 s per page.
SOCKET_TIMEOUT = 1.0
#: Kombu's Redis transport: a priority step's list is ``<queue><SEP><step>``.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


@dataclass
class QueueHealth:
    name: str
    depth: int | None  # None: unknown
    consumers: int | None  # None: unknown (the broker or the broadcast did not answer)

    @property
    def unconsumed(self) -> bool:
        return self.consumers == 0


@dataclass
class Health:
    available: bool
    queues: list[QueueHealth] = field(default_factory=list)
    workers: list[str] | None = None  # None: unknown
    last_sweep_age: float | None = None  # seconds; None: no heartbeat (or unknown when not available)
    sweep_interval: float = 15.0
    error: str | None = None

    @property
    def beat_ok(self) -> bool:
        return self.last_sweep_age is not None and self.last_sweep_age <= 4 * self.sweep_interval


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = 0.0
        self.value: dict[str, list[str]] | None = None


def _redis_client(url: str) -> Any | None:
    if url.partition("://")[0].lower() not in ("redis", "rediss") or ";" in url:
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)


def _send_queue(app: Any) -> str:
    route = app.amqp.router.route({}, "mailworker.send_email").get("queue")
    return str(getattr(route, "name", None) or app.conf.task_default_queue)


def _active_queues(app: Any, cache: _Cache, clock: Any = time.monotonic) -> dict[str, list[str]] | None:
    """``{worker: [queue, ...]}`` from the workers that answered, or None when the broadcast failed."""
    with cache.lock:
        if cache.value is not None and clock() - cache.at < CACHE_SECONDS:
            return cache.value
        try:
            replies = app.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
            value: dict[str, list[str]] | None = {
                str(worker): [str(q.get("name")) for q in queues or [] if isinstance(q, dict)]
                for worker, queues in replies.items()}
        except Exception:  # noqa: BLE001 - shown as unknown
            value = None
        cache.value, cache.at = value, clock()
        return value


def snapshot(celery: Any | None = None, *, cache: _Cache | None = None, sweep_interval: float | None = None,
             now: datetime | None = None) -> Health:
    """The health of the Celery side as the console sees it; never raises."""
    if celery is None:
        from worker.celery_app import app

        celery = app
    if sweep_interval is None:
        from worker.infrastructure.config import get_settings

        sweep_interval = get_settings().sweep_interval
    now = now or datetime.now(UTC)
    try:
        names = [str(q.name) for q in celery.conf.task_queues or ()]
        url = str(celery.conf.broker_write_url or celery.conf.broker_url)
    except Exception as err:  # noqa: BLE001
        return Health(False, sweep_interval=sweep_interval, error=type(err).__name__)
    unknown = [QueueHealth(n, None, None) for n in names]
    client = _redis_client(url)
    if client is None:
        return Health(False, unknown, sweep_interval=sweep_interval, error="the broker is not a Redis URL")
    try:
        from worker.operations.sweeper import heartbeat_key

        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
            for step in _PRIORITY_STEPS:
                pipe.llen(f"{name}{_PRIORITY_SEP}{step}")
        pipe.get(heartbeat_key(_send_queue(celery)))
        answers = pipe.execute()
    except Exception as err:  # noqa: BLE001 - the broker is down: the page still renders
        return Health(False, unknown, sweep_interval=sweep_interval, error=type(err).__name__)
    finally:
        client.close()
    per_queue = 1 + len(_PRIORITY_STEPS)
    depths = [sum(int(n or 0) for n in answers[i * per_queue:(i + 1) * per_queue]) for i in range(len(names))]
    beat_raw = answers[-1]
    age = None
    if beat_raw:
        try:
            last = datetime.fromisoformat(beat_raw.decode() if isinstance(beat_raw, bytes) else str(beat_raw))
            age = max(0.0, (now - (last if last.tzinfo else last.replace(tzinfo=UTC))).total_seconds())
        except ValueError:
            age = None
    active = _active_queues(celery, cache or _Cache())
    queues = []
    for name, depth in zip(names, depths, strict=True):
        consumers = None if active is None else sum(1 for qs in active.values() if name in qs)
        queues.append(QueueHealth(name, depth, consumers))
    # Only workers of this deployment: another one sharing the broker answers the broadcast too.
    workers = None if active is None else sorted(w for w, qs in active.items() if set(qs) & set(names))
    return Health(True, queues, workers, age, sweep_interval)


def new_cache() -> _Cache:
    return _Cache()
