"""``mailworker worker``: the Procfile's worker process, one Celery pool per lane (worker.operations.lanes)."""

from __future__ import annotations

import click

from worker.cli.common import one_line_errors


def register(main: click.Group) -> None:
    main.add_command(worker)


@click.command("worker")
@click.option("--lanes", "selected", default="transactional,bulk,callbacks", show_default=True,
              help="Comma-separated lanes to serve, each in a pool of its own: transactional (send, events, "
                   "maintenance queues), bulk, callbacks. Run a lane apart with --lanes bulk in another process.")
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level for every lane.")
@one_line_errors
def worker(selected: str, loglevel: str) -> None:
    """Serve the lanes; each lane is a Celery worker of its own (node <lane>@<host>), so transactional mail never
    waits behind bulk mail or a slow callback receiver. Stops every lane on SIGTERM/SIGINT; exits when one dies."""
    from worker.operations.lanes import lanes, supervise

    try:
        chosen = lanes(tuple(name.strip() for name in selected.split(",") if name.strip()))
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    for lane in chosen:
        click.echo(f"lane {lane.name}: {lane.concurrency} threads on {', '.join(lane.queues)}", err=True)
    raise SystemExit(supervise(chosen, loglevel))
