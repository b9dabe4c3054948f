"""The suppression list on real MariaDB (and SQLite): normalisation, validation, idempotency, races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from worker.errors import InvalidEmail
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import EventType, Suppression
from worker.tracking.suppressions import (
    add_suppression,
    count_suppressions,
    is_suppressed,
    list_suppressions,
    remove_suppression,
    suppress_for_event,
)


def _add(address: str, reason: str = "manual", **kw: Any) -> bool:
    with session_scope() as session:
        return add_suppression(session, address, reason, **kw)


@pytest.mark.parametrize("backend", ["db", "sqlite_db"])
def test_add_is_idempotent_and_lower_cased(backend: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(backend)
    assert _add("Bob <Bob@Example.NET>", detail="operator request", source_message_id="m-1") is True
    assert _add("bob@example.net", "hard_bounce") is False
    with session_scope() as session:
        assert is_suppressed(session, "BOB@example.net")
        assert is_suppressed(session, "Robert <bob@EXAMPLE.net>")
        assert not is_suppressed(session, "alice@example.com")
        rows = list_suppressions(session)
        assert count_suppressions(session) == 1
    assert len(rows) == 1
    row = rows[0]
    assert (row["address"], row["reason"], row["detail"], row["source_message_id"]) == (
        "bob@example.net", "manual", "operator request", "m-1")  # the first reason wins
    assert datetime.fromisoformat(row["created_at"]) <= datetime.now(UTC)


@pytest.mark.parametrize("bad", ["", "not-an-address", "a@b", "x@example.com\r\nBcc: y@example.com", None, 42])
def test_invalid_address_names_the_field(db: str, bad: object) -> None:
    with session_scope() as session, pytest.raises(InvalidEmail) as info:
        add_suppression(session, bad, "manual")  # type: ignore[arg-type]
    assert info.value.field == "address"
    with session_scope() as session:
        assert session.scalar(select(func.count(Suppression.id))) == 0


def test_reason_is_required_and_short(db: str) -> None:
    with session_scope() as session:
        with pytest.raises(InvalidEmail) as info:
            add_suppression(session, "a@example.com", " ")
        assert info.value.field == "reason"
        with pytest.raises(InvalidEmail):
            add_suppression(session, "a@example.com", "x" * 33)


def test_remove(db: str) -> None:
    _add("carol@example.com")
    with session_scope() as session:
        assert remove_suppression(session, "Carol@Example.com") is True
    with session_scope() as session:
        assert remove_suppression(session, "carol@example.com") is False
        assert remove_suppression(session, "") is False
        assert not is_suppressed(session, "carol@example.com")


def test_list_search_and_paging(db: str) -> None:
    for i in range(5):
        _add(f"user{i}@example.com")
    _add("under_score@example.org")
    with session_scope() as session:
        newest_first = [r["address"] for r in list_suppressions(session)]
        assert newest_first[0] == "under_score@example.org" and len(newest_first) == 6
        assert [r["address"] for r in list_suppressions(session, limit=2, offset=1)] == newest_first[1:3]
        assert {r["address"] for r in list_suppressions(session, search="EXAMPLE.COM")} == {
            f"user{i}@example.com" for i in range(5)}
        assert [r["address"] for r in list_suppressions(session, search="_")] == ["under_score@example.org"]
        assert list_suppressions(session, search="%") == []


def test_concurrent_adds_of_one_address_insert_once(db: str) -> None:
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait()
            results.append(_add("race@example.com", "hard_bounce"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(results) == [False] * 7 + [True]
    with session_scope() as session:
        assert session.scalar(select(func.count(Suppression.id))) == 1


def test_suppress_for_event_rules(db: str) -> None:
    t = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    with session_scope() as session:
        assert suppress_for_event(session, "a@example.com", EventType.BOUNCE, t, bounce_type="soft") is None
        assert suppress_for_event(session, "a@example.com", EventType.BOUNCE, t, bounce_type=None) is None
        assert suppress_for_event(session, "a@example.com", EventType.DELIVERED, t) is None
        assert suppress_for_event(session, "a@example.com", EventType.BOUNCE, t, bounce_type="hard") == "suppressed"
        assert suppress_for_event(session, "a@example.com", EventType.SPAM, t) is None  # already suppressed
        # A reject suppresses whatever SMTP2Go's text says; the text is kept as the detail.
        assert suppress_for_event(session, "b@example.com", EventType.REJECT, t + timedelta(seconds=1),
                                  detail="smtp2go reject x: Sender not verified") == "suppressed"
        assert suppress_for_event(session, "A@example.com", EventType.RESUBSCRIBE, t) == "unsuppressed"
        assert not is_suppressed(session, "a@example.com") and is_suppressed(session, "b@example.com")
        [row] = [r for r in list_suppressions(session) if r["address"] == "b@example.com"]
        assert (row["reason"], row["detail"]) == ("reject", "smtp2go reject x: Sender not verified")
