"""Circuit breaker and rate limit, with their shared state in the real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest

from worker import enqueue_email, get_email_status
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.config import get_settings, reset_settings
from worker.providers import breaker as protection
from worker.sending.delivery import deliver


@pytest.fixture
def breaker_env(base_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    base_env.setenv("SMTP2GO_BREAKER_THRESHOLD", "3")
    base_env.setenv("SMTP2GO_BREAKER_WINDOW", "30")
    base_env.setenv("SMTP2GO_BREAKER_COOLDOWN", "1")
    reset_settings()
    return base_env


def test_breaker_opens_after_threshold_then_single_trial(breaker_env: Any, redis_client: Any) -> None:
    settings = get_settings()
    assert protection.before_api_send(settings).verdict == "ok"
    assert [protection.record_failure(settings) for _ in range(3)] == [False, False, True]
    gate = protection.before_api_send(settings)
    assert gate.verdict == "open" and 0 < gate.wait <= 1
    time.sleep(1.1)
    trial = protection.before_api_send(settings)
    assert trial.verdict == "ok" and trial.trial
    assert protection.before_api_send(settings).verdict == "open"  # only one trial across all workers
    protection.record_failure(settings, trial)  # trial failed: open again
    assert protection.before_api_send(settings).verdict == "open"
    time.sleep(1.1)
    trial = protection.before_api_send(settings)
    protection.record_success(settings, trial)
    assert protection.state(settings)["breaker"] == "closed"
    assert protection.before_api_send(settings).verdict == "ok"


def test_open_breaker_sends_straight_to_smtp(breaker_env: Any, fake_api: Any, smtp_sink: Any, db: str) -> None:
    fake_api.script(*[Scripted.server_error(500) for _ in range(3)])
    for i in range(3):
        tid = enqueue_email(f"r{i}@example.com", "x", text_body="x")
        assert deliver(tid, owner="w").kind == "retry"
    assert protection.state()["breaker"] == "open"
    tid = enqueue_email("next@example.com", "while open", text_body="x")
    assert deliver(tid, owner="w").kind == "sent"
    status = get_email_status(tid)
    assert status is not None and status["transport"] == "smtp"
    assert [a["provider"] for a in status["attempts"]] == ["smtp"]
    assert "circuit breaker" in status["fallback_reason"]
    assert len(fake_api.requests) == 3  # the open breaker spared the API


def test_429_pauses_every_worker(fake_api: Any, db: str, redis_client: Any) -> None:
    fake_api.script(Scripted.rate_limited(reset_seconds=2))
    first = enqueue_email("a@example.com", "x", text_body="x")
    assert deliver(first, owner="w1").kind == "retry"
    second = enqueue_email("b@example.com", "y", text_body="x")
    outcome = deliver(second, owner="w2")  # another worker: paused too, without spending an attempt
    assert outcome.kind == "retry" and outcome.delay is not None and outcome.delay > 1
    status = get_email_status(second)
    assert status is not None and status["attempts"] == [] and "rate limit" in status["last_error"]
    assert len(fake_api.requests) == 1


def test_global_rate_limit(base_env: pytest.MonkeyPatch, redis_client: Any) -> None:
    base_env.setenv("SMTP2GO_RATE_LIMIT", "20")
    reset_settings()
    settings = get_settings()
    start = time.monotonic()
    verdicts = [protection.before_api_send(settings).verdict for _ in range(40)]
    elapsed = time.monotonic() - start
    assert verdicts.count("ok") + verdicts.count("paused") == 40
    assert elapsed >= 0.8 or verdicts.count("paused") > 0  # 40 sends at 20/s cannot all pass at once


def test_redis_down_fails_open(base_env: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    base_env.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_settings()
    assert protection.before_api_send().verdict == "ok"
    assert protection.record_failure() is False


def test_another_processs_pause_is_seen_at_once_and_a_success_clears_failures(base_env: pytest.MonkeyPatch,
                                                                                redis_client: Any) -> None:
    settings = get_settings()
    key = protection._prefix() + "pause_until"
    assert protection.before_api_send(settings).verdict == "ok"
    redis_client.set(key, repr(time.time() + 5))  # another process's 429 lands now
    assert protection.before_api_send(settings).verdict == "paused"
    redis_client.delete(key)
    assert protection.before_api_send(settings).verdict == "ok"
    protection.record_failure(settings)
    gate = protection.before_api_send(settings)
    assert gate.verdict == "ok" and gate.failures
    protection.record_success(settings, gate)
    assert protection.state(settings)["failures"] == 0
