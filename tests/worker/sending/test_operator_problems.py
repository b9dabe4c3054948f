"""An operator's mistake holds mail, it never fails it, on MariaDB and on SQLite.

A revoked SMTP2Go key, a host without SETTINGS_ENCRYPTION_KEY, or no usable transport keep the message
``retrying`` with ``last_error`` naming the problem; a refused key opens the shared breaker so one trial per
cool-down (not every message) meets it; once fixed, the mail goes out through SMTP2Go again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import API_KEY, wait_until
from worker import enqueue_email, get_email_status
from worker.cli import main
from worker.infrastructure.config import reset_settings
from worker.infrastructure.crypto import generate_key
from worker.infrastructure.db import session_scope
from worker.infrastructure.modules import SMTP2GO, set_module_enabled, update_module_settings
from worker.providers import breaker as protection
from worker.sending.delivery import OutcomeKind, deliver


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


@pytest.fixture
def short_cooldown(base_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    base_env.setenv("SMTP2GO_BREAKER_COOLDOWN", "1")
    reset_settings()
    return base_env


def _status(tid: str) -> dict[str, Any]:
    status = get_email_status(tid)
    assert status is not None
    return status


def _deliver_when_due(tid: str, timeout: float = 10.0) -> OutcomeKind:
    """Deliver as a worker would once the message is due again (a held message waits out its cool-down)."""
    def attempt() -> OutcomeKind | None:
        outcome = deliver(tid, owner="w:later")
        return outcome.kind if outcome.kind != OutcomeKind.SKIPPED else None

    return wait_until(attempt, timeout=timeout, interval=0.2, message=f"{tid} to be due and attempted")


def test_revoked_key_holds_mail_one_probe_then_sends_through_smtp2go_once_fixed(
        fake_api: Any, short_cooldown: pytest.MonkeyPatch, database: str) -> None:
    short_cooldown.setenv("SMTP2GO_API_KEY", "api-revoked-0000")
    reset_settings()
    first = enqueue_email("a@example.com", "revoked", text_body="x")
    others = [enqueue_email(f"b{i}@example.com", "revoked", text_body="x") for i in range(3)]

    assert deliver(first, owner="w").kind == OutcomeKind.HELD
    held = _status(first)
    assert held["status"] == "held" and held["held"] is True and held["ambiguous"] is False
    assert "401" in held["last_error"] and "api_key" in held["last_error"]
    assert "api-revoked-0000" not in held["last_error"]
    # the attempt that met the refused key is on record as held: it does not use up the retry budget
    assert [(a["provider"], a["outcome"]) for a in held["attempts"]] == [("smtp2go", "held")]
    assert protection.state()["breaker"] == "open"
    for tid in others:  # the breaker holds them without calling the API: one probe met the bad key
        assert deliver(tid, owner="w").kind == OutcomeKind.HELD
        assert _status(tid)["status"] == "held" and "401" in _status(tid)["last_error"]
    assert len(fake_api.requests) == 1 and fake_api.count_for(first) == 0

    short_cooldown.setenv("SMTP2GO_API_KEY", API_KEY)  # the operator fixes the key
    reset_settings()
    for tid in [first, *others]:
        assert _deliver_when_due(tid) == OutcomeKind.SENT
        status = _status(tid)
        assert status["status"] == "sent" and status["transport"] == "smtp2go"
        assert fake_api.count_for(tid) == 1


def test_revoked_key_with_a_relay_relays_and_later_mail_returns_to_smtp2go(
        fake_api: Any, smtp_sink: Any, short_cooldown: pytest.MonkeyPatch, database: str) -> None:
    short_cooldown.setenv("SMTP2GO_API_KEY", "api-revoked-0000")
    reset_settings()
    relayed = enqueue_email("a@example.com", "revoked", text_body="x")
    assert deliver(relayed, owner="w").kind == OutcomeKind.SENT
    status = _status(relayed)
    assert status["transport"] == "smtp" and "401" in (status["fallback_reason"] or "")
    assert smtp_sink.count_for(relayed) == 1

    short_cooldown.setenv("SMTP2GO_API_KEY", API_KEY)
    reset_settings()
    time.sleep(1.1)  # the breaker's cool-down: the next send is its trial request
    later = enqueue_email("b@example.com", "fixed", text_body="x")
    assert deliver(later, owner="w").kind == OutcomeKind.SENT
    assert _status(later)["transport"] == "smtp2go" and fake_api.count_for(later) == 1
    assert protection.state()["breaker"] == "closed"


def test_missing_encryption_key_on_one_host_holds_then_requeue_held_sends(
        fake_api: Any, base_env: pytest.MonkeyPatch, database: str) -> None:
    key = generate_key()
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", key)
    reset_settings()
    with session_scope() as session:
        update_module_settings(session, SMTP2GO, {"api_key": API_KEY, "api_url": fake_api.url})
        set_module_enabled(session, SMTP2GO, True)
    base_env.delenv("SETTINGS_ENCRYPTION_KEY")  # this host was deployed without it
    reset_settings()
    tid = enqueue_email("a@example.com", "no key here", text_body="x")
    assert deliver(tid, owner="w").kind == OutcomeKind.HELD
    status = _status(tid)
    assert status["status"] == "held" and "SETTINGS_ENCRYPTION_KEY" in status["last_error"]
    assert len(fake_api.requests) == 0

    base_env.setenv("SETTINGS_ENCRYPTION_KEY", key)
    reset_settings()
    result = CliRunner().invoke(main, ["requeue", "--held", "--json"])
    assert result.exit_code == 0, result.output
    assert tid in result.output
    assert deliver(tid, owner="w").kind == OutcomeKind.SENT  # due at once, not after the cool-down
    assert _status(tid)["transport"] == "smtp2go" and fake_api.count_for(tid) == 1


def test_module_disabled_and_no_relay_holds_until_a_transport_exists(
        short_cooldown: pytest.MonkeyPatch, smtp_sink: Any, database: str) -> None:
    base_env = short_cooldown
    base_env.delenv("SMTP_HOST")  # the sink runs, but this host has no relay configured yet
    reset_settings()
    tid = enqueue_email("a@example.com", "nowhere to go", text_body="x")
    assert deliver(tid, owner="w").kind == OutcomeKind.HELD
    status = _status(tid)
    assert status["status"] == "held" and "no transport configured" in status["last_error"]
    assert status["recipients"][0]["status"] == "queued"

    base_env.setenv("SMTP_HOST", smtp_sink.host)
    reset_settings()
    assert _deliver_when_due(tid) == OutcomeKind.SENT
    assert smtp_sink.count_for(tid) == 1


def test_an_unusable_api_url_holds_mail_without_spending_attempts(
        short_cooldown: pytest.MonkeyPatch, fake_api: Any, database: str) -> None:
    """An SMTP2Go URL that no request can use is an operator problem: the message is held, never retried into
    a fallback or a failure however often it is tried, and goes out through SMTP2Go once the URL is fixed. The
    URL is one an older release let ``module set`` store (``module set`` and start-up refuse it now)."""
    from worker.infrastructure import modules

    base_env = short_cooldown
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    reset_settings()
    with short_cooldown.context() as patch, session_scope() as session:
        patch.setattr(modules, "check_api_url", lambda value, name="": value)  # as stored before the check
        update_module_settings(session, SMTP2GO, {"api_key": API_KEY, "api_url": "ftp://api.smtp2go.com/v3"})
        set_module_enabled(session, SMTP2GO, True)
    tid = enqueue_email("url@example.com", "bad url", text_body="x")
    assert deliver(tid, owner="w").kind == OutcomeKind.HELD
    for _ in range(3):  # SEND_MAX_RETRIES is 3: a retryable error would have failed or fallen back by now
        assert _deliver_when_due(tid) == OutcomeKind.HELD
    status = _status(tid)
    assert status["status"] == "held" and status["held"] is True and status["attempts"] == []
    assert "is not an http(s) URL" in status["last_error"]
    assert fake_api.count_for(tid) == 0

    with session_scope() as session:  # the operator fixes it
        update_module_settings(session, SMTP2GO, {"api_url": fake_api.url})
    assert _deliver_when_due(tid) == OutcomeKind.SENT
    assert fake_api.count_for(tid) == 1
