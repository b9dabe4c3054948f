"""Status callbacks against hostile or broken receivers: a total deadline per HTTP attempt, at most 64 KB of an
answer read, a time limit on the Python hook, one attempt in flight per delivery, public addresses only (when an
endpoint is added and on the address connected to), and passwords in endpoint URLs never shown.

Real loopback servers (raw sockets, to trickle and to count what was sent), a real database (MariaDB and SQLite
where the database decides the outcome), the real CLI. Only name resolution is replaced, in the DNS-rebinding
test, for one made-up host name.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from tests.threads import run_threads
from tests.worker.callbacks import hooks
from worker import enqueue_email
from worker.callbacks import dispatcher, endpoints, http
from worker.cli import main
from worker.errors import ConfigurationError
from worker.infrastructure.config import load_settings, reset_settings
from worker.infrastructure.crypto import generate_key
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import CallbackAttempt, CallbackDelivery, CallbackEndpoint, utcnow
from worker.sending.delivery import OutcomeKind, deliver

REFUSED = "which is not a public address; allow it with CALLBACK_ALLOWED_NETWORKS"


class RawServer:
    """A TCP server on loopback that hands each connection to ``handle`` on a thread of its own, after reading
    the request (head and body). Counts requests; ``stop`` ends trickling handlers."""

    def __init__(self, handle: Callable[[socket.socket, RawServer], None]) -> None:
        self.handle = handle
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/hooks/mail"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            with self.lock:
                self.requests.append(head)
            try:
                self.handle(conn, self)
            except OSError:  # the client went away: what these servers are about
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[list[RawServer]]:
    started: list[RawServer] = []
    yield started
    for server in started:
        server.close()


def serve(started: list[RawServer], handle: Callable[[socket.socket, RawServer], None]) -> RawServer:
    server = RawServer(handle)
    started.append(server)
    return server


@pytest.fixture
def hardening_env(fake_api: Any, base_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    base_env.setenv("CALLBACK_RETRY_SCHEDULE", "0.1,0.1")
    base_env.setenv("CALLBACK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")  # the receivers here are on loopback
    for name in ("MAILWORKER_STATUS_HOOK", "CALLBACK_TIMEOUT", "CALLBACK_HOOK_TIMEOUT"):
        base_env.delenv(name, raising=False)
    reset_settings()
    return base_env


def _set(env: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        env.setenv(name, value)
    reset_settings()


def _add(url: str) -> int:
    with session_scope() as session:
        return endpoints.add_endpoint(session, url, ["email.sent"]).id


def _one_delivery() -> int:
    """Send one email (the fake SMTP2Go API): its email.sent event fanned out into one delivery; its id."""
    tid = enqueue_email("a@example.com", "s", text_body="b")
    assert deliver(tid, owner="w:1").kind == OutcomeKind.SENT
    assert dispatcher.fan_out() == 1
    with session_scope() as session:
        ids = list(session.scalars(select(CallbackDelivery.id)))
    assert len(ids) == 1
    return ids[0]


def _attempts(delivery_id: int) -> list[CallbackAttempt]:
    with session_scope() as session:
        rows = list(session.scalars(select(CallbackAttempt).where(CallbackAttempt.delivery_id == delivery_id)
                                    .order_by(CallbackAttempt.id)))
        session.expunge_all()
    return rows


def _state(delivery_id: int) -> str:
    with session_scope() as session:
        row = session.get(CallbackDelivery, delivery_id)
        assert row is not None
        return row.state


# ------------------------------------------------------------------------------------- the total deadline


def _trickle_body(conn: socket.socket, server: RawServer) -> None:
    """200 with a 1,000,000-byte body sent one byte every 0.2 s (each read well within any socket timeout)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    end = time.monotonic() + 10  # then give up, so the code before the fix comes back (after 10 s) to fail
    while not server.stop.is_set() and time.monotonic() < end:
        conn.sendall(b"x")
        server.stop.wait(0.2)


def _trickle_headers(conn: socket.socket, server: RawServer) -> None:
    """The status line, then a header one byte every 0.2 s that never ends."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    end = time.monotonic() + 10
    while not server.stop.is_set() and time.monotonic() < end:
        conn.sendall(b"a")
        server.stop.wait(0.2)


@pytest.mark.parametrize("trickle", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_a_trickled_answer_is_cut_at_the_total_deadline(hardening_env: pytest.MonkeyPatch, db: str,
                                                        servers: list[RawServer],
                                                        trickle: Callable[[socket.socket, RawServer], None]) -> None:
    _set(hardening_env, CALLBACK_TIMEOUT="1")
    receiver = serve(servers, trickle)
    _add(receiver.url)
    delivery_id = _one_delivery()
    started = time.monotonic()
    assert dispatcher.attempt_delivery(delivery_id) == "pending"  # a retry is scheduled
    elapsed = time.monotonic() - started
    assert elapsed < 4, f"one attempt took {elapsed:.1f}s with CALLBACK_TIMEOUT=1"
    assert len(receiver.requests) == 1
    [attempt] = _attempts(delivery_id)
    assert attempt.status_code is None and attempt.next_attempt_at is not None
    assert (attempt.error or "").startswith("timed out after 1 s"), attempt.error


# ------------------------------------------------------------------------------------- a bounded answer

HUGE = 64 * 1024 * 1024
PREFIX = "upstream \x1b[31mexploded\x00 \u202eevil\r\n".encode()


def test_a_huge_answer_is_read_at_most_64_kb_and_kept_as_a_clean_excerpt(hardening_env: pytest.MonkeyPatch,
                                                                          db: str, servers: list[RawServer]) -> None:
    sent: list[int] = []
    finished = threading.Event()

    def huge(conn: socket.socket, server: RawServer) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        total = 0
        try:
            conn.sendall(f"HTTP/1.1 500 Internal Server Error\r\nContent-Length: {HUGE}\r\n\r\n".encode() + PREFIX)
            chunk = b"y" * 65536
            while total < HUGE and not server.stop.is_set():
                total += conn.send(chunk[: HUGE - total])  # counts what the kernel accepted from us
        except OSError:  # the client closed: the rest is never sent
            pass
        finally:
            sent.append(total)
            finished.set()

    receiver = serve(servers, huge)
    _add(receiver.url)
    delivery_id = _one_delivery()
    assert dispatcher.attempt_delivery(delivery_id) == "pending"
    assert finished.wait(20), "the receiver never saw the client close"
    # 64 KB read, plus what the two kernels buffer (a few hundred KB on loopback): nowhere near the 64 MB offered
    assert sent[0] < 8 * 1024 * 1024, f"{sent[0]} bytes of the answer were taken"
    [attempt] = _attempts(delivery_id)
    assert attempt.status_code == 500
    error = attempt.error or ""
    assert error.startswith("HTTP 500: upstream [31mexploded evil yyy"), error
    assert not any(c in error for c in "\x1b\x00\u202e\r\n")
    assert len(error) <= len("HTTP 500: ") + http.EXCERPT_CHARS


# ------------------------------------------------------------------------------------- the hook's time limit


def test_a_hook_that_overruns_is_cut_at_its_time_limit(hardening_env: pytest.MonkeyPatch, db: str) -> None:
    _set(hardening_env, MAILWORKER_STATUS_HOOK="tests.worker.callbacks.hooks:stall", CALLBACK_HOOK_TIMEOUT="0.5")
    hooks.release.clear()
    try:
        delivery_id = _one_delivery()
        started = time.monotonic()
        assert dispatcher.attempt_delivery(delivery_id) == "pending"
        elapsed = time.monotonic() - started
        assert hooks.stalled.wait(5), "the hook was never called"
    finally:
        hooks.release.set()
    assert elapsed < 5, f"the attempt waited {elapsed:.1f}s for a hook limited to 0.5 s"
    [attempt] = _attempts(delivery_id)
    assert "timed out after 0.5 s" in (attempt.error or ""), attempt.error
    assert attempt.next_attempt_at is not None  # retried like any hook failure


def test_delivery_tasks_are_published_with_time_limits_above_the_attempt(hardening_env: pytest.MonkeyPatch,
                                                                          db: str, redis_client: Any) -> None:
    from celeryconfig import callbacks_queue
    from worker.tasks import deliver_callback, status_hook

    assert deliver_callback.soft_time_limit and deliver_callback.time_limit
    assert status_hook.soft_time_limit and status_hook.time_limit
    _set(hardening_env, CALLBACK_TIMEOUT="40", CALLBACK_HOOK_TIMEOUT="70")
    receiver_url = "http://127.0.0.1:9/hooks"  # never reached: the task is only published
    _add(receiver_url)
    _one_delivery()
    assert dispatcher.dispatch()["due"] == 1
    [raw] = redis_client.lrange(callbacks_queue, 0, -1)
    headers = json.loads(raw)["headers"]
    assert headers["task"] == "mailworker.deliver_callback"
    hard, soft = headers["timelimit"]  # Celery's order: (time_limit, soft_time_limit)
    assert 70 < soft < hard


# ------------------------------------------------------------------------------------- one attempt in flight


@pytest.fixture(params=["db", "sqlite_db"])
def database(request: pytest.FixtureRequest, redis_client: Any) -> str:
    return str(request.getfixturevalue(request.param))


def test_two_copies_of_one_delivery_post_once(hardening_env: pytest.MonkeyPatch, database: str,
                                              servers: list[RawServer]) -> None:
    """A second copy of the task (the dispatcher's lock ran out, the broker redelivered) that arrives while the
    first is in flight does nothing: one POST, one attempt."""

    def slow(conn: socket.socket, server: RawServer) -> None:
        server.stop.wait(1.0)  # long enough for the second copy to arrive while this one is in flight
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    receiver = serve(servers, slow)
    _add(receiver.url)
    delivery_id = _one_delivery()
    states: list[str] = []
    run_threads(2, lambda _: states.append(dispatcher.attempt_delivery(delivery_id)))
    assert len(receiver.requests) == 1
    assert len(_attempts(delivery_id)) == 1
    assert _state(delivery_id) == "delivered" and sorted(states) == ["delivered", "pending"]
    # a late copy: nothing
    assert dispatcher.attempt_delivery(delivery_id) == "delivered" and len(receiver.requests) == 1


def test_a_published_delivery_stays_locked_beyond_its_worst_case(hardening_env: pytest.MonkeyPatch, db: str) -> None:
    _set(hardening_env, CALLBACK_TIMEOUT="200")
    _add("http://127.0.0.1:9/hooks")
    delivery_id = _one_delivery()
    before = utcnow()
    assert dispatcher.due_deliveries() == [(delivery_id, "http")]
    with session_scope() as session:
        row = session.get(CallbackDelivery, delivery_id)
        assert row is not None and row.locked_until is not None
        assert row.locked_until - before > timedelta(seconds=2 * 200 + dispatcher.QUEUE_WAIT)


# ------------------------------------------------------------------------------------- public addresses only


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://[::1]:6379/",
                                 "http://127.0.0.1:8080/", "http://localhost/", "http://10.0.0.5/",
                                 "http://192.168.1.1/", "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/",
                                 "http://224.0.0.1/", "http://0.0.0.0/", "http://100.64.0.1/"])
def test_adding_an_endpoint_that_is_not_public_is_refused(base_env: pytest.MonkeyPatch, sqlite_db: str,
                                                          url: str) -> None:
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    base_env.delenv("CALLBACK_ALLOWED_NETWORKS", raising=False)
    reset_settings()
    result = CliRunner().invoke(main, ["callbacks", "add", url])
    assert result.exit_code == 2, result.output
    assert REFUSED in result.output and "resolves to " in result.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(CallbackEndpoint)) == 0


def test_allowed_networks_open_a_range_on_purpose(base_env: pytest.MonkeyPatch, sqlite_db: str) -> None:
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    base_env.setenv("CALLBACK_ALLOWED_NETWORKS", "10.0.0.0/8, fd00::/8")
    reset_settings()
    for url in ("http://10.1.2.3/hooks", "https://[fd00::5]/hooks", "https://93.184.215.14/hooks"):
        result = CliRunner().invoke(main, ["callbacks", "add", url])
        assert result.exit_code == 0, result.output
    refused = CliRunner().invoke(main, ["callbacks", "add", "http://127.0.0.1/hooks"])
    assert refused.exit_code == 2 and REFUSED in refused.output


@pytest.mark.parametrize("value", ["10.0.0.0/33", "intranet", "10.0.0.0/8,,fd00::/129"])
def test_a_bad_allowed_network_is_one_line_naming_the_variable(base_env: pytest.MonkeyPatch, value: str) -> None:
    base_env.setenv("CALLBACK_ALLOWED_NETWORKS", value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("CALLBACK_ALLOWED_NETWORKS: ") and "\n" not in message


@pytest.mark.parametrize("address,allowed", [("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
                                             ("127.0.0.1", False), ("::1", False), ("fe80::1%eth0", False),
                                             ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False),
                                             ("64:ff9b::a9fe:a9fe", False), ("ff02::1", False), ("240.0.0.1", False)])
def test_the_address_policy(address: str, allowed: bool) -> None:
    assert http.is_allowed(address) is allowed


def test_a_host_that_resolves_elsewhere_at_delivery_is_refused_before_sending(hardening_env: pytest.MonkeyPatch,
                                                                              db: str, servers: list[RawServer],
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name resolved to a public address when the endpoint was added, and to loopback (where
    a receiver listens) when the callback is sent. Nothing reaches it; the attempt fails for good."""
    _set(hardening_env, CALLBACK_ALLOWED_NETWORKS="")
    answer = {"address": "93.184.215.14"}
    real = socket.getaddrinfo

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer["address"], int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    receiver = serve(servers, lambda conn, _: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    _add(f"http://rebind.example.test:{receiver.port}/hooks")
    answer["address"] = "127.0.0.1"
    delivery_id = _one_delivery()
    assert dispatcher.attempt_delivery(delivery_id) == "dead"
    assert receiver.requests == []
    [attempt] = _attempts(delivery_id)
    assert attempt.error == f"callback URL resolves to 127.0.0.1, {REFUSED}"


def test_an_endpoint_no_longer_allowed_gets_nothing(hardening_env: pytest.MonkeyPatch, db: str,
                                                   servers: list[RawServer]) -> None:
    receiver = serve(servers, lambda conn, _: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    _add(receiver.url)  # allowed when added
    _set(hardening_env, CALLBACK_ALLOWED_NETWORKS="")  # the allowance withdrawn
    delivery_id = _one_delivery()
    assert dispatcher.attempt_delivery(delivery_id) == "dead"
    assert receiver.requests == []
    assert _attempts(delivery_id)[0].error == f"callback URL resolves to 127.0.0.1, {REFUSED}"


# ------------------------------------------------------------------------------------- passwords in URLs


@pytest.mark.parametrize("url,shown", [
    ("https://user:s3cret@app.example.org/hooks", "https://user:***@app.example.org/hooks"),
    ("https://tok3n@app.example.org/hooks?a=b@c", "https://***@app.example.org/hooks?a=b@c"),
    ("https://user:pa/ss@app.example.org/hooks", "https://user:***@app.example.org/hooks"),
    ("https://app.example.org/hooks?next=a@b", "https://app.example.org/hooks?next=a@b"),
])
def test_mask_endpoint_url(url: str, shown: str) -> None:
    assert endpoints.mask_endpoint_url(url) == shown


def test_a_password_in_an_endpoint_url_is_never_shown_but_still_used(hardening_env: pytest.MonkeyPatch, db: str,
                                                                     servers: list[RawServer],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import logging

    receiver = serve(servers, lambda conn, _: conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"))
    url = f"http://hookuser:pw-Zq8x1@127.0.0.1:{receiver.port}/hooks"
    added = CliRunner().invoke(main, ["callbacks", "add", url, "--events", "email.sent"])
    assert added.exit_code == 0, added.output
    assert "pw-Zq8x1" not in added.output and "hookuser:***@127.0.0.1" in added.output
    for args in (["callbacks", "list"], ["callbacks", "list", "--json"]):
        listing = CliRunner().invoke(main, args)
        assert listing.exit_code == 0 and "pw-Zq8x1" not in listing.output and "hookuser:***@" in listing.output
    delivery_id = _one_delivery()
    with caplog.at_level(logging.DEBUG):
        assert dispatcher.attempt_delivery(delivery_id) == "pending"
    assert "pw-Zq8x1" not in caplog.text and "busy" in caplog.text
    head = receiver.requests[0].decode()
    assert "\r\nAuthorization: Basic aG9va3VzZXI6cHctWnE4eDE=" in head  # the credentials still go to it
    assert "pw-Zq8x1" not in (_attempts(delivery_id)[0].error or "")
