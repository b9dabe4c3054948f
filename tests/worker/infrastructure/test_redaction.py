"""Secrets never reach the logs: the filter, and a real worker process at DEBUG level."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, REDIS_URL, SEND_QUEUE, wait_until
from worker.infrastructure.config import reset_settings
from worker.infrastructure.redaction import REDACTED, RedactingFilter, redact


def test_patterns_are_redacted() -> None:
    text = ("Authorization: Bearer abcdef123456 X-Smtp2go-Api-Key: api-0123456789ABCDEF0123 "
            "redis://:hunter2pass@redis:6379/0 {'api_key': 'k-secret-1'} password=p4ssw0rd")
    out = redact(text, set())
    for secret in ("abcdef123456", "api-0123456789ABCDEF0123", "hunter2pass", "k-secret-1", "p4ssw0rd"):
        assert secret not in out
    assert out.count(REDACTED) >= 5


def test_known_setting_values_are_redacted(base_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    base_env.setenv("SMTP_PASSWORD", "relay-pw-xyz")
    base_env.setenv("SMTP2GO_WEBHOOK_SECRET", "old-hook-secret,new-hook-secret")
    reset_settings()
    logger = logging.getLogger("mailworker.test.redaction")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="mailworker.test.redaction"):
        logger.info("login with %s and %s", "relay-pw-xyz", "new-hook-secret")
        try:
            raise RuntimeError("failed using old-hook-secret")
        except RuntimeError:
            logger.exception("boom")
    text = caplog.text
    assert "relay-pw-xyz" not in text and "new-hook-secret" not in text and "old-hook-secret" not in text
    assert REDACTED in text


@pytest.mark.slow
def test_worker_process_logs_no_secrets(fake_api: Any, smtp_sink: Any, db: str, redis_client: Any,
                                        tmp_path: Path) -> None:
    from worker import enqueue_email, get_email_status
    from worker.devtools.fake_smtp2go import Scripted

    env = dict(os.environ)
    env.update(DATABASE_URL=db, CELERY_BROKER_URL=REDIS_URL, SMTP2GO_API_KEY=API_KEY, SMTP2GO_API_URL=fake_api.url,
               SMTP_PASSWORD="relay-secret-pw", SMTP_USERNAME="relay-user")
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "threads", "-c", "2",
             "--loglevel", "DEBUG", "-Q", SEND_QUEUE, "-n", f"redact{os.getpid()}@%h"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            fake_api.script(Scripted.server_error(500))
            tid = enqueue_email("a@example.com", "log me", text_body="body")
            wait_until(lambda: (get_email_status(tid) or {}).get("status") in {"sent", "failed"}, timeout=40)
            time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    logs = log_path.read_text()
    assert "retry scheduled" in logs and tid in logs  # the decisions are logged, with the tracking id
    assert API_KEY not in logs
    assert "relay-secret-pw" not in logs


# ------------------------------------------------------------------ ordinary words survive (the unit layer)


def _log_through_filter(msg: str, *args: object, secrets: set[str] | None = None) -> str:
    """Log one record through a real handler carrying the real filter; return what the handler wrote."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    logger = logging.getLogger("mailworker.test.redaction.unit")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        logger.info(msg, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


# The receiver's own access line (webhook_app/views.py), the one that explains a 415.
WEBHOOK_LINE = "smtp2go webhook status=%d received=%d queued=%d ignored=%d auth=%s type=%s bytes=%s"


@pytest.mark.parametrize("method", ["bearer", "basic", "signature", "none"])
def test_the_webhook_line_keeps_its_content_type(method: str) -> None:
    out = _log_through_filter(WEBHOOK_LINE, 415, 0, 0, 0, method, "text/xml", 120)
    assert f"auth={method} type=text/xml bytes=120" in out and REDACTED not in out


@pytest.mark.parametrize("line", [
    "auth=bearer type=application/x-www-form-urlencoded",
    "auth=bearer content_type=application/json size=10",
    "we accept bearer tokens and basic authentication.",
    "Authorization: Bearer type=application/json",  # a key=value after the scheme is not a credential
    "the password is required; the secret rotates weekly",
    "no webhook secret configured (SMTP2GO_WEBHOOK_SECRET or the module's webhook_secret): refused",
])
def test_ordinary_words_are_not_redacted(line: str) -> None:
    assert _log_through_filter("%s", line).split(": ", 1)[1].strip() == line


@pytest.mark.parametrize(("line", "secret"), [
    ("POST /events Authorization: Bearer s3cr3t-token-value", "s3cr3t-token-value"),
    ("headers={'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA=="),
    ("sending with bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9"),
    ("retry with bearer Zm9vYmFyYmF6cXV4cXV1eA== next", "Zm9vYmFyYmF6cXV4cXV1eA"),
    ("request X-Smtp2go-Api-Key: api-0123456789ABCDEF0123", "api-0123456789ABCDEF0123"),
    ("settings {'api_key': 'k-secret-1', 'track_opens': True}", "k-secret-1"),
    ("env SMTP_PASSWORD=hunter2 and client_secret=abc123", "hunter2"),
    ("env SMTP_PASSWORD=hunter2 and client_secret=abc123", "abc123"),
    ("connecting to mysql+pymysql://mw:db-pass-9@db/mail", "db-pass-9"),
    ("key api-ABCDEFGHIJKLMNOPQRSTUV in a message", "ABCDEFGHIJKLMNOPQRSTUV"),
])
def test_real_secrets_are_redacted(line: str, secret: str) -> None:
    out = _log_through_filter("%s", line)
    assert secret not in out and REDACTED in out


def test_a_configured_secret_is_redacted_whatever_surrounds_it() -> None:
    out = _log_through_filter(WEBHOOK_LINE + " note=%s", 401, 0, 0, 0, "none", "text/plain", 5, "hook-Secret-77",
                              secrets={"hook-Secret-77"})
    assert "hook-Secret-77" not in out and "type=text/plain" in out
