"""The public receiver runs with the broker URL and its webhook secret alone: no DATABASE_URL in its environment.

The process facing the internet should hold no database credentials; it never needs the database on the
request path. Every other process still refuses to start without DATABASE_URL (checked here too, so the
tests below prove something about the receiver and not about a laxer configuration).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import FIXTURES_DIR, gunicorn_server
from webhook_app import configure_logging, create_app
from worker.errors import ConfigurationError
from worker.infrastructure.config import load_receiver_settings, load_settings

SECRET = "whsec-nodb-5a6b7c8d9e0f"
EVENTS_PATH = "/api/webhooks/smtp2go/events"
BOUNCE = (FIXTURES_DIR / "webhook_bounce_hard.json").read_bytes()


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The receiver's deployed environment: a webhook secret, no DATABASE_URL (nor a dev stack to borrow one)."""
    for name in ("DATABASE_URL", "MAILWORKER_ALLOW_UNAUTHENTICATED_WEBHOOKS", "WEBHOOK_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMTP2GO_WEBHOOK_SECRET", SECRET)
    yield monkeypatch


def test_app_factory_starts_and_queues_without_database_url(no_database: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not set"):
        load_settings()  # the rest of mailworker still insists
    published: list[dict[str, Any]] = []
    app = create_app({"publisher": published.append, "TESTING": True})
    try:
        state = app.extensions["mailworker_webhooks"]
        assert state.secrets.configured and not state.open_door
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        refused = client.post(EVENTS_PATH, data=BOUNCE, headers={"Content-Type": "application/json"})
        assert refused.status_code == 401
        response = client.post(EVENTS_PATH, data=BOUNCE, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
        assert (response.status_code, response.get_json()) == (200, {"received": 1, "queued": 1, "ignored": 0})
        assert len(published) == 1 and published[0]["event"] == "bounce"
    finally:
        app.extensions["mailworker_webhooks"].secrets.stop()


def test_receiver_settings_still_check_what_is_given(no_database: pytest.MonkeyPatch) -> None:
    settings = load_receiver_settings()
    assert settings.database_url is None and settings.smtp2go_webhook_secrets == (SECRET,)
    assert SECRET not in repr(settings)
    no_database.setenv("CELERY_BROKER_URL", "redis://:brokerpw@127.0.0.1:6379/x")
    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL"):
        load_receiver_settings()
    no_database.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    no_database.setenv("DATABASE_URL", "postgresql://u:pw@db/mw")  # optional, but never silently wrong
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        load_receiver_settings()


def test_receiver_logging_redacts_its_secrets_without_database_url(no_database: pytest.MonkeyPatch) -> None:
    no_database.setenv("CELERY_BROKER_URL", "redis://:broker-pass-77@127.0.0.1:6379/0")
    logger = logging.getLogger("tests.receiver.redaction")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        configure_logging(logger)
        logger.warning("presented %s and %s", SECRET, "broker-pass-77")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "presented" in text
    assert SECRET not in text and "broker-pass-77" not in text


def test_procfile_web_process_serves_and_queues_without_database_url(redis_url: str, tmp_path: Path,
                                                                    events_queue: Any) -> None:
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and not k.startswith(("SMTP2GO_", "MAILWORKER_ALLOW", "WEB_"))}
    env.update({"SMTP2GO_WEBHOOK_SECRET": SECRET, "CELERY_BROKER_URL": redis_url})
    log_path = tmp_path / "gunicorn.log"
    with gunicorn_server(env, log_path) as base:  # ready only once /healthz answered 200
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        response = requests.post(f"{base}{EVENTS_PATH}", data=BOUNCE, timeout=10, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
    assert (response.status_code, response.json()) == (200, {"received": 1, "queued": 1, "ignored": 0})
    queued = events_queue()
    assert [name for name, _, _ in queued] == ["mailworker.process_event"]
    assert queued[0][1][0]["event"] == "bounce"
    log = log_path.read_text()
    assert "Traceback" not in log
    assert SECRET not in log
