"""Contract of the sending side: every transport answers ``send(*, email)`` with Accepted / NotSent / Unknown and
returns operator problems as Held; every SMTP2Go ``/email/send`` fixture maps to the expected
outcome; the breaker and rate limit answer as a wrapper transport.

A second provider would be one transport module plus a test like the SMTP2Go part of this one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import FIXTURES_DIR, SmtpSink, free_port
from worker import providers
from worker.devtools.fake_smtp2go import FakeSMTP2Go, Scripted
from worker.infrastructure.config import get_settings, reset_settings
from worker.providers import breaker as protection
from worker.providers.base import Accepted, Held, NotSent, Outcome, OutgoingEmail, Transport, Unknown
from worker.providers.breaker import Breaker
from worker.providers.smtp.transport import SmtpTransport
from worker.providers.smtp2go.transport import Smtp2GoTransport, send_outcome


def fixture(name: str) -> Any:
    return json.loads((FIXTURES_DIR / name).read_text())


def email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        tracking_id="6a1f0f5e-0000-4000-8000-000000000001", sender="Support <support@example.org>",
        to=["Alice <alice@example.com>"], cc=[], bcc=[], subject="Hi", text_body="text", html_body=None,
        reply_to=None, headers={}, attachments=[], template_id=None, template_data=None, message_id_header=None)
    fields.update(overrides)
    return OutgoingEmail(**fields)


class Departures:
    """A ``departing`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


# ------------------------------------------------------------------------------------ SMTP2Go answers


@pytest.mark.parametrize(("status", "name", "expected"), [
    (200, "send_success.json", Accepted("1t9QkX-4Rb2Wm8YzK-Q7aP")),
    (200, "send_success_fastaccept.json", Accepted("1t9QlB-7Hc3Nx2QvL-R4dM")),
    (400, "send_error_data.json", NotSent(retryable=False, reason=(
        "smtp2go 400 E_ApiResponseCodes.ENDPOINT_PERMISSION_DENIED: You do not have permission to access this "
        "API endpoint"))),
    (400, "send_error_toplevel.json", NotSent(retryable=False, reason=(
        "smtp2go 400 E_ApiResponseCodes.NON_VALIDATING_IN_PAYLOAD: An error occurred processing the json data you "
        "sent with the request. (sender: The field 'sender' was expecting a valid RFC-822 formatted email field "
        "but found 'noreply_example.com'.)"))),
    (200, "send_failures_strings.json", NotSent(retryable=False, reason=(
        "smtp2go 200: The API Key passed was not in the correct format."))),
    (400, "send_failures_strings.json", NotSent(retryable=False, reason=(
        "smtp2go 400: The API Key passed was not in the correct format."))),
])
def test_every_send_fixture_maps_to_its_outcome(status: int, name: str, expected: Outcome) -> None:
    assert send_outcome(status, fixture(name)) == expected


def test_status_alone_decides_rate_limit_server_error_and_unknown() -> None:
    assert send_outcome(429, {}, retry_after=7.0) == NotSent(retryable=True, reason="smtp2go 429: rate limited",
                                                             retry_after=7.0, rate_limited=True)
    assert send_outcome(503, None) == NotSent(retryable=True, reason="smtp2go 503: server error 503")
    assert send_outcome(200, {"data": {"succeeded": 1}}) == Unknown("smtp2go 200: 200 without data.email_id")
    assert send_outcome(200, None) == Unknown("smtp2go 200: 200 with an unreadable body")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_held_for_the_operator(status: int) -> None:
    outcome = send_outcome(status, fixture("send_error_data.json"))
    assert isinstance(outcome, Held) and f"({status})" in outcome.problem


# ------------------------------------------------------------------------------ transports over the wire


def test_smtp2go_transport_over_http() -> None:
    with FakeSMTP2Go(api_key="k-1") as api:
        transport = Smtp2GoTransport(api_key="k-1", api_url=api.url, timeout=0.5, connect_timeout=0.5)
        assert "k-1" not in repr(transport)
        gone = Departures()
        outcome = transport.send(email(), departing=gone)
        assert outcome == Accepted(api.sends[0]["email_id"]) and gone.calls == 1
        api.script(Scripted.slow(2))
        assert isinstance(transport.send(email()), Unknown)  # the request left; no answer in time
        assert isinstance(Smtp2GoTransport(api_key="wrong", api_url=api.url).send(email()), Held)
    refused = Smtp2GoTransport(api_key="k", api_url=f"http://127.0.0.1:{free_port()}/v3", connect_timeout=0.5)
    gone = Departures()
    outcome = refused.send(email(), departing=gone)
    assert isinstance(outcome, NotSent) and outcome.retryable and gone.calls == 1


def test_smtp_transport_over_smtp(smtp_sink: SmtpSink) -> None:
    transport = providers.get("smtp").transport("smtp", "", None, get_settings())
    assert isinstance(transport, SmtpTransport)
    gone = Departures()
    outcome = transport.send(email(), departing=gone)
    assert isinstance(outcome, Accepted) and gone.calls == 1 and not outcome.refused and not outcome.deferred
    # only SMTP2Go renders templates: refused for good by this transport
    templated = transport.send(email(text_body=None, template_id="t-1"))
    assert isinstance(templated, NotSent) and not templated.retryable
    closed = SmtpTransport(host="127.0.0.1", port=free_port(), security="none", timeout=1)
    down = closed.send(email())
    assert isinstance(down, NotSent) and down.retryable


def test_the_relay_is_skipped_without_smtp_host(base_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    base_env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    reset_settings()
    assert providers.get("smtp").transport("smtp", "", None, get_settings()) is None


# ----------------------------------------------------------------------------- the breaker as a wrapper


@dataclass
class ScriptedTransport:
    """A transport answering from a script (or raising), recording its calls."""

    answers: list[Outcome]
    calls: int = 0

    def send(self, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome:
        self.calls += 1
        if departing is not None:
            departing()
        return self.answers.pop(0)


@pytest.fixture
def breaker(base_env: pytest.MonkeyPatch, redis_client: Any, tmp_path: Any) -> Any:
    base_env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    base_env.setenv("SMTP2GO_BREAKER_THRESHOLD", "2")
    base_env.setenv("SMTP2GO_BREAKER_COOLDOWN", "30")
    reset_settings()
    return get_settings()


def test_protected_transport_opens_on_failures_and_declines_without_sending(breaker: Any) -> None:
    inner = ScriptedTransport([NotSent(retryable=True, reason="5xx"), Unknown("timeout")])
    wrapped: Transport = Breaker(inner, "smtp2go", breaker)
    assert wrapped.send(email()) == NotSent(retryable=True, reason="5xx")
    assert wrapped.send(email()) == Unknown("timeout")  # the second failure opens the breaker
    gone = Departures()
    declined = wrapped.send(email(), departing=gone)
    assert isinstance(declined, NotSent) and declined.declined and declined.problem is None
    assert declined.retry_after is not None and declined.retry_after > 20
    assert inner.calls == 2 and gone.calls == 0  # nothing left: the attempt is not counted


def test_protected_transport_refused_key_opens_with_the_problem_and_is_held(breaker: Any) -> None:
    inner = ScriptedTransport([Held("SMTP2Go refused the API key (401)")])
    wrapped = Breaker(inner, "smtp2go", breaker)
    assert wrapped.send(email()) == Held("SMTP2Go refused the API key (401)")
    declined = wrapped.send(email())
    assert isinstance(declined, NotSent) and declined.declined
    assert declined.problem == "SMTP2Go refused the API key (401)"
    assert protection.state(breaker)["breaker"] == "open"


def test_protected_transport_429_pauses_everyone_and_success_closes_nothing_open(breaker: Any) -> None:
    inner = ScriptedTransport([NotSent(retryable=True, reason="429", retry_after=5.0, rate_limited=True),
                               Accepted("id-1")])
    wrapped = Breaker(inner, "smtp2go", breaker)
    assert wrapped.send(email()).retryable  # type: ignore[union-attr]
    paused = wrapped.send(email())
    assert isinstance(paused, NotSent) and paused.retryable and not paused.declined
    assert paused.retry_after is not None and 4 < paused.retry_after <= 5
    assert inner.calls == 1 and protection.state(breaker)["failures"] == 0  # a 429 is not a failure
    protection.reset(breaker)
    assert wrapped.send(email()) == Accepted("id-1")
    assert protection.state(breaker)["breaker"] == "closed"
