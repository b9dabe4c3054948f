"""The receiver as deployed (the Procfile's ``web`` line: gunicorn, gevent workers) over real HTTP, publishing to
real Redis."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import FIXTURES_DIR, gunicorn_server

FIXTURES = FIXTURES_DIR
OLD_SECRET = "whsec-old-0a1b2c3d4e5f"
NEW_SECRET = "whsec-new-9f8e7d6c5b4a"
MAX_BODY = 64 * 1024


@pytest.fixture
def server(redis_url: str, tmp_path: Path, sqlite_db: str) -> Iterator[str]:
    """The ``web`` process with two workers; the secrets come from the environment (rotation: two of them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP2GO_", "MAILWORKER_ALLOW", "WEB_"))}
    env.update({
        "SMTP2GO_WEBHOOK_SECRET": f"{OLD_SECRET},{NEW_SECRET}",
        "CELERY_BROKER_URL": redis_url,
        "DATABASE_URL": sqlite_db,
        "WEBHOOK_MAX_BODY_BYTES": str(MAX_BODY),
    })
    with gunicorn_server(env, tmp_path / "gunicorn.log") as base:
        yield base
    text = (tmp_path / "gunicorn.log").read_text()
    for secret in (OLD_SECRET, NEW_SECRET):
        assert secret not in text, "a webhook secret reached the log"


def test_plain_gunicorn_still_serves_the_app(redis_url: str, tmp_path: Path, sqlite_db: str,
                                            events_queue: Any) -> None:
    """``webhook_app.wsgi:app`` under plain gunicorn (sync workers), for operators behind their own proxy."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP2GO_", "MAILWORKER_ALLOW", "WEB_"))}
    env.update({"SMTP2GO_WEBHOOK_SECRET": NEW_SECRET, "CELERY_BROKER_URL": redis_url, "DATABASE_URL": sqlite_db})
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    argv = ["sh", "-c", f'exec {gunicorn} -w 1 -b "$WEB_BIND" webhook_app.wsgi:app']
    with gunicorn_server(env, tmp_path / "plain.log", argv=argv) as base:
        response = requests.post(f"{base}/api/webhooks/smtp2go/events", timeout=10,
                                 data=(FIXTURES / "webhook_bounce_hard.json").read_bytes(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {NEW_SECRET}"})
    assert (response.status_code, response.json()) == (200, {"received": 1, "queued": 1, "ignored": 0})
    assert [name for name, _, _ in events_queue()] == ["mailworker.process_event"]
    assert "Using worker: sync" in (tmp_path / "plain.log").read_text()


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def test_json_and_form_webhooks_over_real_http(server: str, events_queue: Any) -> None:
    url = f"{server}/api/webhooks/smtp2go/events"
    bounce = (FIXTURES / "webhook_bounce_hard.json").read_bytes()
    form = (FIXTURES / "webhook_delivered.form").read_bytes()

    response = requests.post(url, data=bounce, timeout=10, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {NEW_SECRET}"})
    assert (response.status_code, response.json()) == (200, {"received": 1, "queued": 1, "ignored": 0})

    response = requests.post(url, data=form, timeout=10, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": _basic("smtp2go", OLD_SECRET)})
    assert (response.status_code, response.json()) == (200, {"received": 1, "queued": 1, "ignored": 0})

    response = requests.post(url, data=bounce, timeout=10, headers={
        "Content-Type": "application/json", "Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"

    tasks = events_queue()
    assert [name for name, _, _ in tasks] == ["mailworker.process_event"] * 2
    assert tasks[0][1] == [json.loads(bounce)]
    assert tasks[1][1][0]["event"] == "delivered"
    assert tasks[1][1][0]["rcpt"] == "alice@example.com"
    assert requests.get(f"{server}/healthz", timeout=5).json() == {"status": "ok"}


def test_oversize_bodies_over_real_http(server: str, events_queue: Any) -> None:
    url = f"{server}/api/webhooks/smtp2go/events"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {NEW_SECRET}"}
    big = json.dumps([{"event": "open", "email_id": "x" * 100}] * 2000).encode()
    assert len(big) > MAX_BODY

    response = requests.post(url, data=big, headers=headers, timeout=10)
    assert response.status_code == 413

    # A generator body makes requests send Transfer-Encoding: chunked (no Content-Length to check up front).
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    response = requests.post(url, data=chunks(), headers=headers, timeout=10)
    assert response.status_code == 413
    assert response.json() == {"error": "payload too large"}
    assert events_queue() == []
