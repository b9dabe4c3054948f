"""The ``mailworker console`` command (registered on the ``mailworker`` group by ``worker.cli.main``).

Imports nothing heavy at module level: the CLI stays fast for every other command.
"""

from __future__ import annotations

import click

DEFAULT_PORT = 8025


@click.command("console")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CONSOLE_HOST",
              help="Interface to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=DEFAULT_PORT, type=click.IntRange(1, 65535), show_default=True,
              envvar="CONSOLE_PORT", help="TCP port.")
@click.option("--threads", default=4, type=click.IntRange(1, 64), show_default=True, help="Request threads.")
def console(host: str, port: int, threads: int) -> None:
    """Serve the operator console (needs CONSOLE_BASIC_AUTH=user:password)."""
    from console_app.settings import ConsoleConfigError, load_console_settings
    from worker.errors import ConfigurationError
    from worker.infrastructure.config import get_settings

    try:
        load_console_settings()
        get_settings()
        from console_app import create_app
        from worker.infrastructure.redaction import install

        install(None)
        app = create_app()
    except (ConsoleConfigError, ConfigurationError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    click.echo(f"mailworker console on http://{host}:{port}/ (user {app.extensions['mailworker_console'].username})",
               err=True)
    from console_app.server import serve

    serve(app, host=host, port=port, threads=threads)
