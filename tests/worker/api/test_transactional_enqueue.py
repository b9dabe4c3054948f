"""enqueue_email(connection=...): the rows are written in the caller's transaction and the task is published only
after it commits; a rollback publishes nothing. MariaDB and SQLite, Session and Connection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from tests.conftest import SEND_QUEUE, wait_until
from worker import InvalidEmail, enqueue_email, get_email_status
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message
from worker.operations.sweeper import sweep

meta = MetaData()
tickets = Table("app_ticket_replies", meta, Column("id", Integer, primary_key=True),
                Column("body", String(100)), Column("tracking_id", String(36)))


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


@pytest.fixture
def app_engine(database: str) -> Iterator[Any]:
    """The application's own engine on the same database, with a table of its own."""
    engine = create_engine(database)
    meta.create_all(engine)
    yield engine
    meta.drop_all(engine)
    engine.dispose()


def _queued(redis_client: Any) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(SEND_QUEUE, 0, -1)]


def _messages() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def test_session_commit_publishes_once_rollback_never(app_engine: Any, redis_client: Any) -> None:
    with Session(app_engine) as session:
        session.execute(tickets.insert().values(body="rolled back"))
        lost = enqueue_email("a@example.com", "s", text_body="b", connection=session)
        assert _queued(redis_client) == []  # nothing before the commit
        session.rollback()
        assert _queued(redis_client) == []
        assert get_email_status(lost) is None
        # the same session, a new transaction that commits: only its own email is published
        session.execute(tickets.insert().values(body="kept"))
        kept = enqueue_email("a@example.com", "s", text_body="b", connection=session)
        again = enqueue_email("b@example.com", "s2", text_body="b", connection=session)
        assert _queued(redis_client) == []
        session.commit()
    assert sorted(_queued(redis_client)) == sorted([kept, again])
    assert _messages() == 2
    status = get_email_status(kept)
    assert status is not None and status["status"] == "queued"
    with app_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tickets)) == 1


def test_connection_commit_publishes_once_rollback_never(app_engine: Any, redis_client: Any) -> None:
    with app_engine.connect() as conn:
        conn.execute(tickets.insert().values(body="rolled back"))
        lost = enqueue_email("a@example.com", "s", text_body="b", connection=conn)
        conn.rollback()
        assert _queued(redis_client) == [] and get_email_status(lost) is None
        with conn.begin():
            conn.execute(tickets.insert().values(body="kept"))
            kept = enqueue_email("a@example.com", "s", text_body="b", connection=conn)
            assert _queued(redis_client) == []
    assert _queued(redis_client) == [kept]
    assert _messages() == 1


def test_scoped_session_and_idempotency_inside_the_transaction(app_engine: Any, redis_client: Any) -> None:
    """Flask-SQLAlchemy's ``db.session`` is a scoped_session; a repeated key in the same transaction is one email."""
    db_session = scoped_session(sessionmaker(bind=app_engine))
    try:
        first = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="reply-1", connection=db_session)
        second = enqueue_email("a@example.com", "s", text_body="b", idempotency_key="reply-1",
                               connection=db_session)
        assert first == second
        db_session.commit()
    finally:
        db_session.remove()
    assert _queued(redis_client) == [first]


def test_a_rolled_back_email_is_never_swept_and_a_lost_publish_is(app_engine: Any, redis_client: Any) -> None:
    with Session(app_engine) as session:
        enqueue_email("a@example.com", "s", text_body="b", connection=session)
        session.rollback()
    assert sweep(grace=0).republished == 0
    with Session(app_engine) as session:
        tid = enqueue_email("a@example.com", "s", text_body="b", connection=session)
        session.commit()
    redis_client.delete(SEND_QUEUE)  # the publish after the commit got lost
    assert sweep(grace=0).republished == 1 and _queued(redis_client) == [tid]


def test_another_database_is_refused(database: str, tmp_path: Any) -> None:
    other = create_engine(f"sqlite:///{tmp_path}/other.db")
    with other.connect() as conn, pytest.raises(InvalidEmail, match="connection"):
        enqueue_email("a@example.com", "s", text_body="b", connection=conn)
    with pytest.raises(InvalidEmail, match="connection"):
        enqueue_email("a@example.com", "s", text_body="b", connection="not a connection")  # type: ignore[arg-type]


def test_committed_sends_once_rolled_back_never_with_a_real_worker(
        fake_api: Any, celery_worker: Any, db: str) -> None:
    engine = create_engine(db)
    try:
        with Session(engine) as session:
            dropped = enqueue_email("a@example.com", "dropped", text_body="b", connection=session)
            session.rollback()
        with Session(engine) as session:
            tid = enqueue_email("a@example.com", "kept", text_body="b", connection=session)
            session.commit()
        with engine.connect() as conn, conn.begin():
            via_conn = enqueue_email("a@example.com", "kept too", text_body="b", connection=conn)
        for sent in (tid, via_conn):
            def is_sent(sent: str = sent) -> bool:
                return (get_email_status(sent) or {}).get("status") == "sent"

            wait_until(is_sent, message=f"{sent} sent")
            assert fake_api.count_for(sent) == 1
        assert fake_api.count_for(dropped) == 0 and get_email_status(dropped) is None
    finally:
        engine.dispose()
