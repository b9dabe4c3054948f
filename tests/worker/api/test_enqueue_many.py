"""enqueue_many: every item validated before anything is stored (the error names emails[<index>].<field>), rows
written with one multi-row INSERT per table per BULK_BATCH_SIZE chunk, ids in order, one send_batch task per chunk on
the bulk queue (checked in Redis), per-item idempotency across a re-run, and the caller's transaction (commit
publishes, rollback never). enqueue_email's lane= and list_id=, shown by get_email_status. MariaDB and SQLite."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.orm import Session

from tests.conftest import SEND_QUEUE
from worker import InvalidEmail, app, enqueue_email, enqueue_many, get_email_status
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import Message, Recipient


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def _batches(redis_client: Any) -> list[tuple[str, str, list[str]]]:
    """(task name, task id, tracking ids) of every task waiting on the bulk queue, oldest first."""
    out = []
    for raw in reversed(redis_client.lrange(app.conf.bulk_queue, 0, -1)):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], message["headers"]["id"], args[0]))
    return out


def _count(model: Any) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _emails(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"to": f"user{i}@example.com", "subject": f"Hello {i}", "text_body": f"Dear user {i}", **extra}
            for i in range(n)]


def test_a_bad_item_stores_and_publishes_nothing(database: str, redis_client: Any) -> None:
    emails = _emails(4)
    emails[2]["to"] = "not an address"
    with pytest.raises(InvalidEmail) as err:
        enqueue_many(emails)
    assert str(err.value).startswith("emails[2].to: ")
    emails[2]["to"] = "ok@example.com"
    emails[3]["headers"] = {"X-Bad": "a\nb"}
    with pytest.raises(InvalidEmail, match=r"^emails\[3\]\.headers\[X-Bad\]: .*line break"):
        enqueue_many(emails)
    with pytest.raises(InvalidEmail, match=r"^emails\[1\]\.lane: "):
        enqueue_many([emails[0], {**emails[1], "lane": "transactional"}])
    with pytest.raises(InvalidEmail, match=r"^emails\[0\]\.list_id: "):
        enqueue_many([{**emails[0], "list_id": "two words"}])
    with pytest.raises(InvalidEmail, match=r"^lane: "):
        enqueue_many(emails[:1], lane="fast")
    assert _count(Message) == 0 and _count(Recipient) == 0
    assert redis_client.llen(app.conf.bulk_queue) == 0 and redis_client.llen(SEND_QUEUE) == 0


def test_multi_row_inserts_ids_in_order_and_one_send_batch_per_chunk(database: str, redis_client: Any,
                                                                       base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("BULK_BATCH_SIZE", "2")
    statements: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append((statement.split("(")[0].split()[-1].strip('`"'), executemany))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        ids = enqueue_many(_emails(5, list_id="news-2026"))
    finally:
        event.remove(engine, "before_cursor_execute", record)

    # 5 emails in chunks of 2: three INSERTs into each table, not five
    assert [t for t, _ in statements].count("messages") == 3
    assert [t for t, _ in statements].count("recipients") == 3
    assert len(statements) == 6
    assert len(set(ids)) == 5
    for i, tracking_id in enumerate(ids):
        status = get_email_status(tracking_id)
        assert status is not None
        assert status["recipients"][0]["address"] == f"user{i}@example.com"
        assert (status["subject"], status["lane"], status["list_id"]) == (f"Hello {i}", "bulk", "news-2026")

    batches = _batches(redis_client)
    assert [(name, chunk) for name, _, chunk in batches] == [
        ("mailworker.send_batch", ids[0:2]), ("mailworker.send_batch", ids[2:4]), ("mailworker.send_batch", ids[4:])]
    assert redis_client.llen(SEND_QUEUE) == 0
    # each chunk's batch_id (the task id) is on its rows: the console finds a batch's mates by it
    for _, batch_id, chunk in batches:
        assert {get_email_status(t)["batch_id"] for t in chunk} == {batch_id}  # type: ignore[index]


def test_rerun_after_a_crash_returns_the_same_ids_and_sends_nothing_twice(database: str, redis_client: Any) -> None:
    emails = _emails(5)
    for i, item in enumerate(emails):
        item["idempotency_key"] = f"campaign-7:{i}"
    first = enqueue_many(emails[:3])  # the run that "crashed" after storing three
    assert len(_batches(redis_client)) == 1
    again = enqueue_many(emails)
    assert again[:3] == first
    assert _count(Message) == 5
    batches = _batches(redis_client)
    assert [chunk for _, _, chunk in batches] == [first, again[3:]]  # only the two new ones published
    assert enqueue_many(emails) == again  # a third run: nothing new at all
    assert len(_batches(redis_client)) == 2 and _count(Message) == 5
    # the same key twice in one call is one email
    dup = enqueue_many([{**emails[0], "idempotency_key": "x"}, {**emails[1], "idempotency_key": "x"}])
    assert dup[0] == dup[1] and _count(Message) == 6


def test_the_callers_transaction_commit_publishes_rollback_never(database: str, redis_client: Any) -> None:
    engine = create_engine(database)
    try:
        with Session(engine) as session:
            lost = enqueue_many(_emails(3), connection=session)
            assert _batches(redis_client) == []
            session.rollback()
            assert _batches(redis_client) == []
            assert all(get_email_status(t) is None for t in lost)
            kept = enqueue_many(_emails(3), connection=session)
            assert _batches(redis_client) == []  # not before the commit
            session.commit()
        assert [chunk for _, _, chunk in _batches(redis_client)] == [kept]
        assert [get_email_status(t)["lane"] for t in kept] == ["bulk"] * 3  # type: ignore[index]
    finally:
        engine.dispose()


def test_transactional_lane_and_enqueue_email_lane_and_list_id(database: str, redis_client: Any) -> None:
    ids = enqueue_many(_emails(2), lane="transactional")
    assert sorted(json.loads(r)["headers"]["id"] for r in redis_client.lrange(SEND_QUEUE, 0, -1)) == sorted(ids)
    assert _batches(redis_client) == []
    assert get_email_status(ids[0])["batch_id"] is None  # type: ignore[index]

    one = enqueue_email("a@example.com", "s", text_body="b", list_id="Weekly.Digest")
    status = get_email_status(one)
    assert status is not None and (status["lane"], status["list_id"]) == ("transactional", "Weekly.Digest")
    bulk_one = enqueue_email("a@example.com", "s", text_body="b", lane="bulk")
    assert [chunk for _, _, chunk in _batches(redis_client)] == [[bulk_one]]
    for bad, field in (({"list_id": "a\nb"}, "list_id"), ({"list_id": "x" * 65}, "list_id"),
                       ({"list_id": 5}, "list_id"), ({"lane": "express"}, "lane")):
        with pytest.raises(InvalidEmail, match=f"^{field}: "):
            enqueue_email("a@example.com", "s", text_body="b", **bad)
    assert enqueue_many([]) == []
