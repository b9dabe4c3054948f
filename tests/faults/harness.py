"""Shared machinery for the fault-injection suite: real worker processes, a driver loop, totals.

Every process started here runs in its own session (process group) and is SIGKILLed as a group when the test
ends, whatever happened; ``kill -9`` of a worker kills its prefork children too, like a host that died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tests.conftest import EVENTS_QUEUE, MAINTENANCE_QUEUE, QUEUE_PREFIX, SEND_QUEUE, free_port
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message, MessageStatus, Transport

PROJECT = Path(__file__).resolve().parents[2]
ALL_QUEUES = f"{SEND_QUEUE},{EVENTS_QUEUE},{MAINTENANCE_QUEUE}"

#: What every fault test's workers run with: short leases and backoffs so recovery takes seconds, not minutes.
FAULT_ENV = {
    # The lease must outlive the worst-case attempt (Settings.validate): 4 x SMTP_TIMEOUT here.
    "SEND_LEASE_SECONDS": "7",
    "SMTP_TIMEOUT": "1",
    "SWEEP_INTERVAL": "1",
    "SWEEP_REPUBLISH_AFTER": "4",
    "SEND_RETRY_BACKOFF": "0.2",
    "SEND_RETRY_BACKOFF_MAX": "1",
    "PYTHONPATH": str(PROJECT),
    "PYTHONUNBUFFERED": "1",
}


def worker_env(**overrides: str | None) -> dict[str, str]:
    """The test process's environment (the fixtures set DATABASE_URL, SMTP2GO_*, SMTP_* ...) plus overrides;
    an override of None removes the variable."""
    env = dict(os.environ)
    env.update(FAULT_ENV)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class WorkerProcess:
    """One ``celery -A worker worker`` process (its own process group), logging to a file."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str], *, pool: str = "threads",
                 concurrency: int = 4, queues: str = ALL_QUEUES, loglevel: str = "INFO") -> None:
        self.name = f"{name}{os.getpid()}@%h"
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self.env, self.pool, self.concurrency, self.queues, self.loglevel = env, pool, concurrency, queues, loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, *, wait: bool = True, timeout: float = 45.0) -> WorkerProcess:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", self.pool,
                "-c", str(self.concurrency), "-Q", self.queues, "-n", self.name, "--loglevel", self.loglevel,
                "--without-heartbeat", "--without-mingle", "--without-gossip"]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, cwd=PROJECT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log_text():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children): a crashed host."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    stop = kill9  # cleanup: the database is the source of truth, a warm shutdown proves nothing here

    def crash_report(self) -> str:
        """The first unrecoverable error in the log (why a worker exited), if any."""
        lines = self.log_text().splitlines()
        for i, line in enumerate(lines):
            if "Unrecoverable error" in line:
                return "\n".join(lines[i:i + 3])
        return "(no 'Unrecoverable error' in the log)"


class Supervisor:
    """Restarts worker processes that exited on their own, as the platform running the Procfile would; every
    restart is counted, reported and turned into a pytest warning (it is a crash, even if nothing was lost)."""

    def __init__(self, *procs: WorkerProcess) -> None:
        self.procs = procs
        self.restarts = 0
        self.reasons: list[str] = []

    def __call__(self) -> None:
        for proc in self.procs:
            if proc.proc is not None and not proc.alive:
                self.restarts += 1
                reason = proc.crash_report()
                self.reasons.append(reason)
                warnings.warn(f"worker {proc.name} exited (exit code {proc.proc.returncode}) and was restarted: "
                              f"{reason}", RuntimeWarning, stacklevel=2)
                proc.stop()
                proc.start()


# --------------------------------------------------------------------------------------------- driving


@dataclass
class DriverTotals:
    ticks: int = 0
    republished: int = 0
    expired_leases: int = 0
    ambiguous_resolved: int = 0
    ambiguous_released: int = 0
    sweep_errors: int = 0
    reconcile_errors: int = 0
    errors: list[str] = field(default_factory=list)


class Driver:
    """Runs the periodic repair (sweeper and reconciliation) from the test process, as beat would."""

    def __init__(self, *, grace: float = 5.0, settle: float = 0.0, resend_after: float = 5.0,
                 reconcile: bool = True, max_requests: int = 50) -> None:
        self.grace, self.settle, self.resend_after = grace, settle, resend_after
        self.reconcile, self.max_requests = reconcile, max_requests
        self.totals = DriverTotals()

    def tick(self) -> None:
        import dataclasses

        from worker.infrastructure.config import get_settings
        from worker.operations.reconcile import reconcile
        from worker.operations.sweeper import sweep

        self.totals.ticks += 1
        try:
            report = sweep(grace=self.grace, republish_after=float(FAULT_ENV["SWEEP_REPUBLISH_AFTER"]))
            self.totals.republished += report.republished + report.scheduled
            self.totals.expired_leases += report.expired_leases
        except Exception as err:  # noqa: BLE001 - a fault may make one pass fail; the next one runs
            self.totals.sweep_errors += 1
            self.totals.errors.append(f"sweep: {type(err).__name__}: {err}"[:300])
        if self.reconcile:
            try:
                rec = reconcile(dataclasses.replace(get_settings(), reconcile_resend_after=self.resend_after,
                                                    smtp_unknown_resend_after=self.resend_after),
                                settle=self.settle, fill_after=10**7, max_requests=self.max_requests)
                self.totals.ambiguous_resolved += rec.resolved_sent
                self.totals.ambiguous_released += rec.released
            except Exception as err:  # noqa: BLE001
                self.totals.reconcile_errors += 1
                self.totals.errors.append(f"reconcile: {type(err).__name__}: {err}"[:300])

    def run_until(self, done: Callable[[], bool], *, timeout: float, interval: float = 0.5,
                  what: str = "condition", on_tick: Callable[[], None] | None = None) -> float:
        """Tick until ``done()``; returns the seconds it took. Fails the test (with a diagnosis) on timeout."""
        start = time.monotonic()
        while True:
            if done():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; driver={self.totals}; "
                                     f"statuses={status_counts()}")
            self.tick()
            if on_tick is not None:
                on_tick()
            time.sleep(interval)


# --------------------------------------------------------------------------------------------- reading results


def status_counts(ids: list[str] | None = None) -> dict[str, int]:
    with session_scope() as session:
        stmt = select(Message.status, func.count()).group_by(Message.status)
        if ids is not None:
            stmt = stmt.where(Message.id.in_(ids))
        return {str(status.value): int(n) for status, n in session.execute(stmt)}


def count_status(status: MessageStatus) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Message).where(Message.status == status))
                   or 0)


def all_sent(expected: int) -> Callable[[], bool]:
    return lambda: count_status(MessageStatus.SENT) >= expected


def rows(ids: list[str] | None = None) -> dict[str, Message]:
    with session_scope() as session:
        stmt = select(Message)
        if ids is not None:
            stmt = stmt.where(Message.id.in_(ids))
        return {m.id: m for m in session.scalars(stmt)}


@dataclass
class SendTotals:
    enqueued: int
    sent: int
    via_api: int
    via_smtp: int
    duplicates: int
    lost: int
    failed_over: int
    not_sent: dict[str, int]
    duplicate_ids: dict[str, int]


def send_totals(ids: list[str], fake_api: Any, sink: Any = None) -> SendTotals:
    """Final accounting: each id must be accepted exactly once, by the API or the relay, and be ``sent``."""
    by_id = rows(ids)
    statuses = Counter(str(m.status.value) for m in by_id.values())
    sent = [m for m in by_id.values() if m.status == MessageStatus.SENT]
    copies: dict[str, int] = {}
    for tid in ids:
        n = fake_api.count_for(tid) + (sink.count_for(tid) if sink is not None else 0)
        if n != 1:
            copies[tid] = n
    dupes = {k: v for k, v in copies.items() if v > 1}
    dupes.update(fake_api.duplicates())
    return SendTotals(
        enqueued=len(ids),
        sent=len(sent),
        via_api=sum(1 for m in sent if m.transport == Transport.SMTP2GO),
        via_smtp=sum(1 for m in sent if m.transport == Transport.SMTP),
        duplicates=len(dupes),
        lost=len(ids) - len(sent),
        failed_over=sum(1 for m in by_id.values() if m.fallback_reason is not None),
        not_sent={k: v for k, v in statuses.items() if k != "sent"},
        duplicate_ids=dict(list(dupes.items())[:10]),
    )


def report(name: str, **figures: Any) -> None:
    """The one totals line each fault test prints (pytest -s shows it; CI logs keep it)."""
    text = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"FAULT {name}: {text}", flush=True)


def enqueue_many(n: int, tag: str, **kwargs: Any) -> list[str]:
    from worker import enqueue_email

    return [enqueue_email(f"{tag}{i}@example.com", f"{tag} #{i}", text_body=f"body {i}", **kwargs)
            for i in range(n)]


def purge_unacked(redis_client: Any) -> None:
    """Drop our entries from kombu's shared ``unacked`` hash (a killed worker leaves them behind; another
    session's worker would otherwise restore them into our dead queues an hour later)."""
    with contextlib.suppress(Exception):
        for tag, payload in redis_client.hscan_iter("unacked"):
            if QUEUE_PREFIX.encode() in payload:
                redis_client.hdel("unacked", tag)
                redis_client.zrem("unacked_index", tag)


# --------------------------------------------------------------------------------------------- private Redis


class PrivateRedis:
    """A redis-server of our own on a free port: it may be killed, restarted and flushed (never the shared one)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        import redis

        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                client.ping()
                client.close()
                return self
            except redis.RedisError:
                assert self.proc.poll() is None, self.log_path.read_text()
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def flushall(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        client.flushall()
        client.close()

    def delete_every_key(self) -> int:
        """Everything in this Redis is gone, key by key (what a flush or a failover to an empty replica leaves,
        without FLUSHALL/FLUSHDB); returns how many keys there were, at least one."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            keys = list(client.scan_iter(count=1000))
            assert keys, "the broker held nothing to lose"
            client.delete(*keys)
            assert client.dbsize() == 0
            return len(keys)
        finally:
            client.close()


def point_broker_at(url: str) -> None:
    """Make this (test) process publish to ``url``: settings, Celery's broker and kombu's pools."""
    from kombu import pools

    from worker.celery_app import app
    from worker.infrastructure.config import reset_settings

    reset_settings()
    app.conf.broker_url = url
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    # The remote-control mailbox caches the producer pool it first used (a cached_property): drop it too, or
    # the next broadcast (enable_events, ping) acquires from the pool reset() just closed.
    app.control.mailbox.__dict__.pop("producer_pool", None)


# --------------------------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """A loopback TCP proxy that can simulate an unreachable server.

    ``outage()`` closes every proxied connection and stops listening (new connections are refused);
    ``resume()`` listens again on the same port.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._down = threading.Event()
        self._stopped = threading.Event()
        self.accepted = 0

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.settimeout(0.2)
        self._listener = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                               name="fault-proxy-accept")
        self._accept_thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set() and not self._down.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._down.is_set():
                    client.close()
                    upstream.close()
                    continue
                self._conns.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="fault-proxy-pump").start()
        with contextlib.suppress(OSError):
            listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

    def outage(self) -> None:
        self._down.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)  # the accept loop closes the listener: new connections are refused
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def resume(self) -> None:
        self._down.clear()
        self._listen()

    def stop(self) -> None:
        self._stopped.set()
        self.outage()
