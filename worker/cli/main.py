"""The ``mailworker`` command line.

User mistakes (bad input, missing configuration, unknown ids) end in one clear line on stderr and exit code
1 or 2 -- never a traceback. Commands that print data take ``--json``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from console_app.cli import console as console_command
from worker.cli import bulk, callbacks, compliance, dev, lanes, ops
from worker.cli.common import (
    FlagError,
    as_json_error,
    emit,
    friendly_errors,
    one_line,
    printable,
    use_stack,
    wants_json,
)
from worker.errors import InvalidEmail
from worker.infrastructure.config import reset_settings


class MailworkerGroup(click.Group):
    """The root group: with ``--json`` on the command line, every error (click's own usage errors included) is
    a JSON object on stdout instead of text, whichever subcommand raised it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            if wants_json(ctx.meta.get(_ARGS, [])):
                raise as_json_error(err) from err
            raise


_ARGS = "mailworker.args"


@click.group(cls=MailworkerGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    """Queue an email and print its tracking id.

    A body is required (--text, --html, their -file forms, or --template-id), and so is --subject unless
    --template-id is given (the template carries its subject)."""
    import mimetypes

    from worker.api.enqueue import enqueue_email
    from worker.infrastructure.db import get_engine

    text = text_file.read() if text_file else text_body
    html = html_file.read() if html_file else html_body
    if not (text or html or template_id):
        raise FlagError("no body: give --text, --html (or --text-file, --html-file) or --template-id")
    if subject is None and not template_id:
        raise FlagError("--subject is required (only a --template-id email may leave it out: the template carries "
                        "its subject)")
    data = None
    if template_data:
        try:
            data = json.loads(template_data)
        except json.JSONDecodeError as err:
            raise FlagError(f"--template-data: not JSON: {err}") from err
    use_stack()
    with get_engine().connect():  # a wrong DATABASE_URL is the first thing to hear about, before any field
        pass                      # check (the connection goes back to the pool and enqueue reuses it)

    files = []
    for path in attachments:
        mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        files.append((Path(path).name, Path(path).read_bytes(), mimetype))
    try:
        tracking_id = enqueue_email(
            list(to), subject, text_body=text, html_body=html, sender=sender, cc=list(cc) or None,
            bcc=list(bcc) or None, reply_to=reply_to, attachments=files or None, template_id=template_id,
            template_data=data, reference=reference, idempotency_key=idempotency_key,
        )
    except InvalidEmail as err:
        flags = _SendFlags(attachments, text_from_file=text_file is not None, html_from_file=html_file is not None)
        raise click.ClickException(flags.explain(err)) from err
    emit({"id": tracking_id, "status": "queued"}, as_json, lambda d: d["id"])


class _SendFlags:
    """``enqueue_email``'s field names (``text_body``, ``attachments[0].filename``) as the ``send`` flags that
    gave them (``--text``, ``--attach PATH``): the CLI's user never typed the Python names."""

    _FLAGS = {"to": "--to", "cc": "--cc", "bcc": "--bcc", "sender": "--from", "reply_to": "--reply-to",
              "subject": "--subject", "reference": "--reference", "idempotency_key": "--idempotency-key",
              "template_id": "--template-id", "template_data": "--template-data", "attachments": "--attach"}

    def __init__(self, attachments: tuple[str, ...], *, text_from_file: bool, html_from_file: bool) -> None:
        self.attachments = attachments
        self.flags = {**self._FLAGS, "text_body": "--text-file" if text_from_file else "--text",
                      "html_body": "--html-file" if html_from_file else "--html"}

    def flag(self, field: str) -> str:
        """The flag for one field name; the part of the name past the field (an attachment's ``.filename``, a
        template variable's ``['items'][2]``) stays, as where in that flag's value the problem is."""
        if field in self.flags:
            return self.flags[field]
        match = re.fullmatch(r"attachments\[(\d+)\](?:\.(\w+))?", field)
        if match:
            index = int(match[1])
            path = self.attachments[index] if index < len(self.attachments) else f"#{index + 1}"
            return f"--attach {path}" + (f" ({match[2]})" if match[2] else "")
        if field.startswith("template_data"):
            return f"--template-data at {field[len('template_data'):].strip()}"
        return field

    def explain(self, err: InvalidEmail) -> str:
        if err.field == "body":
            return "no body: give --text, --html (or --text-file, --html-file) or --template-id"
        if err.field == "sender":
            return f"--from: {err.problem}" if "MAIL_DEFAULT_SENDER" not in err.problem else \
                "no sender: give --from or set MAIL_DEFAULT_SENDER"
        flag = self.flag(err.field)
        problem = err.problem.replace(f"({err.field}:", f"({flag}:")  # the size limit names the largest part
        # Another field named in the problem ("given without template_id"); only the names with an underscore,
        # which cannot be ordinary words.
        problem = re.sub(r"\b[a-z]+_[a-z_]+\b", lambda m: self.flags.get(m[0], m[0]), problem)
        return f"{flag}: {problem}"


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
    attempts = s.get("attempts")
    count = len(attempts) if isinstance(attempts, list) else attempts or 0
    rows = [
        ("id", s["id"]),
        ("status", f"{s['status']}{ambiguous}{held}"),
        ("subject", s.get("subject") or "-"),
        ("from", s.get("sender") or "-"),
        ("transport", s.get("transport") or "-"),
    ]
    if "provider" in s or "provider_message_id" in s:
        rows += [("provider", s.get("provider") or "-"), ("provider id", s.get("provider_message_id") or "-")]
    if "smtp2go_message_id" in s:
        rows.append(("smtp2go id", s["smtp2go_message_id"] or "-"))
    rows += [
        ("message-id", s.get("message_id_header") or "-"),
        ("reference", s.get("reference") or "-"),
        ("attempts", f"{count} (api {s.get('api_attempts', 0)}, smtp {s.get('smtp_attempts', 0)})"),
    ]
    rows += _milestone_rows(s)
    if s.get("fallback_reason"):
        rows.append(("fallback", s["fallback_reason"]))
    if s.get("last_error"):
        rows.append(("last error", s["last_error"]))
    lines = [f"{label:<14}{value}" for label, value in rows]
    lines.append("recipients:")
    for r in s.get("recipients") or []:
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
    if isinstance(attempts, list) and attempts:
        lines += _attempt_lines(attempts)
    if s.get("events"):
        lines.append("events (times as the provider reported them):")
        for e in s["events"]:
            when = _when(_parse(e["occurred_at"])) if e.get("occurred_at") else "-"
            lines.append(f"  {when}  {e['type']:<11} {e.get('recipient') or ''}".rstrip())
    return "\n".join(lines)


def _attempt_lines(attempts: list[dict[str, Any]]) -> list[str]:
    """The send attempts, oldest first, as a small table: when each started, through which provider, how it
    ended (``in_flight`` while it runs), how long it took, the provider's id for it and its error."""
    lines = ["send attempts (times UTC):",
             f"  {'#':>2}  {'started':<19}  {'provider':<9} {'outcome':<10} {'took':>8}  {'provider id':<24} error"]
    for number, a in enumerate(attempts, 1):
        started = _parse(a["at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if a.get("at") else "-"
        took = f"{a['latency_ms']} ms" if a.get("latency_ms") is not None else "-"
        lines.append(f"  {number:>2}  {started:<19}  {a.get('provider') or '-':<9} {a.get('outcome') or '-':<10} "
                     f"{took:>8}  {a.get('provider_message_id') or '-':<24} {one_line(a.get('error') or '')}"
                     .rstrip())
    return lines


#: Statuses after which nothing more happens to an email. ``sent`` is not one: the provider's webhook still
#: reports delivered, bounced or complained; ``parked`` and ``held`` wait for reconciliation or an operator.
FINAL_STATUSES = frozenset({"delivered", "bounced", "complained", "rejected", "failed", "suppressed", "cancelled",
                            "expired"})

#: Statuses whose line in ``status --watch`` carries the last error (why it waits or ended).
_WITH_ERROR = frozenset({"retrying", "failed", "held", "parked", "rejected"})


class _Watch:
    """What ``status --watch`` has printed so far, so that each poll prints only what changed: the status (as
    ``HH:MM:SS status``, the time it was seen, UTC) and events not printed before."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.status: str | None = None
        self.seen: set[tuple[Any, ...]] = set()

    def lines(self, data: dict[str, Any], now: datetime) -> list[str]:
        out: list[str] = []
        clock = now.astimezone(UTC).strftime("%H:%M:%S")
        if data["status"] != self.status:
            self.status = data["status"]
            error = data.get("last_error") if data["status"] in _WITH_ERROR else None
            if self.as_json:
                out.append(json.dumps({"at": now.isoformat(timespec="seconds"), "status": data["status"],
                                       **({"error": error} if error else {})}, ensure_ascii=True))
            else:
                out.append(printable(f"{clock} {data['status']}" + (f"  ({one_line(error)})" if error else "")))
        for event in data.get("events") or []:
            key = (event.get("type"), event.get("recipient"), event.get("occurred_at"), event.get("detail"))
            if key in self.seen:
                continue
            self.seen.add(key)
            if self.as_json:
                out.append(json.dumps({"at": now.isoformat(timespec="seconds"), "event": event}, ensure_ascii=True,
                                      default=str))
            else:
                reported = f"  (reported {_parse(event['occurred_at']):%H:%M:%S})" if event.get("occurred_at") else ""
                out.append(printable(f"{clock}   event {event.get('type')} {event.get('recipient') or ''}"
                                     .rstrip() + reported))
        return out


def _watch(tracking_id: str, as_json: bool, timeout: float, interval: float = 0.5) -> None:
    from worker.api.enqueue import get_email_status

    watch = _Watch(as_json)
    deadline = time.monotonic() + timeout
    try:
        while True:
            data = get_email_status(tracking_id)
            if data is None:
                raise click.ClickException(f"no email with tracking id {tracking_id}")
            for line in watch.lines(data, datetime.now(UTC)):
                click.echo(line)
            if data["status"] in FINAL_STATUSES:
                return
            if time.monotonic() >= deadline:
                waiting = (" (not final: delivered, bounced or complained come from the provider's webhook)"
                           if data["status"] == "sent" else "")
                raise click.ClickException(f"still {data['status']} after {timeout:g} s{waiting}")
            time.sleep(interval)
    except KeyboardInterrupt:
        click.get_current_context().exit(130)  # Ctrl-C ends a watch: no "Aborted!", no traceback


@main.command()
@click.argument("tracking_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --watch: one object per line).")
@click.option("--watch", "-w", is_flag=True,
              help="Follow the email until a final status (delivered, bounced, complained, rejected, failed, "
                   "suppressed, cancelled, expired): one line per change, 'HH:MM:SS status' (UTC), and each new "
                   "event. Ctrl-C stops (exit 130).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --watch: give up after this many seconds, exit code 1 (default 120).")
@friendly_errors
def status(tracking_id: str, as_json: bool, watch: bool, timeout: float | None) -> None:
    """Show one email's status, recipients, send attempts and events."""
    from worker.api.enqueue import get_email_status

    tracking_id = tracking_id.strip()
    if not tracking_id:
        raise FlagError("TRACKING_ID is empty: give the id that `mailworker send` printed")
    if timeout is not None and not watch:
        raise FlagError("--timeout is only for --watch")
    use_stack()
    if watch:
        _watch(tracking_id, as_json, 120.0 if timeout is None else timeout)
        return
    data = get_email_status(tracking_id)
    if data is None:
        raise click.ClickException(f"no email with tracking id {tracking_id}")
    emit(data, as_json, _render_status)


ops.register(main)
compliance.register(main)
callbacks.register(main)
dev.register(main)
lanes.register(main)
bulk.register(main)
main.add_command(console_command)


def run() -> None:  # pragma: no cover - console entry for `python -m worker.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
