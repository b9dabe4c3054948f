"""What-if: the product with the cheap fixes proposed in docs/benchmarks.md applied in memory.

Benchmarks may not edit product code, but a proposed fix is more convincing with a number next to it. This
module imports the real worker / webhook app and patches, at import time, only what the proposals change:

- ``events``: no Celery task events (``task-sent``/``received``/``started``/``succeeded``) and no per-send
  ``task-progress`` event: each is one more JSON message PUBLISHed to Redis per email or per webhook;
- ``preping``: ``pool_pre_ping=False`` -- one ``SELECT 1``-style ping per pool checkout, three per email;
- ``module``: the SMTP2Go module row (one SELECT per send) cached for 5 seconds per process;
- ``redaction``: the secrets the log filter redacts computed once per settings object, instead of parsing
  two URLs for every log record;
- ``fastpublish`` (webhook receiver only): each event becomes the very message Celery would write -- same
  protocol-2 headers, body and kombu envelope, checked against a real ``send_task`` capture -- pushed with one
  LPUSH on a shared redis-py client, instead of ``send_task`` through kombu's producer, ``ensure`` retry
  wrapper and a new ``redis.Redis`` object per publish. Failing fast still makes the view answer 503.

Select them with ``MWBENCH_WHATIF=events,preping,module,redaction,fastpublish`` (default: all). Used as
``celery -A benchmarks.whatif worker ...`` and ``gunicorn benchmarks.whatif:wsgi_app``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from typing import Any

import worker.db
import worker.delivery
import worker.publish
import worker.redaction
import worker.tasks
from worker.celery_app import app

FIXES = {f.strip() for f in
         os.environ.get("MWBENCH_WHATIF", "events,preping,module,redaction,fastpublish").split(",")}

if "events" in FIXES:
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
    worker.tasks._flower_progress = lambda task: None

if "preping" in FIXES:
    _create_engine = worker.db.create_engine

    def _no_preping(url: Any, **kwargs: Any) -> Any:
        kwargs["pool_pre_ping"] = False
        return _create_engine(url, **kwargs)

    worker.db.create_engine = _no_preping

if "module" in FIXES:
    _smtp2go_config = worker.delivery.smtp2go_config
    _cache: dict[str, tuple[float, Any]] = {}

    def _cached_config(session: Any, settings: Any = None) -> Any:
        hit = _cache.get("config")
        if hit and time.monotonic() - hit[0] < 5.0:
            return hit[1]
        value = _smtp2go_config(session, settings)
        _cache["config"] = (time.monotonic(), value)
        return value

    worker.delivery.smtp2go_config = _cached_config

if "redaction" in FIXES:
    _known = worker.redaction.known_secrets
    _secrets: dict[int, set[str]] = {}

    def _known_cached() -> set[str]:
        from worker.config import get_settings

        key = id(get_settings())
        if key not in _secrets:
            _secrets.clear()
            _secrets[key] = _known()
        return _secrets[key]

    worker.redaction.known_secrets = _known_cached


_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_redis_client: Any = None


def fast_publish_event(event: dict[str, Any], *, broker_url: str | None = None) -> None:
    """``mailworker.process_event(event)`` as one LPUSH of the message ``send_task`` would have written."""
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(broker_url or app.conf.broker_url, socket_timeout=2.0,
                                             socket_connect_timeout=2.0)
    queue = app.conf.task_routes[worker.publish.EVENT_TASK]["queue"]
    task_id = str(uuid.uuid4())
    summary = worker.publish._event_summary(event)
    headers: dict[str, Any] = {
               "lang": "py", "task": worker.publish.EVENT_TASK, "id": task_id, "shadow": None, "eta": None,
               "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
               "root_id": task_id, "parent_id": None, "argsrepr": summary, "kwargsrepr": "{}", "origin": _ORIGIN,
               "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}}
    body = json.dumps([[event], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = {"body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
               "content-type": "application/json", "headers": headers,
               "properties": {"correlation_id": task_id, "reply_to": "", "argsrepr": summary, "delivery_mode": 2,
                              "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                              "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
    _redis_client.lpush(queue, json.dumps(message))


if "fastpublish" in FIXES:
    worker.publish.publish_event = fast_publish_event


def __getattr__(name: str) -> Any:
    """``wsgi_app`` is built on first access only, so Celery workers never create the Flask app."""
    if name == "wsgi_app":
        from webhook_app.wsgi import app as wsgi

        return wsgi
    raise AttributeError(name)


__all__ = ["FIXES", "app"]
