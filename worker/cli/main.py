"""The ``mailworker`` command line.

User mistakes (bad input, missing configuration, unknown ids) end in one clear line on stderr and exit code
1 or 2 -- never a traceback. Commands that print data take ``--json``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from console_app.cli import console as console_command
from worker.cli import callbacks, dev, ops
from worker.cli.common import emit, friendly_errors
from worker.infrastructure.config import reset_settings


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
    from worker.infrastructure.config import get_settings
    from worker.infrastructure.migrate import upgrade

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

    from worker.api.enqueue import enqueue_email
    from worker.infrastructure.db import get_engine

    with get_engine().connect():  # a wrong DATABASE_URL is the first thing to hear about, before any field
        pass                      # check (the connection goes back to the pool and enqueue reuses it)

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


#: Each milestone and the ones it cannot precede. SMTP2Go reports event times to the second while ours carry
#: microseconds (and clocks differ a little): shown as recorded, delivered_at could read before sent_at.
_MILESTONES: dict[str, tuple[str, ...]] = {
    "queued_at": (), "send_at": (), "sent_at": ("queued_at",), "delivered_at": ("queued_at", "sent_at"),
    "bounced_at": ("queued_at", "sent_at"), "complained_at": ("queued_at", "sent_at"),
    "opened_at": ("queued_at", "sent_at", "delivered_at"),
    "clicked_at": ("queued_at", "sent_at", "delivered_at", "opened_at"), "failed_at": ("queued_at",),
}


def _parse(text: str) -> datetime:
    value = datetime.fromisoformat(text).replace(microsecond=0)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _milestone_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Times to the second, in lifecycle order, never reading backwards: a provider time earlier than a
    milestone it must follow is shown as that milestone's time, with what the provider reported beside it."""
    shown: dict[str, datetime] = {}
    rows = []
    for key, after in _MILESTONES.items():
        if not s.get(key):
            continue
        value = _parse(s[key])
        floor = max((shown[k] for k in after if k in shown), default=None)
        text = _when(value)
        if floor is not None and value < floor:
            text = f"{_when(floor)}  (reported as {value.astimezone(UTC):%H:%M:%S}: provider clock/precision)"
            value = floor
        shown[key] = value
        rows.append((key, text))
    return rows


def _render_status(s: dict[str, Any]) -> str:
    ambiguous = "  (ambiguous: awaiting reconciliation)" if s.get("ambiguous") else ""
    held = "  (held: an operator problem, see last error)" if s.get("held") else ""
    rows = [
        ("id", s["id"]),
        ("status", f"{s['status']}{ambiguous}{held}"),
        ("subject", s.get("subject") or "-"),
        ("from", s.get("sender") or "-"),
        ("transport", s["transport"] or "-"),
        ("smtp2go id", s["smtp2go_message_id"] or "-"),
        ("message-id", s["message_id_header"] or "-"),
        ("reference", s["reference"] or "-"),
        ("attempts", f"{s['attempts']} (api {s.get('api_attempts', 0)}, smtp {s.get('smtp_attempts', 0)})"),
    ]
    rows += _milestone_rows(s)
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
        lines.append("events (times as the provider reported them):")
        for e in s["events"]:
            when = _when(_parse(e["occurred_at"])) if e["occurred_at"] else "-"
            lines.append(f"  {when}  {e['type']:<11} {e['recipient'] or ''}".rstrip())
    return "\n".join(lines)


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def status(tracking_id: str, as_json: bool) -> None:
    """Show one email's status, recipients and events."""
    from worker.api.enqueue import get_email_status

    data = get_email_status(tracking_id)
    if data is None:
        raise click.ClickException(f"no email with tracking id {tracking_id}")
    emit(data, as_json, _render_status)


ops.register(main)
callbacks.register(main)
dev.register(main)
main.add_command(console_command)


def run() -> None:  # pragma: no cover - console entry for `python -m worker.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
