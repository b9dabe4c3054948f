"""End to end: enqueue -> real worker -> fake SMTP2Go -> its webhooks -> the real receiver over HTTP ->
real event worker -> get_email_status. Both SMTP2Go output formats, both ways SMTP2Go authenticates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import API_KEY, free_port, wait_until
from worker import enqueue_email, get_email_stats, get_email_status
from worker.devtools.fake_smtp2go import FakeSMTP2Go
from worker.infrastructure.config import reset_settings

SECRET = "whsec-end-to-end-0123456789"


@pytest.fixture
def receiver(base_env: pytest.MonkeyPatch) -> Iterator[str]:
    """The real Flask receiver on a real loopback port (secrets from the environment, like production)."""
    base_env.setenv("SMTP2GO_WEBHOOK_SECRET", f"old-secret-abc,{SECRET}")
    reset_settings()
    from webhook_app import create_app

    port = free_port()
    server = make_server("127.0.0.1", port, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/api/webhooks/smtp2go/events"
    server.shutdown()


def _api(base_env: pytest.MonkeyPatch, url: str, **kwargs: Any) -> FakeSMTP2Go:
    api = FakeSMTP2Go(api_key=API_KEY, webhook_url=url, **kwargs).start()
    base_env.setenv("SMTP2GO_API_KEY", API_KEY)
    base_env.setenv("SMTP2GO_API_URL", api.url)
    reset_settings()
    return api


def _status(tid: str, want: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        s = get_email_status(tid)
        return s if s and s["status"] == want else None

    return wait_until(ready, timeout=30, message=f"{tid} -> {want}")


def test_json_bearer_delivered_open_click(base_env: pytest.MonkeyPatch, receiver: str, celery_worker: Any) -> None:
    api = _api(base_env, receiver, webhook_auth=("bearer", SECRET), webhook_format="json",
               webhook_events=("processed", "delivered", "open", "click"))
    try:
        tid = enqueue_email(["alice@example.com", "bob@example.net"], "Your ticket #1042", text_body="hi")
        status = _status(tid, "delivered")
        assert api.wait_for_webhooks(10)

        def all_applied() -> dict[str, Any] | None:  # event workers apply in parallel, in any order
            s = get_email_status(tid)
            done = s and len(s["events"]) == 7 and all(
                r["click_count"] == 1 and r["open_count"] == 1 and r["delivered_at"] for r in s["recipients"])
            return s if done else None

        status = wait_until(all_applied, timeout=20)
        assert status["smtp2go_message_id"] == api.sends[0]["email_id"]
        assert {r["status"] for r in status["recipients"]} == {"clicked"}
        assert all(r["open_count"] == 1 and r["delivered_at"] for r in status["recipients"])
        assert status["opened_at"] and status["clicked_at"] and status["delivered_at"]
        assert sorted(e["type"] for e in status["events"]) == sorted(
            ["processed"] + ["delivered", "open", "click"] * 2)
        assert all(w["status"] == 200 for w in api.webhooks)
        stats = get_email_stats()
        assert stats["delivery_rate"] == 1.0 and stats["open_rate"] == 1.0
    finally:
        api.stop()


def test_form_basic_hard_bounce_suppresses(base_env: pytest.MonkeyPatch, receiver: str,
                                           celery_worker: Any) -> None:
    api = _api(base_env, receiver, webhook_auth=("basic", f"smtp2go:{SECRET}"), webhook_format="form",
               webhook_events=("processed", "bounce"))
    try:
        tid = enqueue_email("gone@example.com", "bounce me", text_body="x")
        status = _status(tid, "bounced")
        rcpt = status["recipients"][0]
        assert rcpt["status"] == "bounced" and rcpt["bounce_type"] == "hard" and rcpt["bounced_at"]
        from worker.infrastructure.db import session_scope
        from worker.tracking.suppressions import is_suppressed

        with session_scope() as session:
            assert is_suppressed(session, "gone@example.com")
        again = enqueue_email("gone@example.com", "second try", text_body="x")
        assert _status(again, "suppressed")["recipients"][0]["status"] == "suppressed"
        assert api.count_for(again) == 0
    finally:
        api.stop()


def test_wrong_credentials_change_nothing(base_env: pytest.MonkeyPatch, receiver: str, celery_worker: Any) -> None:
    api = _api(base_env, receiver, webhook_auth=("bearer", "not-the-secret"), webhook_events=("delivered",),
               webhook_retries=0)
    try:
        tid = enqueue_email("carol@example.com", "spoofed", text_body="x")
        _status(tid, "sent")
        assert api.wait_for_webhooks(10)
        assert [w["status"] for w in api.webhooks] == [401]
        assert get_email_status(tid)["status"] == "sent"  # type: ignore[index]
    finally:
        api.stop()
