"""The ``mailworker`` command line.

User mistakes (bad input, missing configuration, unknown ids) end in one clear line on stderr and exit code
1 or 2 -- never a traceback. Commands that print data take ``--json``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.config import reset_settings
from worker.errors import MailworkerError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn expected errors into one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return func(*args, **kwargs)
        except (MailworkerError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        except (OperationalError, ProgrammingError) as err:
            raise click.ClickException(
                f"database error ({type(err.orig).__name__}): is DATABASE_URL right and "
                "`mailworker db upgrade` done?"
            ) from err

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else render(data))


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s`` -> timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "w": "weeks"}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise click.BadParameter(f"{text!r} is not a duration like 90d, 12h, 30m")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def parse_when(text: str | None) -> datetime | None:
    """An ISO date/time (UTC when no zone) or a duration ago (``7d``)."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except click.BadParameter:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise click.BadParameter(f"{text!r} is neither an ISO date nor a duration like 7d") from err
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailworker")
def main() -> None:
    """mailworker: send transactional email through SMTP2Go (with SMTP fallback) and track it."""
    reset_settings()


# ----------------------------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
@friendly_errors
def db_upgrade(revision: str) -> None:
    """Apply migrations to DATABASE_URL (the embedded SQLite file by default)."""
    from worker.config import get_settings
    from worker.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    click.echo(f"database at revision {revision}")


# --------------------------------------------------------------------------------------------- send


@main.command()
@click.option("--to", "to", multiple=True, required=True, help="Recipient (repeatable).")
@click.option("--cc", multiple=True, help="Cc recipient (repeatable).")
@click.option("--bcc", multiple=True, help="Bcc recipient (repeatable).")
@click.option("--from", "sender", help="Sender; default MAIL_DEFAULT_SENDER.")
@click.option("--subject", "-s", help="Subject line.")
@click.option("--text", "text_body", help="Plain-text body.")
@click.option("--html", "html_body", help="HTML body.")
@click.option("--text-file", type=click.File("r"), help="Read the plain-text body from a file ('-' = stdin).")
@click.option("--html-file", type=click.File("r"), help="Read the HTML body from a file.")
@click.option("--attach", "attachments", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Attach a file (repeatable).")
@click.option("--reply-to", help="Reply-To address.")
@click.option("--reference", help="Your application's reference for this email.")
@click.option("--idempotency-key", help="A second send with the same key sends nothing new.")
@click.option("--template-id", help="SMTP2Go template id.")
@click.option("--template-data", help="Template variables as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def send(to: tuple[str, ...], cc: tuple[str, ...], bcc: tuple[str, ...], sender: str | None,
         subject: str | None, text_body: str | None, html_body: str | None, text_file: Any, html_file: Any,
         attachments: tuple[str, ...], reply_to: str | None, reference: str | None,
         idempotency_key: str | None, template_id: str | None, template_data: str | None,
         as_json: bool) -> None:
    """Queue an email and print its tracking id."""
    import mimetypes

    from worker.api import enqueue_email

    files = []
    for path in attachments:
        mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        files.append((Path(path).name, Path(path).read_bytes(), mimetype))
    data = None
    if template_data:
        try:
            data = json.loads(template_data)
        except json.JSONDecodeError as err:
            raise click.BadParameter(f"not JSON: {err}", param_hint="--template-data") from err
    tracking_id = enqueue_email(
        list(to), subject, text_body=text_file.read() if text_file else text_body,
        html_body=html_file.read() if html_file else html_body, sender=sender, cc=list(cc) or None,
        bcc=list(bcc) or None, reply_to=reply_to, attachments=files or None, template_id=template_id,
        template_data=data, reference=reference, idempotency_key=idempotency_key,
    )
    emit({"id": tracking_id, "status": "queued"}, as_json, lambda d: d["id"])


def _render_status(s: dict[str, Any]) -> str:
    ambiguous = "  (ambiguous: awaiting reconciliation)" if s.get("ambiguous") else ""
    rows = [
        ("id", s["id"]),
        ("status", f"{s['status']}{ambiguous}"),
        ("transport", s["transport"] or "-"),
        ("smtp2go id", s["smtp2go_message_id"] or "-"),
        ("message-id", s["message_id_header"] or "-"),
        ("reference", s["reference"] or "-"),
        ("attempts", f"{s['attempts']} (api {s.get('api_attempts', 0)}, smtp {s.get('smtp_attempts', 0)})"),
    ]
    for key in ("queued_at", "sent_at", "delivered_at", "bounced_at", "opened_at", "clicked_at", "failed_at"):
        if s.get(key):
            rows.append((key, s[key]))
    if s.get("fallback_reason"):
        rows.append(("fallback", s["fallback_reason"]))
    if s.get("last_error"):
        rows.append(("last error", s["last_error"]))
    lines = [f"{label:<14}{value}" for label, value in rows]
    lines.append("recipients:")
    for r in s["recipients"]:
        extra = []
        if r.get("bounce_type"):
            extra.append(f"bounce={r['bounce_type']}")
        if r.get("open_count"):
            extra.append(f"opens={r['open_count']}")
        if r.get("click_count"):
            extra.append(f"clicks={r['click_count']}")
        if r.get("error"):
            extra.append(r["error"])
        lines.append(f"  {r['kind']:<3} {r['address']:<40} {r['status']:<10} {' '.join(extra)}".rstrip())
    if s["events"]:
        lines.append("events:")
        for e in s["events"]:
            lines.append(f"  {e['occurred_at']}  {e['type']:<11} {e['recipient'] or ''}".rstrip())
    return "\n".join(lines)


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def status(tracking_id: str, as_json: bool) -> None:
    """Show one email's status, recipients and events."""
    from worker.api import get_email_status

    data = get_email_status(tracking_id)
    if data is None:
        raise click.ClickException(f"no email with tracking id {tracking_id}")
    emit(data, as_json, _render_status)


def _register_optional() -> None:
    """Attach command groups that live in their own modules."""
    from worker import cli_dev, cli_ops

    cli_ops.register(main)
    cli_dev.register(main)


_register_optional()


def run() -> None:  # pragma: no cover - console entry for `python -m worker.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
