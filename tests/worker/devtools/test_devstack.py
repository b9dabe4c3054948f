"""``mailworker dev`` and its parts, with real processes.

The slow test runs the whole stack the way a newcomer does (on free ports, the real Redis in our own DB 12
instead of the embedded one because a real Redis already owns 6379) and drives it from "another shell" that
knows nothing but the dev.env file. The embedded Redis is tested on its own, on a free port.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import free_port, wait_until
from worker.cli.dev import dev, fake_smtp2go
from worker.devtools import devstack
from worker.devtools.devstack import Child, DevError, DevOptions, DevStack, load_dev_env, stop_children

DEV_REDIS_URL = "redis://127.0.0.1:6379/12"
# `python -m worker.cli dev` once cli_dev is registered in worker/cli/__init__.py; registering here too is harmless.
LAUNCH = ("import sys; from worker.cli import main; from worker.cli import dev as cli_dev; "
          "'dev' in main.commands or cli_dev.register(main); sys.exit(main())")
_SCRIPT = Path(sys.executable).parent / "mailworker"
# "Another shell" types `mailworker ...`: the console script when installed, else the same entry point.
MAILWORKER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", LAUNCH]
_SCRUB = ("DATABASE_URL", "REDIS_URL", "SMTP2GO_API_KEY", "SMTP2GO_API_URL", "SMTP2GO_WEBHOOK_SECRET",
          "SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "MAIL_DEFAULT_SENDER", "FLOWER_BASIC_AUTH",
          "MAILWORKER_SEND_QUEUE", "MAILWORKER_EVENTS_QUEUE", "MAILWORKER_MAINTENANCE_QUEUE",
          "MAILWORKER_CALLBACKS_QUEUE", "MAILWORKER_BULK_QUEUE", "MAILWORKER_TASK_EVENTS", "SETTINGS_ENCRYPTION_KEY",
          "CALLBACK_ALLOWED_NETWORKS")
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def readme_snippets() -> tuple[str, str]:
    """The README's Python snippet ("Using it from Python") and the second-shell commands, as written."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    python = re.search(r"## Using it from Python\s+```python\n(.*?)```", readme, re.S)
    shell = re.search(r"In a second shell:\s+```sh\n(.*?)```", readme, re.S)
    assert python and shell, "README sections moved"
    return python[1], shell[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(extra)
    return env


def _port_open(port: int) -> bool:
    return devstack.port_open("127.0.0.1", port, timeout=0.3)


# ------------------------------------------------------------------------------------------ dev.env


def test_load_dev_env_absent_and_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dev.env"
    assert load_dev_env(path) == {}
    path.write_text("# comment\n#pid=1\n\nDATABASE_URL=sqlite:////x/y.db?a=b\n"
                    "MAIL_DEFAULT_SENDER=mailworker dev <dev@mailworker.example.com>\nnot a pair\n")
    assert load_dev_env(path) == {"DATABASE_URL": "sqlite:////x/y.db?a=b",
                                  "MAIL_DEFAULT_SENDER": "mailworker dev <dev@mailworker.example.com>"}
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", str(path))
    assert load_dev_env()["DATABASE_URL"] == "sqlite:////x/y.db?a=b"


def test_dev_env_written_private_and_stale_file_handled(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dev.env"
    devstack._write_dev_env(path, {"A": "1", "B": "x y"})
    assert load_dev_env(path) == {"A": "1", "B": "x y"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    devstack._clear_stale_dev_env(path)  # our own pid: ours to replace
    assert not path.exists()
    path.write_text(f"#pid={os.getppid()}\nA=1\n")  # a live process owns it
    with pytest.raises(DevError, match="already|running"):
        devstack._clear_stale_dev_env(path)
    assert load_dev_env(path) == {"A": "1"}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(f"#pid={dead.pid}\nA=1\n")
    assert load_dev_env(path) == {}  # its dev was killed: stale, ignored
    devstack._clear_stale_dev_env(path)
    assert not path.exists()


# ------------------------------------------------------------------------------------------ planning


def test_plan_simulator_sink_and_shared_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env"))
    children = {c.name: c for c in stack._children()}
    assert list(children) == ["worker", "callbacks", "beat", "web", "console", "flower", "smtp", "smtp2go"]
    # Callbacks run in a worker of their own: no sending thread ever serves that queue.
    worker_queues = children["worker"].argv[children["worker"].argv.index("-Q") + 1].split(",")
    callback_queues = children["callbacks"].argv[children["callbacks"].argv.index("-Q") + 1].split(",")
    prefix = stack.queue_prefix
    assert worker_queues == [f"{prefix}.send", f"{prefix}.events", f"{prefix}.maintenance", f"{prefix}.bulk"]
    assert callback_queues == [f"{prefix}.callbacks"]
    assert stack.child_env["MAILWORKER_CALLBACKS_QUEUE"] == f"{prefix}.callbacks"
    # gunicorn's access log never prints the Basic-auth user (%(u)s): it is a secret when in the webhook URL.
    web = children["web"].argv
    assert "%(u)s" not in web[web.index("--access-logformat") + 1]
    shared = stack.shared_settings()
    assert shared["DATABASE_URL"] == f"sqlite:///{tmp_path.resolve() / 'mailworker.db'}"
    assert shared["CELERY_BROKER_URL"] == DEV_REDIS_URL
    assert shared["SMTP2GO_API_URL"] == "http://127.0.0.1:8787/v3"
    assert shared["SMTP_SECURITY"] == "none" and shared["SMTP_PORT"] == "2525"
    assert shared["MAIL_DEFAULT_SENDER"] == devstack.DEFAULT_SENDER
    # Generated credentials are kept in the owner-only dev.env (`mailworker dev --credentials` prints them).
    assert shared["SMTP2GO_WEBHOOK_SECRET"] == stack.webhook_secret
    assert shared["FLOWER_BASIC_AUTH"] == stack.flower_auth and shared["CONSOLE_BASIC_AUTH"] == stack.console_auth
    assert stack.child_env["SMTP2GO_WEBHOOK_SECRET"] and stack.child_env["SWEEP_INTERVAL"] == "5"
    assert stack.child_env["FLOWER_BASIC_AUTH"].startswith("dev:")
    # `mailworker callbacks add` in another shell needs the stack's encryption key and the loopback allowance.
    assert shared["CALLBACK_ALLOWED_NETWORKS"] == devstack.stack.DEV_CALLBACK_NETWORKS
    assert shared["SETTINGS_ENCRYPTION_KEY"] == stack.child_env["SETTINGS_ENCRYPTION_KEY"]


def test_dev_encryption_key_is_generated_once_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.crypto import decrypt_settings, encrypt_settings

    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    first = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env")).child_env["SETTINGS_ENCRYPTION_KEY"]
    key_file = tmp_path / devstack.stack.DEV_ENCRYPTION_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env")).child_env["SETTINGS_ENCRYPTION_KEY"]
    assert again == first  # what the last run encrypted stays readable
    assert decrypt_settings(encrypt_settings({"a": 1}, (first,)), (again,)) == {"a": 1}
    # A key the user exported wins and is never written into dev.env.
    monkeypatch.setenv("SETTINGS_ENCRYPTION_KEY", "user-key")
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env"))
    assert stack.child_env["SETTINGS_ENCRYPTION_KEY"] == "user-key"
    assert "SETTINGS_ENCRYPTION_KEY" not in stack.shared_settings()


def test_plan_keeps_real_api_and_secrets_out_of_dev_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:hunter2@127.0.0.1:6379/12")
    monkeypatch.setenv("SMTP2GO_API_KEY", "api-REAL")
    monkeypatch.setenv("DATABASE_URL", "mysql+pymysql://u:pw@db/mail")
    monkeypatch.delenv("SMTP2GO_API_URL", raising=False)
    monkeypatch.setenv("SMTP2GO_WEBHOOK_SECRET", "user-webhook-secret")
    monkeypatch.setenv("CONSOLE_BASIC_AUTH", "ops:user-console-pass")
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env", flower=False))
    assert [c.name for c in stack._children()] == ["worker", "callbacks", "beat", "web", "console", "smtp"]
    assert stack.child_env["SMTP2GO_API_URL"] == "https://api.smtp2go.com/v3"
    shared = stack.shared_settings()
    assert not {"SMTP2GO_API_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "SMTP2GO_WEBHOOK_SECRET",
                "CONSOLE_BASIC_AUTH"} & shared.keys()
    assert not {"hunter2", "user-webhook-secret", "user-console-pass"} & set(json.dumps(shared).split('"'))


def test_port_in_use_fails_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env", web_port=port))
        with pytest.raises(DevError, match=f"port {port} .*--web-port"):
            stack.run()
    assert stack.children == []


# ------------------------------------------------------------------------------------------ children


def test_child_output_and_stop_escalates_to_sigkill() -> None:
    stubborn = Child("stubborn", [sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                  "print('up', flush=True); time.sleep(60)"]).start()
    polite = Child("polite", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]).start()
    wait_until(lambda: "up" in stubborn.tail and "up" in polite.tail, 10, message="children up")
    started = time.monotonic()
    stop_children([stubborn, polite], timeout=1.0)
    assert time.monotonic() - started < 8
    assert polite.exit_code() == -signal.SIGTERM
    assert stubborn.exit_code() == -signal.SIGKILL


def _stack_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str,
                start_timeout: float = 60.0) -> tuple[DevStack, io.StringIO]:
    """A stack whose only child runs ``code`` and whose only probe never succeeds."""
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    buf = io.StringIO()
    opts = DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env", start_timeout=start_timeout)
    stack = DevStack(opts, devstack.Output(buf))
    stack.children = [Child("boom", [sys.executable, "-c", code]).start(stack.out)]
    monkeypatch.setattr(stack, "_probes", lambda: {"boom": lambda: False})
    return stack, buf


def test_child_dying_at_start_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack, buf = _stack_with(tmp_path, monkeypatch, "print('kaboom: bad config', flush=True); raise SystemExit(3)")
    try:
        assert stack._wait_ready() is False
    finally:
        stop_children(stack.children)
    assert "boom exited with code 3 during start-up" in buf.getvalue()
    assert "    kaboom: bad config" in buf.getvalue()


def test_start_timeout_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack, buf = _stack_with(tmp_path, monkeypatch, "import time; print('still booting', flush=True); time.sleep(30)",
                             start_timeout=0.5)
    try:
        assert stack._wait_ready() is False
    finally:
        stop_children(stack.children)
    assert "not ready after 0s: boom" in buf.getvalue() or "not ready after 1s: boom" in buf.getvalue()
    assert "still booting" in buf.getvalue()


def test_embedded_redis_listens_on_tcp(tmp_path: Path) -> None:
    import redis

    port = free_port()
    child = devstack.start_embedded_redis(port, tmp_path / "redis")
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        assert client.ping()
        client.set("mailworker-dev", "ok")
        assert client.get("mailworker-dev") == b"ok"
        client.close()
    finally:
        stop_children([child])
    assert child.exit_code() == 0
    assert not _port_open(port)
    assert (tmp_path / "redis" / "dump.rdb").exists()  # saved on SIGTERM: queued mail survives a restart


def test_cli_help() -> None:
    runner = CliRunner()
    result = runner.invoke(dev, ["--help"])
    assert result.exit_code == 0 and "--no-flower" in result.output and "--var-dir" in result.output
    result = runner.invoke(fake_smtp2go, ["--help"])
    assert result.exit_code == 0
    assert "--webhook-bearer" in result.output and "--error-rate" in result.output


# ------------------------------------------------------------------------------------ the whole stack


class _Reader:
    """Drains the dev process's stdout (so it never blocks on a full pipe) and keeps every line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def _callback_receiver() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that answers 204 and keeps every body POSTed to it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received
    finally:
        server.shutdown()
        server.server_close()


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAILWORKER, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=30, check=False)


def _basic_auth(ready_table: str, name: str) -> str:
    """The Basic credentials the ready table prints for ``name`` (``user X, password Y``), base64-encoded."""
    creds = re.search(rf"{name}\s+http://\S+\s+\(user (\S+), password (\S+)\)", ready_table)
    assert creds, ready_table
    return b64encode(f"{creds[1]}:{creds[2]}".encode()).decode()


def _printed_login(ready_table: str, name: str, url: str) -> str:
    """``url`` refuses a request without credentials (401) and answers 200 with the printed ones; its body."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)  # noqa: S310
    assert refused.value.code == 401
    auth = {"Authorization": f"Basic {_basic_auth(ready_table, name)}"}
    request = urllib.request.Request(url, headers=auth)  # noqa: S310 - a loopback http URL we built
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        assert resp.status == 200
        return resp.read().decode()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_dev_stack_delivers_and_stops_cleanly(tmp_path: Path) -> None:
    import psutil
    import redis

    redis.Redis.from_url(DEV_REDIS_URL).flushdb()  # our own DB number only
    ports = {name: free_port() for name in ("web", "flower", "console", "api", "smtp")}
    env_file, var_dir = tmp_path / "dev.env", tmp_path / "var"
    env = _clean_env(CELERY_BROKER_URL=DEV_REDIS_URL, MAILWORKER_DEV_ENV_FILE=str(env_file))
    argv = [sys.executable, "-c", LAUNCH, "dev", "--var-dir", str(var_dir), "--start-timeout", "40",
            *[x for name, port in ports.items() for x in (f"--{name}-port", str(port))]]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    out = _Reader(proc)
    try:
        wait_until(lambda: devstack.READY_LINE in out.lines or proc.poll() is not None, 45,
                   interval=0.1, message="the ready line")
        assert proc.poll() is None, f"dev exited with {proc.returncode}:\n{out.text()}"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert {c.pid for c in children}

        # Another shell: nothing but the dev.env file tells it where things are.
        shared = load_dev_env(env_file)
        assert shared["DATABASE_URL"] == f"sqlite:///{var_dir.resolve() / 'mailworker.db'}"
        assert shared["CELERY_BROKER_URL"] == DEV_REDIS_URL
        shell = _clean_env(MAILWORKER_DEV_ENV_FILE=str(env_file))
        shell.pop("CELERY_BROKER_URL", None)
        shell.update(shared)  # what worker.infrastructure.config will do itself from MAILWORKER_DEV_ENV_FILE
        sent = _cli(["send", "--to", "someone@example.com", "--subject", "hi", "--text", "hello", "--json"],
                    shell, tmp_path)
        assert sent.returncode == 0, sent.stderr
        tracking_id = json.loads(sent.stdout)["id"]

        def status() -> dict | None:
            res = _cli(["status", tracking_id, "--json"], shell, tmp_path)
            assert res.returncode == 0, res.stderr
            data = json.loads(res.stdout)
            return data if data["status"] == "delivered" else None

        # queued -> sent (simulator accepted) -> delivered (its webhook, through the receiver and event worker)
        wait_until(status, 30, interval=0.3, message="delivered")
        final = json.loads(_cli(["status", tracking_id, "--json"], shell, tmp_path).stdout)
        assert final["status"] == "delivered", out.text()[-3000:]
        assert sorted(e["type"] for e in final["events"]) == ["delivered", "processed"]
        assert final["smtp2go_message_id"] and final["transport"] == "smtp2go"
        # The embedded database holds every address and body: owner-only.
        assert stat.S_IMODE((var_dir / "mailworker.db").stat().st_mode) == 0o600

        # The README's `mailworker callbacks add`, from another shell: the stack's own encryption key stores the
        # endpoint's secret, and its callbacks worker delivers the signed event to a receiver on loopback.
        with _callback_receiver() as (url, received):
            added = _cli(["callbacks", "add", url, "--events", "email.sent"], shell, tmp_path)
            assert added.returncode == 0, added.stderr
            second = json.loads(_cli(["send", "--to", "other@example.com", "--subject", "hi", "--text", "x",
                                      "--json"], shell, tmp_path).stdout)["id"]
            body = wait_until(lambda: next((b for b in received if second in b), None), 30, interval=0.2,
                              message="the email.sent callback")
            assert json.loads(body)["type"] == "email.sent"

        # The operator console and Flower demand their printed dev credentials; the console shows the email.
        page = _printed_login(out.text(), "console", f"http://127.0.0.1:{ports['console']}/messages/{tracking_id}")
        assert tracking_id in page
        _printed_login(out.text(), "flower", f"http://127.0.0.1:{ports['flower']}/")
        auth = _basic_auth(out.text(), "flower")
        flower = f"http://127.0.0.1:{ports['flower']}/"

        # Flower's task list shows that email, not the sweeps (every 5 s here) nor reconciliation; and the
        # stack's own output stays quiet about them (a sweep did run: it keeps its marker beside the send queue).
        marker = redis.Redis.from_url(DEV_REDIS_URL)
        wait_until(lambda: marker.exists(f"{shared['MAILWORKER_SEND_QUEUE']}:broker-epoch"), 20, interval=0.3,
                   message="a sweep ran")
        marker.close()
        assert "mailworker.sweep" not in out.text() and "mailworker.dispatch_callbacks" not in out.text()

        def flower_tasks() -> dict | None:
            api = urllib.request.Request(flower + "api/tasks", headers={"Authorization": f"Basic {auth}"})  # noqa: S310
            with urllib.request.urlopen(api, timeout=5) as resp:  # noqa: S310
                tasks = json.loads(resp.read())
            return tasks if tracking_id in tasks else None

        tasks = wait_until(flower_tasks, 15, interval=0.5, message="the email in Flower")
        assert tasks[tracking_id]["name"] == "mailworker.send_email"
        assert not {t.get("name") for t in tasks.values()} & {"mailworker.sweep", "mailworker.reconcile"}

        # The README, as pasted, against this stack: the second-shell commands from the project root, and the
        # Python snippet, each finding the stack through the dev.env file only (no exports).
        python_snippet, shell_snippet = readme_snippets()
        readme_shell = _clean_env(MAILWORKER_DEV_ENV_FILE=str(env_file))
        readme_shell.pop("CELERY_BROKER_URL", None)
        send_line, status_line = [line.split("#")[0].strip() for line in shell_snippet.strip().splitlines()]
        sent = subprocess.run(["bash", "-c", send_line], env=readme_shell, cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=30, check=False)
        assert sent.returncode == 0, sent.stderr
        assert "note: using the dev stack from" in sent.stderr
        readme_id = sent.stdout.strip()
        wait_until(lambda: "delivered" in subprocess.run(
            ["bash", "-c", status_line.replace("<tracking id>", readme_id)], env=readme_shell, cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=30, check=True).stdout, 30, interval=0.3,
            message="the README's email delivered")
        ran = subprocess.run([sys.executable, "-c", python_snippet], env=readme_shell, cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0, ran.stderr
        printed = ran.stdout.strip().splitlines()
        assert printed[0].startswith("{'id': ") and "'status': '" in printed[0]
        assert printed[1] == "None" and int(printed[2]) >= 3
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise

    assert code == 0, out.text()[-3000:]
    assert "mailworker dev stopped" in out.lines
    assert not env_file.exists()
    assert not [p for p in ports.values() if _port_open(p)]
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"


# ------------------------------------------------------------------------------ secrets never in argv


def test_no_child_gets_a_secret_in_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process's arguments are readable by every local user (ps, /proc/<pid>/cmdline): keys and passwords
    travel in the children's environment only."""
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:flower-pass-77")
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env"))
    children = {c.name: c for c in stack._children()}
    secrets_ = [stack.api_key, stack.webhook_secret, "flower-pass-77"]
    for child in children.values():
        argv = " ".join(child.argv)
        assert not [s for s in secrets_ if s in argv], (child.name, argv)
        assert "--api-key" not in argv and "--webhook-bearer" not in argv and "--basic-auth" not in argv
        assert child.env is not None and child.env["FLOWER_BASIC_AUTH"] == "ops:flower-pass-77"
        assert child.env["SMTP2GO_API_KEY"] == stack.api_key
        assert child.env["SMTP2GO_WEBHOOK_SECRET"] == stack.webhook_secret
    assert "worker.devtools.devstack.simulator" in children["smtp2go"].argv


def test_simulator_takes_its_secrets_from_the_environment() -> None:
    from worker.devtools.devstack.simulator import secret_flags

    assert secret_flags({"SMTP2GO_API_KEY": "api-k", "SMTP2GO_WEBHOOK_SECRET": "new, old"}) == [
        "--api-key=api-k", "--webhook-bearer=new"]
    assert secret_flags({}) == []
    # token_urlsafe() starts with "-" one time in 64: such a value must still be a value, not a flag.
    flags = secret_flags({"SMTP2GO_API_KEY": "-k", "SMTP2GO_WEBHOOK_SECRET": "-bearer"})
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key")
    parser.add_argument("--webhook-bearer")
    parsed = parser.parse_args(flags)
    assert (parsed.api_key, parsed.webhook_bearer) == ("-k", "-bearer")


def test_simulator_child_accepts_the_key_from_its_environment(tmp_path: Path) -> None:
    """The real child: the key is in its environment, not its cmdline, and the API accepts it."""
    port = free_port()
    key = "api-dev-from-env-0123456789"
    env = _clean_env(SMTP2GO_API_KEY=key, SMTP2GO_WEBHOOK_SECRET="hook-from-env")
    child = Child("smtp2go", [sys.executable, "-m", "worker.devtools.devstack.simulator", "--port", str(port)],
                  env=env, cwd=Path(__file__).resolve().parents[3])
    child.start(devstack.Output(io.StringIO()))
    try:
        wait_until(lambda: _port_open(port), timeout=20, message="simulator listening")
        assert child.proc is not None
        cmdline = Path(f"/proc/{child.proc.pid}/cmdline").read_bytes().decode()
        assert key not in cmdline and "hook-from-env" not in cmdline

        def send(api_key: str) -> int:
            body = json.dumps({"sender": "a@example.com", "to": ["b@example.com"], "subject": "s",
                               "text_body": "t"}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/email/send", data=body, headers={
                "Content-Type": "application/json", "X-Smtp2go-Api-Key": api_key})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
                    return int(response.status)
            except urllib.error.HTTPError as err:
                return err.code

        assert send(key) == 200
        assert send("api-wrong") != 200
    finally:
        stop_children([child])


def test_procfile_gives_flower_its_password_through_the_environment() -> None:
    procfile = (Path(__file__).resolve().parents[3] / "Procfile").read_text()
    flower = next(line for line in procfile.splitlines() if line.startswith("flower:"))
    command = flower.split("&&", 1)[1]
    assert "FLOWER_BASIC_AUTH" not in command and "basic-auth" not in command and "celery -A worker flower" in command
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    refused = subprocess.run(["bash", "-c", flower.split(":", 1)[1].replace("exec celery", "exec true")], env=env,
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode != 0 and "set FLOWER_BASIC_AUTH=user:password" in refused.stderr
    allowed = subprocess.run(["bash", "-c", flower.split(":", 1)[1].replace("exec celery", "exec true")],
                             env={**env, "FLOWER_BASIC_AUTH": "u:p"}, capture_output=True, text=True, timeout=10)
    assert allowed.returncode == 0


# ------------------------------------------------------------------------------ leftovers and neighbours


def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path: Path) -> None:
    """A supervisor killed with -9 cannot stop its children: they are armed to die with it."""
    import psutil

    script = ("import sys, time; from worker.devtools.devstack.children import Child, Output; "
              "c = Child('sleeper', [sys.executable, '-c', 'import time; time.sleep(120)']).start(Output()); "
              "print(c.proc.pid, flush=True); time.sleep(120)")
    supervisor = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                  text=True)
    assert supervisor.stdout is not None
    child = psutil.Process(int(supervisor.stdout.readline()))
    wait_until(lambda: "time.sleep(120)" in " ".join(child.cmdline()), 10, message="the child exec'd its program")
    supervisor.kill()
    supervisor.wait(10)
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10,
               message="the child gone with its supervisor")


def test_a_killed_stacks_leftovers_are_named_and_stopped(tmp_path: Path) -> None:
    from worker.devtools.devstack.children import clean_leftovers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)  # a supervisor pid that is gone
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    cmdline = Path(f"/proc/{leftover.pid}/cmdline")
    wait_until(lambda: b"time.sleep(120)" in cmdline.read_bytes(), 10, message="the leftover running its program")
    record = tmp_path / "dev.children"
    record.write_text(f"#pid={dead.pid}\n{leftover.pid} {Path(sys.executable).name}\n")
    assert clean_leftovers(record) == (dead.pid, 1)
    assert leftover.wait(10) == -signal.SIGKILL and not record.exists()
    # A live supervisor's record is left alone.
    record.write_text(f"#pid={os.getppid()}\n{os.getpid()} python\n")
    assert clean_leftovers(record) == (0, 0) and record.exists()


def test_queues_another_live_stack_consumes_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=tmp_path / "dev.env"))
    client = redis.Redis.from_url(DEV_REDIS_URL)
    key = stack._claim_key()
    try:
        client.set(key, json.dumps({"pid": 4242, "host": "elsewhere", "var": "/other/checkout/var"}), ex=30)
        with pytest.raises(DevError, match=r"consumed by another live dev stack \(pid 4242 on elsewhere"):
            stack._claim_queues()
        client.delete(key)
        stack._claim_queues()  # free: ours now, renewable, and released on stop
        assert json.loads(client.get(key) or b"{}")["pid"] == os.getpid()  # type: ignore[arg-type]
        stack._claim_queues()
        stack._release_queues()
        assert client.get(key) is None
    finally:
        client.delete(key)
        client.close()


def test_credentials_are_kept_private_and_printed_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.devtools.devstack.envfile import _write_dev_env

    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", DEV_REDIS_URL)
    env_file = tmp_path / "dev.env"
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", str(env_file))
    refused = CliRunner().invoke(dev, ["--credentials"])
    assert refused.exit_code == 1 and "no dev stack is running" in refused.output
    stack = DevStack(DevOptions(var_dir=tmp_path, env_file=env_file))
    _write_dev_env(env_file, stack.shared_settings())
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    printed = CliRunner().invoke(dev, ["--credentials"])
    assert printed.exit_code == 0, printed.output
    console_password = stack.console_auth.partition(":")[2]
    assert f"console   http://127.0.0.1:8025  user dev, password {console_password}" in printed.output
    assert stack.flower_auth.partition(":")[2] in printed.output
    assert f"Bearer {stack.webhook_secret}" in printed.output


def test_idle_housekeeping_lines_are_kept_out_of_the_output() -> None:
    out = devstack.Output(io.StringIO())
    out.quiet = devstack.stack.QUIET_LINES
    out.say("Task mailworker.sweep[1f2e] succeeded in 0.01s: {}", "worker")
    out.say("Scheduler: Sending due task callbacks (mailworker.dispatch_callbacks)", "beat")
    out.say("Task mailworker.send_email[abc] succeeded in 0.05s", "worker")
    out.say("mailworker.sweep is a word in our own line")  # the supervisor's own lines are never filtered
    assert isinstance(out.stream, io.StringIO)
    assert out.stream.getvalue().splitlines() == ["   worker | Task mailworker.send_email[abc] succeeded in 0.05s",
                                                  "mailworker.sweep is a word in our own line"]


def test_sigint_to_make_alone_is_noticed(tmp_path: Path) -> None:
    """An IDE sends SIGINT to `make run` only; make forwards it to nobody and waits for its child, so the stack must
    notice by itself (make_parent_stopping, polled by the supervisor's loop) and stop."""
    import shutil

    if not shutil.which("make"):
        pytest.skip("make is not installed")  # .ci/run installs it; a developer machine may lack it
    marker = tmp_path / "noticed"
    child = (f"import sys, time; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
             "from worker.devtools.devstack.children import make_parent_stopping; "
             f"open({str(tmp_path / 'started')!r}, 'w').close(); end = time.monotonic() + 30\n"
             "while time.monotonic() < end and not make_parent_stopping(): time.sleep(0.1)\n"
             f"open({str(marker)!r}, 'w').write(str(make_parent_stopping()))")
    (tmp_path / "child.py").write_text(child)
    (tmp_path / "Makefile").write_text(f"run:\n\t{sys.executable} {tmp_path / 'child.py'}\n")
    make = subprocess.Popen(["make", "-s", "-C", str(tmp_path), "run"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (tmp_path / "started").exists(), 20, message="make's child running")
        assert not marker.exists()  # nothing to notice while make runs undisturbed
        make.send_signal(signal.SIGINT)  # to make alone, not its process group
        wait_until(marker.exists, 20, message="the child noticed make's SIGINT")
        assert marker.read_text() == "True"
        assert make.wait(20) != 0  # make finishes its interrupt once its child is gone
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
