"""Connection pool sizing: a thread-pool worker pools one connection per sending thread."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from worker import db as worker_db
from worker.celery_app import app as celery_app
from worker.config import reset_settings


@pytest.fixture
def pool_reset() -> Iterator[None]:
    yield
    worker_db._pool_size = worker_db._DEFAULT_POOL_SIZE
    worker_db.dispose_engines()


def test_threads_worker_pools_a_connection_per_thread(db: str, redis_client: Any, pool_reset: None) -> None:
    from celery.contrib.testing.worker import start_worker

    assert worker_db.get_engine().pool.size() == 10  # type: ignore[attr-defined]
    with start_worker(celery_app, pool="threads", concurrency=24, perform_ping_check=False, loglevel="WARNING",
                      queues=["mw-pool-size-test"], shutdown_timeout=10):
        engine = worker_db.get_engine()
        assert engine.pool.size() == 26  # type: ignore[attr-defined]
        # 26 threads can hold a connection each at the same moment, none waits for the pool.
        conns = [engine.connect() for _ in range(26)]
        assert engine.pool.checkedout() == 26  # type: ignore[attr-defined]
        for conn in conns:
            conn.close()


def test_prefork_children_keep_the_default(db: str, pool_reset: None) -> None:
    from types import SimpleNamespace

    from worker.celery_app import _size_db_pool

    _size_db_pool(sender=SimpleNamespace(pool_cls="prefork", concurrency=8))
    assert worker_db.get_engine().pool.size() == 10  # type: ignore[attr-defined]
    _size_db_pool(sender=SimpleNamespace(pool_cls="threads", concurrency=40))
    assert worker_db.get_engine().pool.size() == 42  # type: ignore[attr-defined]


def test_db_pool_size_setting_wins(db: str, base_env: pytest.MonkeyPatch, pool_reset: None) -> None:
    from types import SimpleNamespace

    from worker.celery_app import _size_db_pool

    base_env.setenv("DB_POOL_SIZE", "5")
    reset_settings()
    _size_db_pool(sender=SimpleNamespace(pool_cls="threads", concurrency=40))
    assert worker_db.get_engine().pool.size() == 5  # type: ignore[attr-defined]
