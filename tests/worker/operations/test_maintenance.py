"""requeue and purge, through the CLI, against MariaDB."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select, update

from worker import enqueue_email, get_email_status
from worker.cli import main
from worker.devtools.fake_smtp2go import Scripted
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Attachment, Message, MessageStatus, TrackingEvent, utcnow
from worker.sending.delivery import deliver


def _run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_requeue_failed_message_sends_it(fake_api: Any, db: str, redis_client: Any) -> None:
    fake_api.script(Scripted.error_400_data())  # permanent; no SMTP relay configured -> failed
    tid = enqueue_email("a@example.com", "s", text_body="b")
    assert deliver(tid, owner="w").kind == "failed"
    dry = _run("requeue", "--failed", "--dry-run", "--json")
    assert dry["requeued"] == [tid] and dry["dry_run"] is True
    assert get_email_status(tid)["status"] == "failed"  # type: ignore[index]
    done = _run("requeue", tid, "--json")
    assert done["requeued"] == [tid]
    status = get_email_status(tid)
    assert status is not None and status["status"] == "queued" and status["recipients"][0]["status"] == "queued"
    assert deliver(tid, owner="w").kind == "sent"
    assert fake_api.count_for(tid) == 1


def test_requeue_refuses_sent_and_ambiguous(fake_api: Any, db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b")
    assert deliver(tid, owner="w").kind == "sent"
    out = _run("requeue", tid, "nope", "--json")
    assert out["requeued"] == [] and out["skipped"] == {tid: "status is sent", "nope": "unknown id"}
    result = CliRunner().invoke(main, ["requeue"])
    assert result.exit_code == 2 and "--failed" in result.output


def test_requeue_stuck_expired_lease(fake_api: Any, db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b")
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == tid).values(
            status=MessageStatus.SENDING, lease_owner="dead", lease_expires_at=utcnow() - timedelta(minutes=1)))
    out = _run("requeue", "--stuck", "--json")
    assert out["requeued"] == [tid]
    assert deliver(tid, owner="w").kind == "sent"


def test_purge_drops_content_keeps_status(fake_api: Any, db: str, redis_client: Any) -> None:
    from worker.tracking.events import process_event

    old = enqueue_email("a@example.com", "old", text_body="secret body", attachments=[("a.txt", b"x", "text/plain")])
    new = enqueue_email("b@example.com", "new", text_body="keep me")
    for tid in (old, new):
        assert deliver(tid, owner="w").kind == "sent"
    email_id = get_email_status(old)["smtp2go_message_id"]  # type: ignore[index]
    process_event({"event": "delivered", "id": "e-old", "email_id": email_id, "rcpt": "a@example.com",
                   "time": "2020-01-01T00:00:00Z"})
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == old).values(queued_at=utcnow() - timedelta(days=100)))
    dry = _run("purge", "--older-than", "90d", "--dry-run", "--json")
    assert dry == {"messages": 1, "attachments": 1, "events": 1, "dry_run": True}
    done = _run("purge", "--older-than", "90d", "--json")
    assert done["messages"] == 1 and done["attachments"] == 1 and done["events"] == 1
    with session_scope() as session:
        row = session.get(Message, old)
        assert row is not None and row.text_body is None and row.purged_at is not None
        assert row.status == MessageStatus.DELIVERED
        assert session.get(Message, new).text_body == "keep me"  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(Attachment)) == 0
        assert session.scalar(select(func.count()).select_from(TrackingEvent)) == 0
    bad = CliRunner().invoke(main, ["purge", "--older-than", "ninety"])
    assert bad.exit_code == 2 and "duration" in bad.output
