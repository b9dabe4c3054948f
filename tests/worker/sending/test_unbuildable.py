"""A message that cannot be built into a request fails for good, with its reason, and nothing is sent.

The build (the relay's MIME message, SMTP2Go's JSON body) happens before the attempt is marked in flight, so a
build error is never taken for a send that may have happened: nothing is parked, retried or handed to the other
transport. The rows here bypass enqueue_email's validation (written straight into the database), the way a row
from an older version or a direct insert would.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from tests.conftest import SmtpSink, wait_until
from worker import enqueue_email, get_email_status
from worker.devtools.fake_smtp2go import FakeSMTP2Go
from worker.infrastructure.db import get_engine
from worker.infrastructure.models import Transport
from worker.providers.base import NotSent, OutgoingEmail
from worker.providers.smtp.transport import SmtpTransport
from worker.providers.smtp2go.transport import Smtp2GoTransport
from worker.sending.jobs import M
from worker.sending.publish import publish_send

LATER = datetime(2099, 1, 1, tzinfo=UTC)


def _stored_then_tampered(**values: Any) -> str:
    """A valid email, stored without being published, then given ``values`` directly in its row and made due."""
    tid = enqueue_email(["ann@example.com", "Bob <bob@example.com>"], "fine", text_body="hello", send_at=LATER)
    with get_engine().begin() as conn:
        conn.execute(update(M).where(M.c.id == tid).values(send_at=None, next_attempt_at=None, **values))
    return tid


def _email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        tracking_id="6a1f0f5e-0000-4000-8000-00000000000b", sender="Support <support@example.org>",
        to=["Alice <alice@example.com>"], cc=[], bcc=[], subject="Hi", text_body="text", html_body=None,
        reply_to=None, headers={}, attachments=[], template_id=None, template_data=None, message_id_header=None)
    fields.update(overrides)
    return OutgoingEmail(**fields)


class Departures:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_relay_build_error_is_failed_with_its_reason_and_the_relay_gets_nothing(smtp_sink: SmtpSink,
                                                                                 celery_worker: Any) -> None:
    """A subject with U+000B: the email package refuses it. Before, the refusal came after the in-flight mark,
    the worker crashed, the message was parked as "may have been accepted", released, and crashed again."""
    tid = _stored_then_tampered(subject="Line one\x0bline two")
    assert publish_send(tid)

    def final() -> dict[str, Any] | None:
        status = get_email_status(tid)
        return status if status and status["status"] in {"sent", "failed", "parked"} else None

    status = wait_until(final, timeout=30, message="the email to reach a final state")
    assert status["status"] == "failed"
    assert "could not be built, nothing was sent" in status["last_error"]
    assert "ValueError: Header values may not contain linefeed" in status["last_error"]
    assert not status["ambiguous"]
    assert status["attempts"] == []  # nothing was handed to a provider
    assert {r["status"] for r in status["recipients"]} == {"failed"}
    assert smtp_sink.messages == []
    with get_engine().connect() as conn:
        row = conn.execute(M.select().where(M.c.id == tid)).one()
    assert row.inflight_since is None and row.lease_owner is None and row.crashes == 0


def test_api_build_error_is_failed_without_a_request_or_a_fallback(fake_api: FakeSMTP2Go, smtp_sink: SmtpSink,
                                                                    sqlite_db: str) -> None:
    """NaN in template_data (SQLite's JSON column keeps it): the JSON body cannot be encoded. Before, requests
    raised it as a RequestException after the in-flight mark, and the send was parked as ambiguous."""
    from worker.sending.delivery import OutcomeKind, deliver

    tid = _stored_then_tampered(template_id="t-1", template_data={"total": float("nan")}, text_body=None)
    outcome = deliver(tid, owner="w")
    assert outcome.kind == OutcomeKind.FAILED and outcome.transport == Transport.SMTP2GO
    status = get_email_status(tid)
    assert status is not None and status["status"] == "failed" and not status["ambiguous"]
    assert status["last_error"] == ("smtp2go: the message could not be built, nothing was sent (ValueError: Out of "
                                    "range float values are not JSON compliant)")
    assert status["attempts"] == []
    assert status["fallback_reason"] is None
    assert fake_api.requests == []
    assert smtp_sink.messages == []


def test_transports_build_before_departing(smtp_sink: SmtpSink) -> None:
    """The contract both transports keep: a build error is NotSent(unbuildable) and ``departing`` never ran."""
    relay = SmtpTransport(host=smtp_sink.host, port=smtp_sink.port, security="none", timeout=5)
    gone = Departures()
    outcome = relay.send(email=_email(subject="a\u2028b"), departing=gone)
    assert isinstance(outcome, NotSent) and outcome.unbuildable and not outcome.retryable
    assert gone.calls == 0 and smtp_sink.messages == []
    with FakeSMTP2Go(api_key="k-1") as api:
        transport = Smtp2GoTransport(api_key="k-1", api_url=api.url, timeout=1, connect_timeout=1)
        outcome = transport.send(email=_email(template_id="t", template_data={"x": float("inf")}), departing=gone)
        assert isinstance(outcome, NotSent) and outcome.unbuildable and gone.calls == 0
        assert api.requests == []
        # a message that builds still departs once and is sent
        sent = transport.send(email=_email(template_id="t", template_data={"x": 1.0}), departing=gone)
        assert not isinstance(sent, NotSent) and gone.calls == 1 and len(api.requests) == 1
        assert api.sends[0]["payload"]["template_data"] == {"x": 1.0}


def test_unbuildable_message_says_nothing_to_the_breaker(base_env: Any, redis_client: Any, tmp_path: Any) -> None:
    """Counted API failures stay counted: a message that never became a request is no sign the API is up."""
    from worker.infrastructure.config import get_settings, reset_settings
    from worker.providers import breaker as protection
    from worker.providers.breaker import Breaker

    base_env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    base_env.setenv("SMTP2GO_BREAKER_THRESHOLD", "5")
    reset_settings()
    settings = get_settings()
    protection.record_failure(settings)
    assert protection.state(settings)["failures"] == 1
    with FakeSMTP2Go(api_key="k-1") as api:
        wrapped = Breaker(Smtp2GoTransport(api_key="k-1", api_url=api.url, timeout=1, connect_timeout=1), "smtp2go",
                          settings)
        outcome = wrapped.send(_email(template_id="t", template_data={"x": float("nan")}))
        assert isinstance(outcome, NotSent) and outcome.unbuildable and api.requests == []
        assert protection.state(settings)["failures"] == 1
        assert not isinstance(wrapped.send(_email()), NotSent)  # a real answer still clears them
    assert protection.state(settings)["failures"] == 0
