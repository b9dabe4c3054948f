"""Webhook receiver fixtures: real credentials for every auth method, apps, and the real events queue.

The credential builders are plain functions exposed through the ``creds`` fixture (test modules cannot import
a conftest reliably); ``auth`` is parametrized over the three methods so one contract test runs for each.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import FIXTURES_DIR
from webhook_app import create_app

FIXTURES = FIXTURES_DIR
SECRET = "whsec-test-4f1c9a2b7d3e8f60"
OLD_SECRET = "whsec-old-0a1b2c3d4e5f"
NEW_SECRET = "whsec-new-9f8e7d6c5b4a"
EVENTS_PATH = "/api/webhooks/smtp2go/events"
AUTH_METHODS = ("bearer", "basic", "signature")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(user: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def signature(secret: str, body: bytes, t: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Mailworker-Signature": f"t={stamp},v1={digest}"}


def credentials(method: str, secret: str, body: bytes) -> dict[str, str]:
    """Headers proving ``secret`` with ``method`` for this exact body."""
    if method == "bearer":
        return bearer(secret)
    if method == "basic":
        return basic("smtp2go", secret)
    if method == "signature":
        return signature(secret, body)
    raise ValueError(method)


@pytest.fixture(params=AUTH_METHODS)
def auth(request: pytest.FixtureRequest) -> Callable[[str, bytes], dict[str, str]]:
    """``auth(secret, body) -> headers`` for one auth method (the test runs once per method)."""
    method: str = request.param
    return lambda secret, body: credentials(method, secret, body)


@dataclass
class RecordingPublisher:
    """Stands in for the broker in unit tests; ``fail_after`` makes the n-th publish raise."""

    events: list[dict[str, Any]] = field(default_factory=list)
    fail_after: int | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.fail_after is not None and len(self.events) >= self.fail_after:
            raise ConnectionError("broker down")
        self.events.append(event)


@pytest.fixture
def creds() -> SimpleNamespace:
    return SimpleNamespace(bearer=bearer, basic=basic, signature=signature, credentials=credentials,
                           SECRET=SECRET, OLD_SECRET=OLD_SECRET, NEW_SECRET=NEW_SECRET,
                           Recorder=RecordingPublisher, EVENTS_PATH=EVENTS_PATH)


@pytest.fixture
def recorder() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def make_app(base_env: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """``make_app(**test_config)``; stops each app's secret refresher afterwards."""
    apps: list[Flask] = []

    def factory(**config: Any) -> Flask:
        config.setdefault("TESTING", True)
        app = create_app(config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["mailworker_webhooks"].secrets.stop()


@pytest.fixture
def client(make_app: Callable[..., Flask], recorder: RecordingPublisher) -> FlaskClient:
    """A test client with one secret and a recording publisher."""
    return make_app(secrets=[SECRET], publisher=recorder).test_client()


def fixture_bodies() -> list[Path]:
    return sorted(FIXTURES.glob("webhook_*.json"))


# --------------------------------------------------------------------------------------- the events queue


def events_queue_name() -> str:
    import celeryconfig

    return str(celeryconfig.events_queue)


def queued_tasks(redis_client: Any) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """Messages on the real events queue, oldest first, as (task name, args, kwargs)."""
    out = []
    for raw in reversed(redis_client.lrange(events_queue_name(), 0, -1)):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args, kwargs))
    return out


@pytest.fixture
def events_queue(redis_client: Any) -> Callable[[], list[tuple[str, list[Any], dict[str, Any]]]]:
    return lambda: queued_tasks(redis_client)


@pytest.fixture
def redis_url(redis_client: Any) -> str:
    kwargs = redis_client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
