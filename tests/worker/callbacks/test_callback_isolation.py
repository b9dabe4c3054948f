"""A slow callback receiver never stops mail: the Procfile's ``worker`` process, started as a platform would.

``mailworker worker`` runs every lane as a real Celery worker process of its own (two threads each here) on the
test's Redis and MariaDB. A receiver that takes each callback and trickles its answer holds every thread of the
callbacks lane; an email enqueued meanwhile is still sent at once, because no sending thread serves the
callbacks queue. The supervisor's own promises (stop together, die together) are tested here too.
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
    """The Procfile's ``name`` line as argv: variables expanded from ``env``, ``mailworker`` and ``celery`` taken
    from this virtualenv (the queue names come from the environment: this test session's own)."""
    line = next(text.split(":", 1)[1] for text in (PROJECT / "Procfile").read_text().splitlines()
                if text.startswith(f"{name}:"))
    line = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), line)
    argv = shlex.split(line)
    for program in ("mailworker", "celery"):
        if program in argv:
            argv[argv.index(program)] = str(Path(sys.executable).with_name(program))
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
           "BULK_CONCURRENCY": "1", "PYTHONPATH": str(PROJECT)}
    receiver = StuckReceiver()
    try:
        with session_scope() as session:
            endpoints.add_endpoint(session, receiver.url, ["email.sent"])
        with procfile_process("worker", env, tmp_path / "worker.log"):
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


def test_every_lane_has_a_pool_of_its_own() -> None:
    """The Procfile's worker serves every lane, and no lane's pool serves another lane's queue."""
    from worker.operations.lanes import LANES, lanes

    argv = procfile_command("worker", {})
    assert argv[-3:] == ["worker", "--loglevel", "INFO"]  # no --lanes: every lane
    chosen = {lane.name: set(lane.queues) for lane in lanes()}
    assert tuple(chosen) == LANES
    assert chosen["transactional"] == {f"{QUEUE_PREFIX}.send", f"{QUEUE_PREFIX}.events",
                                       f"{QUEUE_PREFIX}.maintenance"}
    assert chosen["bulk"] == {f"{QUEUE_PREFIX}.bulk"} and chosen["callbacks"] == {f"{QUEUE_PREFIX}.callbacks"}
    with pytest.raises(ValueError, match="--lanes: unknown lane fast"):
        lanes(("transactional", "fast"))


def _lane_pids(supervisor: int, count: int) -> list[Any]:
    import psutil

    def found() -> list[Any] | None:
        children = [c for c in psutil.Process(supervisor).children() if "celery" in " ".join(c.cmdline())]
        return children if len(children) == count else None

    return wait_until(found, 30, message=f"{count} lanes started")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_lanes_stop_together_and_die_with_the_supervisor(redis_client: Any, tmp_path: Path) -> None:
    import psutil

    env = {**os.environ, "CELERY_BROKER_URL": REDIS_URL, "WORKER_CONCURRENCY": "1", "CALLBACK_CONCURRENCY": "1",
           "BULK_CONCURRENCY": "1", "PYTHONPATH": str(PROJECT)}
    gone = lambda procs: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)  # noqa: E731

    # SIGTERM: every lane gets it (Celery's warm shutdown) and the supervisor exits 0 once they are all gone.
    with procfile_process("worker", env, tmp_path / "term.log") as proc:
        lanes = _lane_pids(proc.pid, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_until(lambda: gone(lanes), 30, message="every lane stopped")

    # One lane dies on its own: the supervisor stops the others and exits non-zero, so the platform restarts all.
    with procfile_process("worker", env, tmp_path / "crash.log") as proc:
        lanes = _lane_pids(proc.pid, 3)
        lanes[0].kill()
        assert proc.wait(60) != 0
        wait_until(lambda: gone(lanes), 30, message="the other lanes stopped")

    # The supervisor killed with SIGKILL cannot forward anything: its lanes are armed to die with it.
    argv = procfile_command("worker", env) + ["--lanes", "bulk,callbacks"]
    with (tmp_path / "kill.log").open("wb") as out:
        proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)
        lanes = _lane_pids(proc.pid, 2)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: gone(lanes), 30, message="the lanes gone with their supervisor")
