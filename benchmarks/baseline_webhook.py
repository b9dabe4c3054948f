"""The webhook baseline: a bare Flask handler that pushes the raw body to Redis with one LPUSH.

Served by the same gunicorn command line and worker class as ``webhook_app.wsgi:app`` (the Procfile's gevent
configuration by default, header and body deadlines included), so the ratio between the two is what the real
receiver adds per request: authentication, body size checks, parsing, a Celery publish with its task
envelope (instead of a bare LPUSH), the JSON answer and its one log line.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, Response, request

KEY = os.environ.get("MWBENCH_WEBHOOK_KEY", "mwbench.webhook-baseline")
_redis = redis.Redis.from_url(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11"))

app = Flask(__name__)


@app.post("/api/webhooks/smtp2go/events")
def receive() -> tuple[Response, int]:
    _redis.lpush(KEY, request.get_data())
    return Response(b'{"queued": 1}', mimetype="application/json"), 200


@app.get("/healthz")
def healthz() -> tuple[Response, int]:
    return Response(b'{"status": "ok"}', mimetype="application/json"), 200
