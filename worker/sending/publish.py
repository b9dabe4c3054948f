"""Publishing tasks by name, without importing the task modules (the webhook app stays light)."""

from __future__ import annotations

import base64
import logging
import os
import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kombu.utils.json import dumps  # kombu's encoder: the same JSON as send_task for every value type

from worker.celery_app import app

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

SEND_TASK = "mailworker.send_email"
EVENT_TASK = "mailworker.process_event"


def broker_write_url() -> str:
    """The URL Celery publishes to (``broker_write_url``, else ``broker_url``)."""
    return str(app.conf.broker_write_url or app.conf.broker_url)


def publish_send(tracking_id: str, *, eta: datetime | None = None, countdown: float | None = None) -> bool:
    """Publish ``send_email(tracking_id)``; False when the broker is unreachable (the sweeper repairs it).

    The common case (no ETA, Redis broker) is the same single LPUSH as :func:`publish_event`, with the tracking
    id as task id; a delayed publish goes through ``send_task``, which writes the ETA headers.
    """
    try:
        target = None if eta is not None or countdown else _target(SEND_TASK, broker_write_url())
        if target is not None:
            target.client.lpush(target.queue, _task_message(SEND_TASK, [tracking_id], tracking_id,
                                                            repr([tracking_id]), target))
            return True
        options: dict[str, Any] = {"task_id": tracking_id}
        if eta is not None:
            options["eta"] = eta
        elif countdown:
            options["countdown"] = countdown
        app.send_task(SEND_TASK, args=[tracking_id], **options)
    except Exception as err:  # noqa: BLE001 - any broker failure is repaired by the sweeper
        log.warning("publish failed tracking_id=%s (the sweeper will publish it): %s", tracking_id,
                    type(err).__name__)
        return False
    return True


# ------------------------------------------------------------------------------------------ direct publish
#
# Every send and every webhook event is one task, so the publish must be cheap, and the receiver's must fail
# fast (SMTP2Go retries a 503 for 48 h). On a Redis broker both write the very message ``send_task`` would
# write -- same protocol-2 headers and body, same kombu envelope -- with one LPUSH on a shared redis-py client,
# instead of kombu's producer, its ``ensure`` retry wrapper and a new ``redis.Redis`` object per publish.
# tests/worker/sending/test_publish.py compares both byte for byte with a captured ``send_task`` message.
# Unlike ``send_task`` they emit no ``task-sent`` event (Flower shows a task from ``task-received`` on).
#
# Why not ``send_task`` (measured, ``python -m benchmarks.publish_bench``, kombu 5.7 / redis-py 7.4, one
# thread, 2,000 publishes x 2 rounds): 0.26 ms of CPU per publish here against 1.03 ms for ``app.send_task``
# and 1.03-1.06 ms with a producer held from ``app.producer_pool`` (the event publish: 0.27-0.31 against
# 0.97-0.99 ms). About 40% of kombu's cost is building a new ``redis.Redis`` client (its response-callback
# table) inside the Redis channel's ``_put`` on every publish, which a pooled producer does not avoid. The
# 0.77 ms difference would add a third to ``enqueue_email``'s own CPU (2.2-2.6 ms; the application's caller,
# inside every row of the send benchmark, docs/benchmarks.md "Session 4, round 2") and 40-55% to the
# receiver's CPU per webhook POST (1.4-1.9 ms). Every other publish (ETA, non-Redis brokers, maintenance) is
# ``send_task``.

#: Socket timeouts of the event publish: a Redis that accepts connections and never answers fails it in ~2 s.
EVENT_SOCKET_TIMEOUT = 2.0
#: ``send_task`` fallback (a broker that is not a Redis URL): one quick retry, like the direct path.
_EVENT_RETRY_POLICY: dict[str, Any] = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                       "interval_max": 0.5}
#: The ``embed`` part of a protocol-2 body for a task without callbacks, errbacks, chain or chord.
_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class _Target(NamedTuple):
    """Where and how this process LPUSHes one task's messages (one per process id, task and broker URL)."""

    client: redis.Redis
    queue: str  # the Redis list: the task's queue (priority 0 -> kombu uses the plain queue name)
    exchange: str  # delivery_info.exchange as send_task writes it ("" = the direct queue, no binding lookup)
    delivery_mode: int
    origin: str  # what Celery writes as the ``origin`` header: gen<pid>@<hostname>


_targets: dict[tuple[int, str, str], _Target | None] = {}
_targets_lock = threading.Lock()


def publish_event(event: dict[str, Any], *, broker_url: str | None = None) -> None:
    """Publish one ``process_event(event)`` task on the events queue, failing within a few seconds.

    Raises when the broker cannot take it (the webhook answers 503 and SMTP2Go retries); ``broker_url``
    overrides the configured broker (tests point it at a dead or hung one). One retry after a connection error
    (a pooled connection gone stale across a Redis restart) can push a message twice; applying an event is
    idempotent (the event id is unique), so that is harmless.
    """
    url = broker_url or broker_write_url()
    target = _target(EVENT_TASK, url)
    if target is None:
        _send_task_event(event, url)
    else:
        target.client.lpush(target.queue, _task_message(EVENT_TASK, [event], str(uuid.uuid4()),
                                                        _event_summary(event), target))


def _task_message(task: str, args: list[Any], task_id: str, summary: str, target: _Target) -> str:
    """The JSON kombu's Redis transport LPUSHes for ``send_task(task, args=args, task_id=..., argsrepr=...)``."""
    headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
        "parent_id": None, "argsrepr": summary, "kwargsrepr": "{}", "origin": target.origin, "ignore_result": None,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}}
    body = base64.b64encode(dumps([args, {}, _EMBED]).encode("utf-8")).decode("ascii")
    properties = {"correlation_id": task_id, "reply_to": app.thread_oid, "argsrepr": summary,
                  "delivery_mode": target.delivery_mode,
                  "delivery_info": {"exchange": target.exchange, "routing_key": target.queue}, "priority": 0,
                  "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    return str(dumps({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                      "headers": headers, "properties": properties}))


def _target(task: str, url: str) -> _Target | None:
    """The shared target for this process, task and URL; a new one after ``fork`` (gunicorn ``--preload``)."""
    key = (os.getpid(), task, url)
    try:
        return _targets[key]
    except KeyError:
        pass
    with _targets_lock:
        if key not in _targets:
            for stale in [k for k in _targets if k[0] != key[0]]:  # inherited from the parent: never used here
                del _targets[stale]
            _targets[key] = _build_target(task, url)
        return _targets[key]


def _build_target(task: str, url: str) -> _Target | None:
    """A fail-fast redis-py client and the message constants, or None when only ``send_task`` will do.

    None for anything but a plain ``redis://``/``rediss://`` URL (memory://, amqp://, failover lists, Sentinel,
    ``broker_use_ssl``) and for settings under which ``send_task`` would write another message than
    :func:`_task_message` builds (another protocol, serializer, compression, key prefix, route or priority).
    """
    import redis
    from celery.utils.nodenames import anon_nodename
    from kombu import Queue
    from kombu.entity import maybe_delivery_mode
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    conf = app.conf
    scheme = url.partition("://")[0].lower()
    route = app.amqp.router.route({}, task)
    queue = route.get("queue")
    # send_task turns a direct exchange without an explicit exchange into the anonymous one: the message goes
    # straight onto the queue named by the routing key. Anything else needs kombu's exchange/binding lookup.
    straight_onto_queue = (type(queue) is Queue and not set(route) - {"queue", "routing_key"}
                           and queue.exchange.type == "direct" and getattr(queue, "expires", None) is None)
    unsupported = [
        scheme not in ("redis", "rediss") or ";" in url,
        bool(conf.broker_use_ssl),
        conf.task_protocol != 2 or conf.task_serializer != "json" or bool(conf.task_compression),
        conf.task_default_priority is not None,
        bool((conf.broker_transport_options or {}).get("global_keyprefix")),
        not straight_onto_queue,
    ]
    if any(unsupported):
        log.info("%s is published through send_task (%s broker)", task, scheme or "unknown")
        return None
    client = redis.Redis.from_url(
        url,
        socket_timeout=EVENT_SOCKET_TIMEOUT,
        socket_connect_timeout=EVENT_SOCKET_TIMEOUT,
        retry_on_timeout=False,
        # One immediate retry on a connection error only (a stale pooled connection after a Redis restart),
        # never on a timeout: a hung Redis fails the publish after one socket timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    delivery_mode = maybe_delivery_mode(queue.exchange.delivery_mode or conf.task_default_delivery_mode)
    return _Target(client=client, queue=queue.name, exchange="", delivery_mode=int(delivery_mode),
                   origin=anon_nodename())


def _send_task_event(event: dict[str, Any], url: str) -> None:
    """Fallback for a broker that is not a Redis URL: Celery's own publish on a short-lived connection."""
    with app.connection_for_write(url, connect_timeout=EVENT_SOCKET_TIMEOUT,
                                  transport_options=dict(_EVENT_RETRY_POLICY)) as conn:
        app.send_task(EVENT_TASK, args=[event], connection=conn, retry=True, retry_policy=_EVENT_RETRY_POLICY,
                      argsrepr=_event_summary(event))


def _event_summary(event: dict[str, Any]) -> str:
    """What Flower shows as the argument: the event's identity, not the whole payload (addresses, headers)."""
    return repr([{key: event[key] for key in ("event", "email_id", "id") if key in event}])
