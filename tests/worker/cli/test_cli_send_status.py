"""``mailworker send`` and ``status`` speak the CLI's own language: flags in errors (never ``enqueue_email``'s
Python names), a required ``--subject``, a refused empty id, JSON errors under ``--json``, the dev-stack note only
when a command uses the stack, ``status --watch`` following an email to its final status, and the send attempts.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker import enqueue_email
from worker.cli import main
from worker.cli.main import FINAL_STATUSES, _render_status, _Watch
from worker.infrastructure.config import PROJECT_ROOT

MAILWORKER = [sys.executable, "-m", "worker.cli"]
NO_DEV_STACK = "/nonexistent/mailworker-dev.env"
#: enqueue_email's argument names: none may reach a CLI user.
PYTHON_NAMES = re.compile(r"\b(html_body|text_body|template_id|template_data|reply_to|idempotency_key|sender)\b")


def _stored() -> int:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Message

    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture
def quiet_db(sqlite_db: str, base_env: pytest.MonkeyPatch) -> str:
    base_env.setenv("MAILWORKER_DEV_ENV_FILE", NO_DEV_STACK)
    base_env.setenv("MAILWORKER_QUIET", "1")
    return sqlite_db


# ------------------------------------------------------------------------------------------- send


@pytest.mark.parametrize("body", [[], ["--text", ""], ["--text-file", "EMPTY"]])
def test_send_without_a_body_names_the_flags(quiet_db: str, tmp_path: Path, body: list[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else a for a in body]
    result = CliRunner().invoke(main, ["send", "--to", "a@example.com", "--subject", "s", *args])
    assert result.exit_code == 2, result.output
    assert _error_lines(result.stderr) == [
        "Error: no body: give --text, --html (or --text-file, --html-file) or --template-id"]
    assert not PYTHON_NAMES.search(result.output)
    assert _stored() == 0


def test_send_without_subject_is_refused_unless_a_template_gives_it(quiet_db: str) -> None:
    result = CliRunner().invoke(main, ["send", "--to", "a@example.com", "--text", "hello"])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "--subject is required" in lines[0], result.stderr
    assert _stored() == 0

    templated = CliRunner().invoke(main, ["send", "--to", "a@example.com", "--template-id", "tpl-1",
                                          "--template-data", '{"name": "Ann"}', "--json"])
    assert templated.exit_code == 0, templated.output
    assert json.loads(templated.stdout)["status"] == "queued" and _stored() == 1


@pytest.mark.parametrize(("args", "expected"), [
    (["--to", "nope"], "--to: 'nope' is not a valid address"),
    (["--cc", "nope"], "--cc: 'nope' is not a valid address"),
    (["--bcc", "a@x.org, nope"], "--bcc: 'nope' is not a valid address"),
    (["--from", "nope"], "--from: 'nope' is not a valid address"),
    (["--reply-to", "nope"], "--reply-to: 'nope' is not a valid address"),
    (["--subject", "two\nlines"], "--subject: contains a line break character"),
    (["--reference", "r" * 300], "--reference: longer than 255 characters"),
    (["--idempotency-key", "k" * 300], "--idempotency-key: longer than 255 characters"),
    (["--template-id", "t\nx"], "--template-id: contains a line break character"),
    (["--template-id", "t", "--template-data", '{"a": [1, NaN]}'], "--template-data at ['a'][1]: nan is not a JSON"),
    (["--template-id", "t", "--template-data", "[1]"], "--template-data: expected a dict, got list"),
    (["--template-data", "{}"], "--template-data: given without --template-id"),
    (["--template-id", "t", "--template-data", "{"], "--template-data: not JSON"),
])
def test_send_field_errors_name_the_flag(quiet_db: str, args: list[str], expected: str) -> None:
    base = {"--to": "a@example.com", "--subject": "s", "--text": "hello"}
    given = set(args[::2])
    argv = ["send", *[x for k, v in base.items() if k not in given for x in (k, v)], *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code in (1, 2), result.output
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"Error: {expected}"), result.stderr
    assert not PYTHON_NAMES.search(result.output), result.output
    assert "Traceback" not in result.output and _stored() == 0


def test_send_attachment_and_sender_errors_name_the_flag(quiet_db: str, tmp_path: Path,
                                                         base_env: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "inv\u2028oice.txt"  # a line separator: no header (filename) can carry it
    bad.write_text("x")
    good = tmp_path / "ok.txt"
    good.write_text("y")
    result = CliRunner().invoke(main, ["send", "--to", "a@example.com", "--subject", "s", "--text", "t",
                                       "--attach", str(good), "--attach", str(bad)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: --attach {bad} (filename): contains a line break"), result.stderr
    assert "attachments[" not in result.output

    base_env.delenv("MAIL_DEFAULT_SENDER")
    nosender = CliRunner().invoke(main, ["send", "--to", "a@example.com", "--subject", "s", "--text", "t"])
    assert nosender.exit_code == 1
    assert _error_lines(nosender.stderr) == ["Error: no sender: give --from or set MAIL_DEFAULT_SENDER"]
    assert _stored() == 0


# ------------------------------------------------------------------------------------------ status


@pytest.mark.parametrize("blank", ["", "   "])
def test_status_refuses_an_empty_id(quiet_db: str, blank: str) -> None:
    result = CliRunner().invoke(main, ["status", blank])
    assert result.exit_code == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "TRACKING_ID is empty" in lines[0], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("argv", "code", "expected"), [
    (["status", "0b5f6d2e-0000-4000-8000-000000000000", "--json"], 1, "no email with tracking id 0b5f6d2e"),
    (["status", "", "--json"], 2, "TRACKING_ID is empty"),
    (["status", "--json"], 2, "Missing argument 'TRACKING_ID'"),
    (["status", "x", "--json", "--watch", "--timeout", "0"], 2, "--timeout"),
    (["send", "--to", "nope", "--subject", "s", "--text", "t", "--json"], 1, "--to: 'nope' is not a valid"),
    (["send", "--to", "a@example.com", "--text", "t", "--json"], 2, "--subject is required"),
    (["stats", "--since", "yesterday-ish", "--json"], 2, "is neither an ISO date nor a duration"),
    (["requeue", "--json"], 2, "give tracking ids, --failed"),
    (["purge", "--older-than", "soon", "--json"], 2, "is not a duration"),
    (["suppressions", "list", "--limit", "many", "--json"], 2, "'many' is not a valid integer"),
    (["module", "show", "mailgun", "--json"], 2, "unknown module 'mailgun'"),
    (["callbacks", "list", "--bogus", "--json"], 2, "No such option '--bogus'"),
    (["cancel", "--json"], 2, "give tracking ids or --idempotency-key"),
])
def test_json_commands_print_errors_as_json(quiet_db: str, argv: list[str], code: int, expected: str) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == code, result.output
    assert result.stderr == ""
    error = json.loads(result.stdout)
    assert list(error) == ["error"] and expected in error["error"], error


def test_json_error_for_a_bad_database_url(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("MAILWORKER_DEV_ENV_FILE", NO_DEV_STACK)
    base_env.setenv("DATABASE_URL", "garbage")
    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 1
    assert "DATABASE_URL='garbage' is not a database URL" in json.loads(result.stdout)["error"]


# -------------------------------------------------------------------------------- the dev-stack note


def _live_dev_env(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "dev.env"
    path.write_text(f"#pid={os.getpid()}\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.mark.parametrize("argv", [
    ["status", ""], ["send", "--to", "a@example.com", "--text", "t"], ["send", "--to", "a@example.com"],
    ["requeue"], ["stats", "--since", "nonsense"], ["purge", "--older-than", "x"], ["module", "show", "nope"],
    ["status", "x", "--timeout", "3"], ["send", "--subject", "s", "--text", "t", "--to", "a@example.com",
                                        "--template-id", "t", "--template-data", "{"],
])
def test_usage_errors_print_no_dev_stack_note(sqlite_db: str, base_env: pytest.MonkeyPatch, tmp_path: Path,
                                              argv: list[str]) -> None:
    base_env.setenv("MAILWORKER_DEV_ENV_FILE", str(_live_dev_env(tmp_path, DATABASE_URL="sqlite:////x.db")))
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert "note:" not in result.stderr, result.stderr
    used = CliRunner().invoke(main, ["status", "0b5f6d2e-0000-4000-8000-000000000000"])  # uses the stack
    assert used.exit_code == 1 and used.stderr.startswith("note: "), used.stderr


def test_dev_stack_note_only_when_the_stack_is_used(tmp_path: Path) -> None:
    from worker.infrastructure.migrate import upgrade

    db_url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(db_url)
    env_file = _live_dev_env(tmp_path, DATABASE_URL=db_url, CELERY_BROKER_URL="redis://127.0.0.1:6379/9")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "MAILWORKER_QUIET")}
    env["MAILWORKER_DEV_ENV_FILE"] = str(env_file)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MAILWORKER, *argv], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=False)

    for argv in (["status", ""], ["send", "--to", "a@example.com", "--text", "x"], ["status", "--help"],
                 ["status"]):
        proc = run(*argv)
        assert proc.returncode in (0, 2), proc.stderr
        assert "note:" not in proc.stderr, (argv, proc.stderr)
    proc = run("status", "0b5f6d2e-0000-4000-8000-000000000000")
    assert proc.returncode == 1
    assert proc.stderr.startswith("note: using the dev stack from dev.env ("), proc.stderr
    assert proc.stderr.count("note: using the dev stack") == 1


# ---------------------------------------------------------------------------------------- status --watch


def test_watch_prints_each_change_once_and_new_events() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 20, 9, 14, 5, tzinfo=UTC)
    watch = _Watch(as_json=False)
    base: dict[str, Any] = {"id": "t", "status": "queued", "events": [], "last_error": None}
    assert watch.lines(base, now) == ["09:14:05 queued"]
    assert watch.lines(base, now) == []
    retry = {**base, "status": "retrying", "last_error": "503 \x1b[2Jbusy"}
    assert watch.lines(retry, now) == ["09:14:05 retrying  (503 [2Jbusy)"]
    event = {"type": "delivered", "recipient": "a@x.org", "occurred_at": "2026-11-20T09:14:04+00:00", "detail": None}
    lines = watch.lines({**base, "status": "delivered", "events": [event]}, now)
    assert lines == ["09:14:05 delivered", "09:14:05   event delivered a@x.org  (reported 09:14:04)"]
    assert watch.lines({**base, "status": "delivered", "events": [event]}, now) == []
    assert "sent" not in FINAL_STATUSES and {"delivered", "cancelled", "expired", "failed"} <= FINAL_STATUSES
    assert not {"parked", "held", "queued", "retrying"} & FINAL_STATUSES


def test_watch_gives_up_after_timeout(quiet_db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b")  # no worker: it stays queued
    result = CliRunner().invoke(main, ["status", tid, "--watch", "--timeout", "0.6"])
    assert result.exit_code == 1
    assert re.fullmatch(r"\d\d:\d\d:\d\d queued\n", result.stdout), result.stdout
    assert _error_lines(result.stderr) == ["Error: still queued after 0.6 s"]

    as_json = CliRunner().invoke(main, ["status", tid, "--watch", "--timeout", "0.6", "--json"])
    assert as_json.exit_code == 1
    first, error = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert first["status"] == "queued" and error == {"error": "still queued after 0.6 s"}


class _Watcher:
    """``mailworker status ID --watch`` as a real process, its stdout read line by line."""

    def __init__(self, tracking_id: str, *extra: str) -> None:
        env = {**os.environ, "MAILWORKER_DEV_ENV_FILE": NO_DEV_STACK, "MAILWORKER_QUIET": "1"}
        self.proc = subprocess.Popen([*MAILWORKER, "status", tracking_id, "--watch", *extra], env=env,
                                     cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self) -> str:
        return self.lines.get(timeout=30)

    def finish(self) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=30)
        finally:
            self.proc.kill()
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def test_watch_follows_queued_sent_delivered(fake_api: Any, db: str, redis_client: Any) -> None:
    from worker.sending.delivery import deliver
    from worker.tracking.events import process_event

    tid = enqueue_email("a@example.com", "hi", text_body="hello")
    watcher = _Watcher(tid)
    assert re.fullmatch(r"\d\d:\d\d:\d\d queued", watcher.next_line())
    assert deliver(tid, owner="test").kind == "sent"
    assert re.fullmatch(r"\d\d:\d\d:\d\d sent", watcher.next_line())
    assert watcher.proc.poll() is None  # sent is not final: the webhook still reports delivery
    process_event({"event": "delivered", "id": "d1", "email_id": fake_api.sends[0]["email_id"],
                   "rcpt": "a@example.com", "time": "2026-11-20T09:14:05Z"})
    assert re.fullmatch(r"\d\d:\d\d:\d\d delivered", watcher.next_line())
    assert re.fullmatch(r"\d\d:\d\d:\d\d   event delivered a@example.com  \(reported 09:14:05\)",
                        watcher.next_line())
    code, stderr = watcher.finish()
    assert code == 0 and stderr == ""


def test_watch_ctrl_c_exits_130_quietly(db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "hi", text_body="hello")
    watcher = _Watcher(tid, "--timeout", "60")
    assert watcher.next_line().endswith(" queued")  # it is polling
    watcher.proc.send_signal(signal.SIGINT)
    code, stderr = watcher.finish()
    assert code == 130 and stderr == "", stderr


# ----------------------------------------------------------------------------------------- attempts


def _status(**extra: Any) -> dict[str, Any]:
    return {"id": "t1", "status": "sent", "subject": "s", "sender": "a@x.org", "transport": "smtp2go",
            "smtp2go_message_id": "abc", "message_id_header": None, "reference": None, "api_attempts": 2,
            "smtp_attempts": 0, "queued_at": "2026-11-20T09:14:00+00:00", "recipients": [], "events": [], **extra}


def test_status_renders_send_attempts_when_present() -> None:
    attempts = [
        {"provider": "smtp2go", "outcome": "refused", "at": "2026-11-20T09:14:01.5+00:00",
         "finished_at": "2026-11-20T09:14:01.8+00:00", "error": "503 \x1b[2Jbusy\nretry", "provider_message_id": None,
         "latency_ms": 312},
        {"provider": "smtp2go", "outcome": "accepted", "at": "2026-11-20T09:14:03+00:00",
         "finished_at": "2026-11-20T09:14:03.1+00:00", "error": None, "provider_message_id": "abc-42",
         "latency_ms": 95},
        {"provider": "smtp", "outcome": "in_flight", "at": "2026-11-20T09:14:09+00:00", "finished_at": None,
         "error": None, "provider_message_id": None, "latency_ms": None},
    ]
    text = _render_status(_status(attempts=attempts, provider="smtp2go", provider_message_id="abc-42"))
    assert re.search(r"^attempts\s+3 \(api 2, smtp 0\)$", text, re.M), text
    assert re.search(r"^provider\s+smtp2go$", text, re.M) and re.search(r"^provider id\s+abc-42$", text, re.M)
    table = text[text.index("send attempts"):].splitlines()
    assert table[1].split() == ["#", "started", "provider", "outcome", "took", "provider", "id", "error"]
    assert table[2].split() == ["1", "2026-11-20", "09:14:01", "smtp2go", "refused", "312", "ms", "-", "503",
                                "[2Jbusy", "retry"]
    assert table[3].split() == ["2", "2026-11-20", "09:14:03", "smtp2go", "accepted", "95", "ms", "abc-42"]
    assert table[4].split() == ["3", "2026-11-20", "09:14:09", "smtp", "in_flight", "-", "-"]
    assert "\x1b" not in text

    before = _render_status(_status(attempts=2))  # the count alone, as get_email_status gave it before
    assert re.search(r"^attempts\s+2 \(api 2, smtp 0\)$", before, re.M) and "send attempts" not in before
    assert "provider id" not in before


def test_status_json_passes_attempts_through(quiet_db: str, redis_client: Any) -> None:
    tid = enqueue_email("a@example.com", "s", text_body="b")
    result = CliRunner().invoke(main, ["status", tid, "--json"])
    assert result.exit_code == 0, result.output
    from worker.api.enqueue import get_email_status

    assert json.loads(result.stdout) == json.loads(json.dumps(get_email_status(tid), default=str))
