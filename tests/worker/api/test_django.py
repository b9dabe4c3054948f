"""The two Django recipes of README's "Django on the same database", as a Django application runs them.

Django keeps its own connection, so its ``transaction.atomic()`` cannot hand mailworker one: (2)
``transaction.on_commit(lambda: enqueue_email(...))`` sends nothing for a rolled-back transaction; (1) a
SQLAlchemy transaction of your own inside ``atomic()`` commits and publishes the email when its ``with`` ends,
so a later Django rollback still sends it (documented as the trade-off). Django here is configured on a SQLite
file of its own beside mailworker's database, which is enough for its transaction hooks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SEND_QUEUE
from worker import enqueue_email, get_email_status
from worker.infrastructure.db import get_engine


@pytest.fixture(scope="module")
def django_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                                  "NAME": str(Path(tmp_path_factory.mktemp("django")) / "app.db")}},
                           INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    yield
    from django.db import connections

    connections.close_all()


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[str]:
    yield request.getfixturevalue(request.param)


def _queued(redis_client: Any) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(SEND_QUEUE, 0, -1)]


class ViewFailed(RuntimeError):
    pass


def test_on_commit_sends_only_what_django_committed(django_app: None, database: str, redis_client: Any) -> None:
    from django.db import transaction

    ids: list[str] = []
    with pytest.raises(ViewFailed), transaction.atomic():
        transaction.on_commit(lambda: ids.append(enqueue_email("a@example.com", "rolled back", text_body="b")))
        raise ViewFailed
    assert ids == [] and _queued(redis_client) == []

    with transaction.atomic():
        transaction.on_commit(lambda: ids.append(enqueue_email("a@example.com", "committed", text_body="b")))
        assert ids == []  # not before Django's commit
    assert len(ids) == 1 and _queued(redis_client) == ids
    status = get_email_status(ids[0])
    assert status is not None and status["status"] == "queued" and status["subject"] == "committed"


def test_own_sqlalchemy_transaction_inside_atomic_sends_even_if_django_rolls_back(
        django_app: None, database: str, redis_client: Any) -> None:
    from django.db import transaction

    with pytest.raises(ViewFailed), transaction.atomic():
        with get_engine().begin() as conn:
            tid = enqueue_email("a@example.com", "sent anyway", text_body="b", connection=conn)
        assert _queued(redis_client) == [tid]  # published when the SQLAlchemy transaction committed
        raise ViewFailed
    status = get_email_status(tid)
    assert status is not None and status["status"] == "queued"
