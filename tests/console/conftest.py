"""Console fixtures: the app on MariaDB and on SQLite, seeded rows, basic-auth headers and CSRF tokens."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from worker.infrastructure.db import session_scope
from worker.infrastructure.models import (
    Attachment,
    EventType,
    Message,
    MessageStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
    TrackingEvent,
    utcnow,
)

USER, PASSWORD = "operator", "correct horse battery"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
BAD_AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()}
PROTECTION = {"available": True, "breaker": "closed", "problem": None, "failures": 0, "paused_for": 0.0}


def healthy() -> Any:
    """What the overview shows of a stack whose worker and beat run (tests of the probe itself use the real one)."""
    from console_app.health import Health, QueueHealth

    return Health(True, [QueueHealth("mailworker.send", 0, 1)], ["celery@test"], 3.0, 15.0)


@pytest.fixture(autouse=True)
def console_secret_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The console's generated key goes to the test's own directory (never the checkout's var/), and no key
    from the environment running the tests leaks in."""
    path = tmp_path / "console-secret-key"
    monkeypatch.setenv("CONSOLE_SECRET_FILE", str(path))
    for name in ("CONSOLE_SECRET_KEY", "CONSOLE_TRUSTED_PROXIES", "CONSOLE_TRUSTED_ORIGINS",
                 "CONSOLE_LOGIN_MAX_FAILURES", "CONSOLE_LOGIN_FAILURE_WINDOW"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture(params=["mariadb", "sqlite"])
def database(request: pytest.FixtureRequest) -> str:
    """Each console test runs on MariaDB and on SQLite."""
    return str(request.getfixturevalue("db" if request.param == "mariadb" else "sqlite_db"))


class Console:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.published: list[str] = []

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers={**AUTH, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, data: dict[str, str], **kw: Any) -> Any:
        return self.client.post(path, data=data, headers={**AUTH, **kw.pop("headers", {})}, **kw)

    def token(self, path: str) -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, "no CSRF token on the page"
        return found.group(1)


@pytest.fixture
def console_factory(database: str) -> Callable[..., Console]:
    def make(**config: Any) -> Console:
        from console_app import create_app

        published: list[str] = []
        state = dict(PROTECTION)

        def publish(tracking_id: str) -> bool:
            published.append(tracking_id)
            return True

        app = create_app({"basic_auth": f"{USER}:{PASSWORD}", "TESTING": True, "publisher": publish,
                          "protection_state": lambda: state, "health": healthy, **config})
        console = Console(app)
        console.published = published
        app.extensions["test_protection"] = state
        return console

    return make


@pytest.fixture
def console(console_factory: Callable[..., Console]) -> Iterator[Console]:
    yield console_factory()


def make_message(status: MessageStatus = MessageStatus.SENT, *, to: str = "alice@example.com",
                 subject: str = "Hello", queued_at: datetime | None = None, reference: str | None = None,
                 recipient_status: RecipientStatus | None = None, **values: Any) -> str:
    """Insert one message (and its recipient) directly, as the send path would have left it."""
    tracking_id = values.pop("id", None) or str(uuid.uuid4())
    queued = queued_at or utcnow() - timedelta(minutes=5)
    defaults: dict[str, Any] = {"sender": "Support <support@example.org>", "text_body": "Hi there",
                                "size_bytes": 1234}
    if status in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.COMPLAINED):
        defaults.update(transport="smtp2go", sent_at=queued + timedelta(seconds=2), attempts=1,
                        smtp2go_message_id=f"em-{tracking_id[:8]}")
        if hasattr(Message, "api_attempts"):  # counted per transport where the schema does
            defaults["api_attempts"] = 1
    values = {k: v for k, v in values.items() if hasattr(Message, k)}  # columns this schema does not have
    if recipient_status is None:
        recipient_status = {MessageStatus.FAILED: RecipientStatus.FAILED, MessageStatus.QUEUED: RecipientStatus.QUEUED,
                            MessageStatus.RETRYING: RecipientStatus.QUEUED, MessageStatus.HELD: RecipientStatus.QUEUED,
                            MessageStatus.PARKED: RecipientStatus.QUEUED,
                            MessageStatus.DELIVERED: RecipientStatus.DELIVERED,
                            MessageStatus.BOUNCED: RecipientStatus.BOUNCED,
                            MessageStatus.SUPPRESSED: RecipientStatus.SUPPRESSED}.get(status, RecipientStatus.SENT)
    with session_scope() as session:
        message = Message(id=tracking_id, status=status, subject=subject, queued_at=queued, reference=reference,
                          **{**defaults, **values})
        message.recipients.append(Recipient(address=to, kind=RecipientKind.TO, status=recipient_status))
        session.add(message)
    return tracking_id


def add_event(tracking_id: str, event_type: EventType, recipient: str, *, at: datetime | None = None,
              payload: dict[str, Any] | None = None, **values: Any) -> None:
    with session_scope() as session:
        session.add(TrackingEvent(provider_event_id=str(uuid.uuid4()), message_id=tracking_id,
                                  event_type=event_type, raw_event=event_type.value, recipient=recipient,
                                  occurred_at=at or utcnow(), received_at=utcnow(), applied_at=utcnow(),
                                  smtp2go_data=payload, **values))


def add_attachment(tracking_id: str, filename: str, content: bytes) -> None:
    with session_scope() as session:
        session.add(Attachment(message_id=tracking_id, filename=filename, mimetype="application/pdf",
                               size_bytes=len(content), content=content))
