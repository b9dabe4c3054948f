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
