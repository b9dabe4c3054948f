"""A slow callback receiver never stops mail: the Procfile's processes, started as a platform would start them.

The ``worker`` and ``callbacks`` lines of the Procfile run as real Celery worker processes (two threads each) on
the test's Redis and MariaDB. A receiver that takes each callback and never answers holds every thread of the
callbacks process; an email enqueued meanwhile is still sent at once, because no sending thread serves the
callbacks queue.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QUEUE_PREFIX, REDIS_URL, wait_until
from worker import enqueue_email, get_email_status
from worker.callbacks import dispatcher, endpoints
from worker.infrastructure.config import reset_settings
from worker.infrastructure.crypto import generate_key
from worker.infrastructure.db import session_scope

PROJECT = Path(__file__).resolve().parents[3]


def procfile_command(name: str, env: dict[str, str]) -> list[str]:
    """The Procfile's ``name`` line as argv: variables expanded from ``env``, the queue names this test
    session's own, ``celery`` taken from this virtualenv."""
    line = next(text.split(":", 1)[1] for text in (PROJECT / "Procfile").read_text().splitlines()
                if text.startswith(f"{name}:"))
    line = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), line)
    line = line.replace("mailworker.", f"{QUEUE_PREFIX}.")
    argv = shlex.split(line)
    argv[argv.index("celery")] = str(Path(sys.executable).with_name("celery"))
    return argv


@contextmanager
def procfile_process(name: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(procfile_command(name, env), cwd=PROJECT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


def status_of(tracking_id: str) -> str | None:
    status = get_email_status(tracking_id)
    return status["status"] if status else None


class StuckReceiver:
    """Takes each POST, answers ``200`` with a long Content-Length, then trickles the body a byte at a time."""

    def __init__(self) -> None:
        self.taken = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.taken += 1
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.flush()
                while not receiver.release.wait(2):  # a byte every 2 s: no single read ever times out
                    self.wfile.write(b"x")
                    self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stuck_callback_receivers_do_not_delay_a_send(db: str, fake_api: Any, redis_client: Any,
                                                      base_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = generate_key()
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", key)
    base_env.setenv("CALLBACK_ALLOWED_NETWORKS", "127.0.0.0/8")
    base_env.setenv("CALLBACK_TIMEOUT", "90")  # the receiver holds longer than the test: only isolation helps
    reset_settings()
    env = {**os.environ, "CELERY_BROKER_URL": REDIS_URL, "WORKER_CONCURRENCY": "2", "CALLBACK_CONCURRENCY": "2",
           "PYTHONPATH": str(PROJECT)}
    receiver = StuckReceiver()
    try:
        with session_scope() as session:
            endpoints.add_endpoint(session, receiver.url, ["email.sent"])
        with procfile_process("worker", env, tmp_path / "worker.log"), \
                procfile_process("callbacks", env, tmp_path / "callbacks.log"):
            first = [enqueue_email(f"user{i}@example.com", "hi", text_body="x") for i in range(4)]
            for tracking_id in first:
                wait_until(lambda: status_of(tracking_id) == "sent", 40,  # noqa: B023 - awaited in this iteration
                           message=f"{tracking_id} sent")
            assert dispatcher.dispatch()["due"] == 4  # four email.sent callbacks published
            wait_until(lambda: receiver.taken >= 2, 30, message="the callbacks worker stuck in two receivers")

            late = enqueue_email("late@example.com", "still fast", text_body="x")
            wait_until(lambda: status_of(late) == "sent", 20,
                       message=f"the email enqueued while callbacks hang is sent:\n"
                               f"{(tmp_path / 'worker.log').read_text()[-2000:]}")
            assert receiver.taken >= 2 and not receiver.release.is_set()  # the callbacks are still held
    finally:
        receiver.close()


def test_procfile_serves_callbacks_apart_from_sending() -> None:
    """No Procfile process serves both a sending queue and the callbacks queue; one serves callbacks."""
    env = {"WORKER_CONCURRENCY": "16", "CALLBACK_CONCURRENCY": "8"}
    queues = {}
    for name in ("worker", "callbacks"):
        argv = procfile_command(name, env)
        queues[name] = set(argv[argv.index("--queues") + 1].split(","))
    assert f"{QUEUE_PREFIX}.send" in queues["worker"] and f"{QUEUE_PREFIX}.callbacks" not in queues["worker"]
    assert queues["callbacks"] == {f"{QUEUE_PREFIX}.callbacks"}
