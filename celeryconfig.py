"""Celery settings only (loaded with ``app.config_from_object("celeryconfig")``).

Application settings live in ``worker/infrastructure/config.py``; this module reads just what Celery needs,
through the settings definition (``worker/infrastructure/settings_spec.py``: parsers, defaults, documentation),
which imports nothing heavy because Celery loads this module before anything else of ours has configured.
"""

from kombu import Exchange, Queue

from worker.infrastructure.settings_spec import broker_url as _broker_url
from worker.infrastructure.settings_spec import read

broker_url = _broker_url()[1]

# JSON only: task arguments are plain ids and event dicts, never pickled objects.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True  # the database is the source of truth, not a result backend
result_backend = None

# At-least-once delivery: ack after the task ran, requeue when the worker process dies, take one at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Redis redelivers an unacked message after the visibility timeout; it must exceed the longest retry delay
# (SEND_RETRY_BACKOFF_MAX, 600 s by default) and the longest ETA we publish (60 s), or tasks run twice.
broker_transport_options = {
    "visibility_timeout": read("CELERY_VISIBILITY_TIMEOUT"),
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "retry_on_timeout": True,
}
broker_connection_retry_on_startup = True
broker_connection_timeout = 4
# A publish that cannot reach the broker gives up quickly; the sweeper publishes the row later.
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 1}

send_queue: str = read("MAILWORKER_SEND_QUEUE")
events_queue: str = read("MAILWORKER_EVENTS_QUEUE")
maintenance_queue: str = read("MAILWORKER_MAINTENANCE_QUEUE")
# Status callbacks (HTTP endpoints, the Python hook) on a queue of their own: a slow receiver never delays a send.
# Named after the send queue's prefix unless set, so a deployment that renames its queues renames this one too.
callbacks_queue: str = (read("MAILWORKER_CALLBACKS_QUEUE")
                        or f"{send_queue.rpartition('.')[0] or 'mailworker'}.callbacks")
# The bulk lane (``enqueue_many``'s mail) has a queue and a pool of its own (``mailworker worker``), so bulk mail
# never waits in front of transactional mail.
bulk_queue: str = read("MAILWORKER_BULK_QUEUE") or f"{send_queue.rpartition('.')[0] or 'mailworker'}.bulk"
# Each queue is bound with its own name as routing key, so two deployments (or test runs) that share one
# Redis database with different queue names never receive each other's tasks.
_exchange = Exchange("mailworker", type="direct")
task_queues = tuple(Queue(name, _exchange, routing_key=name)
                    for name in (send_queue, events_queue, maintenance_queue, callbacks_queue, bulk_queue))
task_default_queue = send_queue
task_default_exchange = "mailworker"
task_default_routing_key = send_queue
task_routes = {
    "mailworker.send_email": {"queue": send_queue, "routing_key": send_queue},
    "mailworker.send_batch": {"queue": bulk_queue, "routing_key": bulk_queue},
    "mailworker.settle_batch": {"queue": bulk_queue, "routing_key": bulk_queue},
    "mailworker.process_event": {"queue": events_queue, "routing_key": events_queue},
    "mailworker.sweep": {"queue": maintenance_queue, "routing_key": maintenance_queue},
    "mailworker.reconcile": {"queue": maintenance_queue, "routing_key": maintenance_queue},
    "mailworker.purge": {"queue": maintenance_queue, "routing_key": maintenance_queue},
    "mailworker.sync_suppressions": {"queue": maintenance_queue, "routing_key": maintenance_queue},
    "mailworker.unsubscribe": {"queue": events_queue, "routing_key": events_queue},
    "mailworker.dispatch_callbacks": {"queue": callbacks_queue, "routing_key": callbacks_queue},
    "mailworker.deliver_callback": {"queue": callbacks_queue, "routing_key": callbacks_queue},
    "mailworker.status_hook": {"queue": callbacks_queue, "routing_key": callbacks_queue},
}

# Task events (what Flower shows) cost 3-4 Redis messages per email, so workers start with them off and Flower
# switches them on remotely while it runs (its --enable_events, on by default; `celery -A worker control
# enable_events` does the same). MAILWORKER_TASK_EVENTS=1 starts workers with them on. Task arguments shown
# are ids, never secrets or bodies. No `task-sent` events: publishing stays one LPUSH.
worker_send_task_events: bool = read("MAILWORKER_TASK_EVENTS")
task_send_sent_event = False
task_track_started = True
# The maintenance tasks (a sweep every SWEEP_INTERVAL, a reconcile every minute: ~7,000 a day) send no task
# events even while Flower has them on, so Flower's task list and its memory hold mail, not housekeeping.
# (`Task.send_events`, set through annotations: the worker checks it before every task-* event.)
task_annotations = {name: {"send_events": False}
                    for name in ("mailworker.sweep", "mailworker.reconcile", "mailworker.purge",
                                 "mailworker.dispatch_callbacks")}

beat_schedule = {
    "sweep": {"task": "mailworker.sweep", "schedule": read("SWEEP_INTERVAL")},
    "purge": {"task": "mailworker.purge", "schedule": 24 * 3600.0},
    "sync-suppressions": {"task": "mailworker.sync_suppressions", "schedule": 3600.0},
    "reconcile": {"task": "mailworker.reconcile", "schedule": read("RECONCILE_INTERVAL")},
    "callbacks": {"task": "mailworker.dispatch_callbacks",
                  "schedule": read("CALLBACK_DISPATCH_INTERVAL")},
}

timezone = "UTC"
enable_utc = True
worker_hijack_root_logger = False
