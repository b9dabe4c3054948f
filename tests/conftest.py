"""Shared fixtures: real MariaDB, real Redis, a real Celery worker, a fake SMTP2Go API, a real SMTP server.

Isolation: each test session owns one MariaDB database (``mwtest_<pid>``) and one Redis DB number
(``MAILWORKER_TEST_REDIS_DB``, default 13); tables are emptied between tests and only our Redis DB is flushed.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message as MimeMessage
from pathlib import Path
from typing import Any

import pytest

REDIS_DB = int(os.environ.get("MAILWORKER_TEST_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
MARIADB_HOST = os.environ.get("MAILWORKER_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_ADMIN_URL = f"mysql+pymysql://root@{MARIADB_HOST}:3306/?charset=utf8mb4"
TEST_DB_NAME = f"mwtest_{os.getpid()}"
MARIADB_URL = f"mysql+pymysql://root@{MARIADB_HOST}:3306/{TEST_DB_NAME}?charset=utf8mb4"
API_KEY = "api-test-key-0123456789"
#: SMTP2Go's real wire formats (a copy of shared/fixtures/smtp2go, kept with the tests so a clone is complete).
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures" / "smtp2go"

# Celery reads its broker from the environment when celeryconfig is imported: set it before anything
# imports ``worker``. The app's own settings are re-read per test through worker.infrastructure.config.reset_settings().
os.environ["CELERY_BROKER_URL"] = REDIS_URL
# Queue names unique to this test session: concurrent test runs on one Redis never consume each other's tasks,
# and cleaning up deletes only our own keys (never FLUSHDB on a database someone else may use).
QUEUE_PREFIX = f"mwtest{os.getpid()}"
SEND_QUEUE = os.environ["MAILWORKER_SEND_QUEUE"] = f"{QUEUE_PREFIX}.send"
EVENTS_QUEUE = os.environ["MAILWORKER_EVENTS_QUEUE"] = f"{QUEUE_PREFIX}.events"
MAINTENANCE_QUEUE = os.environ["MAILWORKER_MAINTENANCE_QUEUE"] = f"{QUEUE_PREFIX}.maintenance"
os.environ.pop("REDIS_URL", None)
os.environ["MAILWORKER_DEV_ENV_FILE"] = "/nonexistent/mailworker-dev.env"  # a running `mailworker dev` must not leak in
for _name in ("SMTP2GO_API_KEY", "SMTP_HOST", "SMTP2GO_WEBHOOK_SECRET", "SETTINGS_ENCRYPTION_KEY",
              "MAIL_DEFAULT_SENDER"):
    os.environ.pop(_name, None)
# There is no implicit database (a process without DATABASE_URL refuses to start): tests that need none of the
# database fixtures still get an explicit one, a never-migrated SQLite file of this session's own (never var/).
os.environ["DATABASE_URL"] = f"sqlite:///{Path(tempfile.gettempdir()) / f'mwtest_{os.getpid()}_unused.db'}"

from sqlalchemy import create_engine, text  # noqa: E402

from worker import app as celery_app  # noqa: E402
from worker.infrastructure.config import reset_settings  # noqa: E402
from worker.infrastructure.db import dispose_engines, get_engine  # noqa: E402
from worker.infrastructure.models import Base  # noqa: E402

#: Fixtures that reach a service (MariaDB, Redis, a Celery worker) or a database file. A test using none of them is
#: in the unit layer (`make test-unit`, marker ``unit``), marked here so the layer cannot drift from the truth.
SERVICE_FIXTURES = frozenset({"base_env", "db", "sqlite_db", "mariadb_url", "redis_client", "celery_worker",
                              "database",
                              "workers", "private_redis", "app_client", "receiver", "gunicorn", "live_receiver"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if (not uses & SERVICE_FIXTURES and item.get_closest_marker("faults") is None
                and item.get_closest_marker("integration") is None):
            item.add_marker(pytest.mark.unit)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def procfile_web_command(env: dict[str, str]) -> list[str]:
    """The Procfile's ``web`` line as argv: ``${VAR:-default}`` and ``$VAR`` expanded from ``env``, and
    ``gunicorn`` taken from this virtualenv."""
    import re
    import shlex
    import sys

    project = Path(__file__).resolve().parent.parent
    line = next(text.split(":", 1)[1] for text in (project / "Procfile").read_text().splitlines()
                if text.startswith("web:"))

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1) or match.group(3), match.group(2)
        return env.get(name) or (default or "")

    argv = shlex.split(re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", expand, line))
    if argv[0] == "gunicorn":
        argv[0] = str(Path(sys.executable).with_name("gunicorn"))
    return argv


@contextmanager
def gunicorn_server(env: dict[str, str], log_path: Path, *, graceful: bool = True,
                    argv: list[str] | None = None) -> Iterator[str]:
    """The ``web`` process exactly as the Procfile starts it, on a free loopback port; ready when /healthz
    answers 200. ``argv``: another gunicorn command line instead (``WEB_BIND`` holds the address to bind).

    ``WEB_BIND`` is set to 127.0.0.1 and a free port; ``WEB_CONCURRENCY`` (2) and ``WEB_GRACEFUL_TIMEOUT`` (5)
    unless ``env`` sets them. Yields the base URL. ``graceful`` stops it with SIGTERM (logs are flushed, for
    tests that read them); otherwise its whole process group is killed.
    """
    import signal
    import subprocess

    import requests

    project = Path(__file__).resolve().parent.parent
    port = free_port()
    env = {"WEB_CONCURRENCY": "2", "WEB_GRACEFUL_TIMEOUT": "5", **env, "WEB_BIND": f"127.0.0.1:{port}",
           "PYTHONPATH": str(project)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv or procfile_web_command(env), cwd=project, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or a worker still booting
                    pass
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
            yield base
        finally:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)


# --------------------------------------------------------------------------------------------- database


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    admin = create_engine(MARIADB_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{TEST_DB_NAME}`"))
        conn.execute(text(f"CREATE DATABASE `{TEST_DB_NAME}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    from worker.infrastructure.migrate import upgrade

    upgrade(MARIADB_URL)
    yield MARIADB_URL
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{TEST_DB_NAME}`"))
    admin.dispose()


def _empty_tables(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def clean_redis_keys() -> None:
    """Delete this session's keys (queues, protection state) -- never anyone else's."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{QUEUE_PREFIX}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment: no provider configured, a default sender, short backoffs for tests."""
    for name in ("SMTP2GO_API_KEY", "SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP2GO_WEBHOOK_SECRET",
                 "SETTINGS_ENCRYPTION_KEY", "SMTP2GO_API_URL", "SMTP_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("MAIL_DEFAULT_SENDER", "Support <support@example.org>")
    monkeypatch.setenv("SEND_RETRY_BACKOFF", "0.2")
    monkeypatch.setenv("SEND_RETRY_BACKOFF_MAX", "1")
    monkeypatch.setenv("SEND_MAX_RETRIES", "3")
    monkeypatch.setenv("SMTP_MAX_RETRIES", "2")
    monkeypatch.setenv("SMTP_TIMEOUT", "5")
    monkeypatch.setenv("SMTP2GO_TIMEOUT", "2")
    monkeypatch.setenv("SMTP2GO_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("MODULE_CACHE_SECONDS", "0")  # tests flip modules and send at once
    monkeypatch.setenv("SMTP2GO_BREAKER_THRESHOLD", "50")  # breaker tests lower it themselves
    reset_settings()
    clean_redis_keys()
    yield monkeypatch
    clean_redis_keys()
    reset_settings()


@pytest.fixture
def db(base_env: pytest.MonkeyPatch, mariadb_url: str) -> Iterator[str]:
    """MariaDB (migrated once per session, emptied per test) as DATABASE_URL."""
    base_env.setenv("DATABASE_URL", mariadb_url)
    reset_settings()
    _empty_tables(mariadb_url)
    yield mariadb_url
    _empty_tables(mariadb_url)


@pytest.fixture
def sqlite_db(base_env: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[str]:
    """A migrated SQLite file (the embedded default) as DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'mailworker.db'}"
    from worker.infrastructure.migrate import upgrade

    upgrade(url)
    base_env.setenv("DATABASE_URL", url)
    reset_settings()
    yield url


# --------------------------------------------------------------------------------------------- broker


@pytest.fixture
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    clean_redis_keys()
    yield client
    clean_redis_keys()
    client.close()


@pytest.fixture
def celery_worker(redis_client: Any, db: str) -> Iterator[Any]:
    """A real Celery worker thread consuming the send, events and maintenance queues on real Redis."""
    from celery.contrib.testing.worker import start_worker

    celery_app.conf.broker_url = REDIS_URL
    queues = [q.name for q in celery_app.conf.task_queues]
    with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False,
                      loglevel="WARNING", queues=queues, shutdown_timeout=20) as worker:
        yield worker


# --------------------------------------------------------------------------------------------- providers


@pytest.fixture
def fake_api(base_env: pytest.MonkeyPatch) -> Iterator[Any]:
    """A local server speaking SMTP2Go's v3 API, configured as the SMTP2Go module via the environment."""
    from worker.devtools.fake_smtp2go import FakeSMTP2Go

    server = FakeSMTP2Go(api_key=API_KEY).start()
    base_env.setenv("SMTP2GO_API_KEY", API_KEY)
    base_env.setenv("SMTP2GO_API_URL", server.url)
    reset_settings()
    yield server
    server.stop()


@dataclass
class SmtpSink:
    """What the loopback SMTP server received, and how it should answer.

    Every knob models a real relay behaviour the transport must report honestly: ``refuse`` answers RCPT per
    address (``"550 ..."`` final, ``"451 4.7.1 greylisted"`` deferred); ``data_reply`` answers the final dot
    without keeping the message; ``data_delay`` keeps the message and answers only after that many seconds (a
    client with a shorter timeout never sees the 250: the relay has it, the sender does not know);
    ``drop_after_data`` keeps the message and closes the connection without answering. AUTH is offered on
    plain connections: ``users`` (login -> password), when set, are the only logins accepted (any other gets
    ``535``; unset accepts any login, like a sink that does not check); ``auth_reply`` answers every AUTH
    instead (e.g. ``"454 4.7.0 try later"``).
    """

    host: str
    port: int
    messages: list[tuple[str, list[str], MimeMessage]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # lower-case address -> "550 reason" / "451 reason"
    data_reply: str | None = None  # e.g. "554 5.7.1 rejected" or "451 4.3.0 try later"
    data_delay: float = 0.0
    drop_after_data: bool = False
    users: dict[str, str] | None = None
    auth_reply: str | None = None
    connections: int = 0  # SMTP sessions greeted (EHLO/HELO): one per connection without STARTTLS
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_for(self, tracking_id: str) -> int:
        with self.lock:
            return sum(1 for _, _, m in self.messages if m["X-Mailworker-Id"] == tracking_id)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        """aiosmtpd ``authenticator=``: see :class:`SmtpSink` (``users``, ``auth_reply``)."""
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if self.sink.auth_reply is None and isinstance(auth_data, LoginPassword):
            users = self.sink.users
            if users is None or users.get(auth_data.login.decode()) == auth_data.password.decode():
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message=self.sink.auth_reply)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        with self.sink.lock:
            self.sink.connections += 1
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:  # noqa: N802
        with self.sink.lock:
            self.sink.connections += 1
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: Any) -> str:
        reply = self.sink.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        import asyncio

        if self.sink.data_reply:
            return self.sink.data_reply
        with self.sink.lock:
            mime = message_from_bytes(envelope.content, policy=policy.default)
            self.sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), mime))
        if self.sink.drop_after_data:
            server.transport.close()
            await asyncio.sleep(60)  # connection_lost cancels this at once; nothing is ever answered
        if self.sink.data_delay:
            await asyncio.sleep(self.sink.data_delay)  # a client that gave up closes; eof_received cancels us
        return "250 Message accepted for delivery"


def smtp_controller(sink: SmtpSink, **kwargs: Any) -> Any:
    """An aiosmtpd Controller serving ``sink``, with AUTH offered on plain connections (for the 535 tests)."""
    from aiosmtpd.controller import Controller

    handler = _Handler(sink)
    return Controller(handler, hostname=sink.host, port=sink.port, authenticator=handler.authenticate,
                      auth_require_tls=False, **kwargs)


@pytest.fixture
def smtp_sink(base_env: pytest.MonkeyPatch) -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on loopback, configured as the fallback relay (no TLS)."""
    sink = SmtpSink(host="127.0.0.1", port=free_port())
    controller = smtp_controller(sink)
    controller.start()
    base_env.setenv("SMTP_HOST", "127.0.0.1")
    base_env.setenv("SMTP_PORT", str(sink.port))
    base_env.setenv("SMTP_SECURITY", "none")
    reset_settings()
    yield sink
    controller.stop()


# --------------------------------------------------------------------------------------- broken brokers


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    return free_port()


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A TCP listener that accepts connections and never answers (a wedged Redis)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()
