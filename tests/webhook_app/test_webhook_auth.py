"""Authentication contract: the same cases for Bearer, Basic and the HMAC signature, plus secret sourcing."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from webhook_app import auth as auth_module
from webhook_app.auth import LEGACY_SIGNATURE_HEADER, SIGNATURE_HEADER, SecretStore, authenticate, signature_header

# Same values as conftest.py (test modules do not import the conftest; the ``creds`` fixture carries them).
EVENTS_PATH = "/api/webhooks/smtp2go/events"
SECRET = "whsec-test-4f1c9a2b7d3e8f60"
OLD_SECRET = "whsec-old-0a1b2c3d4e5f"
NEW_SECRET = "whsec-new-9f8e7d6c5b4a"
BODY = json.dumps({"event": "delivered", "email_id": "1t9QkX-4Rb2Wm8YzK-Q7aP", "rcpt": "a@example.com"}).encode()
JSON = {"Content-Type": "application/json"}

Auth = Callable[[str, bytes], dict[str, str]]


def post(client: FlaskClient, headers: dict[str, str], body: bytes = BODY) -> Any:
    return client.post(EVENTS_PATH, data=body, headers={**JSON, **headers})


# ------------------------------------------------------------------ the contract, once per auth method


def test_valid_secret_is_accepted(client: FlaskClient, auth: Auth, recorder: Any) -> None:
    response = post(client, auth(SECRET, BODY))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "queued": 1, "ignored": 0}
    assert recorder.events == [json.loads(BODY)]


def test_wrong_secret_is_refused(client: FlaskClient, auth: Auth, recorder: Any) -> None:
    response = post(client, auth("not-the-secret", BODY))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json() == {"error": "unauthorized"}
    assert recorder.events == []


def test_missing_credentials_are_refused(client: FlaskClient, recorder: Any) -> None:
    response = post(client, {})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert recorder.events == []


@pytest.mark.parametrize("which", [OLD_SECRET, NEW_SECRET])
def test_rotation_every_listed_secret_is_valid(make_app: Callable[..., Flask], sqlite_db: str,
                                               base_env: pytest.MonkeyPatch, auth: Auth, which: str,
                                               recorder: Any) -> None:
    base_env.setenv("SMTP2GO_WEBHOOK_SECRET", f" {OLD_SECRET} , {NEW_SECRET} ")
    from worker.infrastructure.config import reset_settings

    reset_settings()
    client = make_app(publisher=recorder).test_client()
    assert post(client, auth(which, BODY)).status_code == 200
    assert post(client, auth(SECRET, BODY)).status_code == 401
    assert len(recorder.events) == 1


def test_signature_binds_the_body(client: FlaskClient, creds: SimpleNamespace,
                                  recorder: Any) -> None:
    other = json.dumps({"event": "bounce", "email_id": "x"}).encode()
    assert post(client, creds.signature(SECRET, other)).status_code == 401
    assert post(client, creds.signature(SECRET, BODY + b" ")).status_code == 401
    assert recorder.events == []


# ------------------------------------------------------------------ method specifics


def test_basic_accepts_any_username_and_colons_in_the_secret(make_app: Callable[..., Flask],
                                                             creds: SimpleNamespace) -> None:
    client = make_app(secrets=["pa:ss:word"], publisher=creds.Recorder()).test_client()
    assert post(client, creds.basic("", "pa:ss:word")).status_code == 200
    assert post(client, creds.basic("anyone", "pa:ss:word")).status_code == 200
    assert post(client, creds.basic("pa", "ss:word")).status_code == 401


@pytest.mark.parametrize("header", [
    "bearer " + SECRET, "BEARER " + SECRET, "Bearer   " + SECRET + "  ",
])
def test_bearer_scheme_is_case_insensitive(client: FlaskClient, header: str) -> None:
    assert post(client, {"Authorization": header}).status_code == 200


@pytest.mark.parametrize("header", [
    "Bearer", "Bearer ", "Basic", "Basic !!!notbase64", "Basic " + "c2VjcmV0",  # "secret" without a colon
    "Token " + SECRET, SECRET, "Digest username=x", "Bearer " + SECRET + "x", "Bearer " + SECRET[:-1],
])
def test_garbage_authorization_is_refused(client: FlaskClient, header: str) -> None:
    assert post(client, {"Authorization": header}).status_code == 401


@pytest.mark.parametrize("skew", [-301, 301, -3600, 10**6])
def test_stale_and_future_signatures_are_refused(client: FlaskClient, creds: SimpleNamespace,
                                                 skew: int) -> None:
    headers = creds.signature(SECRET, BODY, t=int(time.time()) + skew)
    assert post(client, headers).status_code == 401


@pytest.mark.parametrize("skew", [-290, 0, 290])
def test_signatures_within_five_minutes_are_accepted(client: FlaskClient, creds: SimpleNamespace,
                                                     skew: int) -> None:
    assert post(client, creds.signature(SECRET, BODY, t=int(time.time()) + skew)).status_code == 200


@pytest.mark.parametrize("header", [
    "t=abc,v1=00", "v1=" + "0" * 64, "t=1700000000", "t=,v1=", "garbage", "t=-5,v1=ab", "t=1e9,v1=ab",
    "t=" + "9" * 40 + ",v1=ab",
])
def test_malformed_signature_headers_are_refused(client: FlaskClient, header: str) -> None:
    assert post(client, {"X-Mailworker-Signature": header}).status_code == 401


def test_signature_may_list_several_v1_values(client: FlaskClient, creds: SimpleNamespace) -> None:
    good = creds.signature(SECRET, BODY)["X-Mailworker-Signature"]
    t_part, v1_part = good.split(",")
    header = f"{t_part}, v1={'0' * 64}, {v1_part.upper().replace('V1=', 'v1=')}"
    assert post(client, {"X-Mailworker-Signature": header}).status_code == 200


def test_one_valid_method_is_enough(client: FlaskClient, creds: SimpleNamespace) -> None:
    headers = {**creds.bearer("wrong"), **creds.signature(SECRET, BODY)}
    assert post(client, headers).status_code == 200


def test_every_secret_is_compared(monkeypatch: pytest.MonkeyPatch, creds: SimpleNamespace) -> None:
    """No early exit: the first, the last or no secret matching all cost the same comparisons."""
    import hmac

    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    secrets = SecretStore(["one-secret", "two-secret", "three-secret"]).current()
    for presented in ("one-secret", "three-secret", "nope"):
        calls.clear()
        header = creds.bearer(presented)["Authorization"]
        authenticate(header, None, b"", secrets)
        assert len(calls) == 3
    calls.clear()
    authenticate(None, creds.signature("one-secret", b"{}")["X-Mailworker-Signature"], b"{}", secrets)
    assert len(calls) == 3


# ------------------------------------------------------------------ the header's name: X-Mailworker-Signature


def test_the_signature_header_is_named_after_mailworker() -> None:
    assert SIGNATURE_HEADER == "X-Mailworker-Signature" and LEGACY_SIGNATURE_HEADER == "X-Smtp2go-Signature"


def test_the_deprecated_header_is_accepted_and_warned_about_once(client: FlaskClient, creds: SimpleNamespace,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(auth_module, "_legacy_warned", auth_module.threading.Event())
    value = creds.signature(SECRET, BODY)[SIGNATURE_HEADER]
    with caplog.at_level(logging.WARNING, logger="webhook_app.auth"):
        assert post(client, {LEGACY_SIGNATURE_HEADER: value}).status_code == 200
        assert post(client, {LEGACY_SIGNATURE_HEADER: value}).status_code == 200
        assert post(client, {LEGACY_SIGNATURE_HEADER: value.replace("v1=", "v1=0")}).status_code == 401
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "X-Smtp2go-Signature" in warnings[0].getMessage() and "X-Mailworker-Signature" in warnings[0].getMessage()


def test_the_new_header_logs_no_deprecation(client: FlaskClient, creds: SimpleNamespace,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(auth_module, "_legacy_warned", auth_module.threading.Event())
    with caplog.at_level(logging.WARNING, logger="webhook_app.auth"):
        assert post(client, creds.signature(SECRET, BODY)).status_code == 200
        assert post(client, creds.bearer(SECRET)).status_code == 200
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_signature_header_prefers_the_new_name(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(auth_module, "_legacy_warned", auth_module.threading.Event())
    with caplog.at_level(logging.WARNING, logger="webhook_app.auth"):
        assert signature_header({SIGNATURE_HEADER: "new", LEGACY_SIGNATURE_HEADER: "old"}) == "new"
        assert signature_header({}) is None
        assert not caplog.records
        assert signature_header({LEGACY_SIGNATURE_HEADER: "old"}) == "old"
    assert len(caplog.records) == 1


# ------------------------------------------------------------------ no secret / unauthenticated mode


def test_no_secret_configured_refuses_everything(make_app: Callable[..., Flask], creds: SimpleNamespace,
                                                 recorder: Any) -> None:
    client = make_app(secrets=[], publisher=recorder).test_client()
    for headers in ({}, creds.bearer(""), creds.bearer(SECRET), creds.basic("u", ""),
                    {"Authorization": "Bearer "}):
        response = post(client, headers)
        assert response.status_code == 401
    assert recorder.events == []


def test_allow_unauthenticated_accepts_without_credentials(make_app: Callable[..., Flask],
                                                           recorder: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="webhook_app"):
        client = make_app(secrets=[], allow_unauthenticated=True, publisher=recorder).test_client()
    assert "UNAUTHENTICATED WEBHOOKS ALLOWED" in caplog.text
    assert post(client, {}).status_code == 200
    assert recorder.events == [json.loads(BODY)]


def test_allow_unauthenticated_from_the_environment(make_app: Callable[..., Flask], sqlite_db: str,
                                                    base_env: pytest.MonkeyPatch,
                                                    recorder: Any) -> None:
    base_env.setenv("MAILWORKER_ALLOW_UNAUTHENTICATED_WEBHOOKS", "true")
    from worker.infrastructure.config import reset_settings

    reset_settings()
    assert post(make_app(publisher=recorder).test_client(), {}).status_code == 200


def test_allow_unauthenticated_does_not_override_a_configured_secret(make_app: Callable[..., Flask],
                                                                     creds: SimpleNamespace) -> None:
    """The switch is for running without a secret; once a secret exists it is enforced (fail safe)."""
    client = make_app(secrets=[SECRET], allow_unauthenticated=True, publisher=creds.Recorder()).test_client()
    assert post(client, {}).status_code == 401
    assert post(client, creds.bearer(SECRET)).status_code == 200


# ------------------------------------------------------------------ secrets from the database


def _set_module_secret(value: str) -> None:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.modules import SMTP2GO, update_module_settings

    with session_scope() as session:
        update_module_settings(session, SMTP2GO, {"webhook_secret": value})


def _poll(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_module_secret_from_the_database_is_valid_and_refreshed(
        db: str, base_env: pytest.MonkeyPatch, make_app: Callable[..., Flask], creds: SimpleNamespace,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings
    from worker.infrastructure.crypto import generate_key

    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    base_env.setenv("SMTP2GO_WEBHOOK_SECRET", SECRET)
    reset_settings()
    _set_module_secret("db-secret-one")
    app = make_app(publisher=creds.Recorder(), secret_refresh_interval=0.1)
    client = app.test_client()
    assert post(client, creds.bearer("db-secret-one")).status_code == 200
    assert post(client, creds.bearer(SECRET)).status_code == 200  # the environment's secret stays valid

    _set_module_secret("db-secret-two")
    _poll(lambda: post(client, creds.bearer("db-secret-two")).status_code == 200)
    assert post(client, creds.bearer("db-secret-one")).status_code == 401

    # The request path never touches the database: make any database access explode and keep serving.
    app.extensions["mailworker_webhooks"].secrets.stop()
    import worker.infrastructure.db

    def no_database(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the request path touched the database")

    monkeypatch.setattr(worker.infrastructure.db, "session_scope", no_database)
    monkeypatch.setattr(worker.infrastructure.db, "get_engine", no_database)
    assert post(client, creds.bearer("db-secret-two")).status_code == 200


def test_database_down_at_startup_is_tolerated(base_env: pytest.MonkeyPatch, make_app: Callable[..., Flask],
                                               creds: SimpleNamespace, closed_port: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from worker.infrastructure.config import reset_settings

    base_env.setenv("DATABASE_URL", f"mysql+pymysql://root@127.0.0.1:{closed_port}/nothing")
    base_env.setenv("SMTP2GO_WEBHOOK_SECRET", SECRET)
    reset_settings()
    started = time.monotonic()
    client = make_app(publisher=creds.Recorder()).test_client()
    assert time.monotonic() - started < 8
    assert post(client, creds.bearer(SECRET)).status_code == 200
    assert "could not load the SMTP2Go module webhook secret" in caplog.text


# ------------------------------------------------------------------ secrets never leak


def test_secrets_never_appear_in_logs_or_answers(client: FlaskClient, creds: SimpleNamespace,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        answers = [
            post(client, creds.bearer(SECRET)),
            post(client, creds.basic("user", SECRET)),
            post(client, creds.signature(SECRET, BODY)),
            post(client, creds.bearer(SECRET + "-wrong")),
            client.post(EVENTS_PATH, data=b"nope", headers={"Content-Type": "text/plain",
                                                            **creds.bearer(SECRET)}),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 415]
    basic_token = creds.basic("user", SECRET)["Authorization"].split()[1]
    for text in [caplog.text] + [a.get_data(as_text=True) for a in answers]:
        assert SECRET not in text
        assert basic_token not in text
        assert "Authorization" not in text
    assert caplog.text.count("smtp2go webhook status=") == 5


def test_accepted_webhooks_log_at_debug_and_rejects_at_warning(client: FlaskClient, creds: SimpleNamespace,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="webhook_app"):
        post(client, creds.bearer(SECRET))
        post(client, creds.bearer(SECRET + "-wrong"))
        post(client, creds.bearer(SECRET), body=b"{")
        client.post(EVENTS_PATH, data=b"nope", headers={"Content-Type": "text/plain", **creds.bearer(SECRET)})
    lines = [(r.levelno, r.getMessage().split()[2]) for r in caplog.records
             if r.getMessage().startswith("smtp2go webhook status=")]
    assert lines == [(logging.DEBUG, "status=200"), (logging.WARNING, "status=401"),
                     (logging.WARNING, "status=400"), (logging.WARNING, "status=415")]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="webhook_app"):
        assert post(client, creds.bearer(SECRET)).status_code == 200
    assert caplog.records == []  # the default level: nothing per accepted webhook


def test_the_deployed_logging_redacts_webhook_secrets(base_env: pytest.MonkeyPatch) -> None:
    """``webhook_app.wsgi`` calls ``configure_logging``: every root handler gets the redaction filter."""
    import io

    from webhook_app import configure_logging
    from worker.infrastructure.config import reset_settings

    base_env.setenv("SMTP2GO_WEBHOOK_SECRET", f"{OLD_SECRET},{NEW_SECRET}")
    reset_settings()
    out = io.StringIO()
    base_env.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(out)])
    configure_logging()
    logging.getLogger("webhook_app.test").warning("rejected Authorization: Bearer %s and %s", NEW_SECRET, OLD_SECRET)
    assert OLD_SECRET not in out.getvalue() and NEW_SECRET not in out.getvalue()
    assert "[REDACTED]" in out.getvalue()


class _UnreadableBody(io.BytesIO):
    """A 4 KiB request body that counts how often the receiver tries to read it."""

    read_attempts = 0

    def read(self, size: int | None = -1) -> bytes:
        type(self).read_attempts += 1
        return super().read(size)

    def readline(self, size: int | None = -1) -> bytes:
        type(self).read_attempts += 1
        return super().readline(size)


def test_bad_bearer_or_basic_is_refused_before_the_body_is_read(client: FlaskClient, recorder: Any) -> None:
    for header in ("Bearer wrong-secret", "Basic d3Jvbmc6c2VjcmV0"):
        response = client.post("/api/webhooks/smtp2go/events", input_stream=_UnreadableBody(b"{" * 4096),
                               headers={"Authorization": header, "Content-Type": "application/json",
                                        "Content-Length": "4096"})
        assert response.status_code == 401
    assert _UnreadableBody.read_attempts == 0
    assert recorder.events == []
