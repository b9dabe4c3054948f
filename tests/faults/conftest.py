"""Fixtures for the fault-injection suite (see ``harness.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_URL
from tests.faults.harness import PrivateRedis, WorkerProcess, point_broker_at, purge_unacked, worker_env


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome: Any = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def workers(request: pytest.FixtureRequest, tmp_path: Path, redis_client: Any, db: str
            ) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(name, pool=..., concurrency=..., env=..., **env_overrides)``: a real worker process on the test's
    queues and database. All are SIGKILLed at teardown; when the test failed their log tails are printed."""
    started: list[WorkerProcess] = []

    def start(name: str, *, pool: str = "threads", concurrency: int = 4, env: dict[str, str] | None = None,
              wait: bool = True, **overrides: str | None) -> WorkerProcess:
        proc = WorkerProcess(name, tmp_path, env or worker_env(**overrides), pool=pool, concurrency=concurrency)
        started.append(proc)
        return proc.start(wait=wait)

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for proc in started:
                print(f"\n----- log tail of {proc.name} ({proc.log_path}) -----\n{proc.tail(80)}", flush=True)
        purge_unacked(redis_client)


@pytest.fixture
def private_redis(tmp_path: Path, base_env: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """A redis-server of our own as this test's broker (it may be killed or emptied); the shared one afterwards."""
    server = PrivateRedis(tmp_path).start()
    base_env.setenv("CELERY_BROKER_URL", server.url)
    point_broker_at(server.url)
    try:
        yield server
    finally:
        server.kill()
        base_env.setenv("CELERY_BROKER_URL", REDIS_URL)
        point_broker_at(REDIS_URL)
