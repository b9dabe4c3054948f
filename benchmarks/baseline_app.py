"""The send baseline: a bare Celery task that makes the same HTTP call as mailworker, with no database work.

Run as ``python -m celery -A benchmarks.baseline_app worker -P <pool> -c <n> -Q $MWBENCH_BASELINE_QUEUE``.

It shares with the product only what decides the broker traffic per task -- JSON, late acks, prefetch 1,
reject on worker loss, no results -- so the difference between the two is what mailworker adds on top of
"Celery + one HTTP POST": the database (claim, in-flight mark, outcome), the protections in Redis, task
events for Flower, logging. The HTTP side is the same too: one keep-alive ``requests`` session per thread with
the same adapter settings, the same JSON body and headers, the same timeouts.
"""

from __future__ import annotations

import os
import threading

import requests
from celery import Celery
from requests.adapters import HTTPAdapter

from benchmarks.common import API_KEY, baseline_payload

QUEUE = os.environ.get("MWBENCH_BASELINE_QUEUE", "mwbench.baseline")
API_URL = os.environ.get("SMTP2GO_API_URL", "http://127.0.0.1:9/v3").rstrip("/")

app = Celery("mwbench_baseline")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


@app.task(name="mwbench.baseline_send", acks_late=True)
def baseline_send(tracking_id: str, to: str) -> str:
    """POST the benchmark email to the fake SMTP2Go and return its ``email_id``; nothing is stored."""
    response = _session().post(
        f"{API_URL}/email/send", json=baseline_payload(tracking_id, to),
        headers={"X-Smtp2go-Api-Key": API_KEY, "Accept": "application/json"}, timeout=(5.0, 30.0),
    )
    response.raise_for_status()
    return str(response.json()["data"]["email_id"])
