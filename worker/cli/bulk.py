"""``mailworker bulk FILE.csv``: one email per CSV row, through ``enqueue_many``.

The ``email`` column is the recipient. The other columns are the row's data: ``template_data`` with
``--template-id``, or the ``{column}`` fields of ``--subject``, ``--text`` and ``--html`` (``str.format_map``).
Every row is checked before anything is stored; a bad row is reported by its line number with the column or flag
at fault, and nothing is stored. Each row gets an idempotency key (the ``idempotency_key`` column when the file
has one, else the file's content hash, the row's line number and its address), so running the command again on
the same file sends nothing twice: a run that died half way stores only the rest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from worker.cli.common import FlagError, friendly_errors, one_line, printable, use_stack
from worker.errors import InvalidEmail

#: The columns with a meaning of their own; every other column is the row's data.
EMAIL_COLUMN = "email"
KEY_COLUMN = "idempotency_key"
#: enqueue_email's field names as the user of this command knows them.
_FIELDS = {"to": EMAIL_COLUMN, "subject": "--subject", "text_body": "--text", "html_body": "--html",
           "template_id": "--template-id", "sender": "--from", "list_id": "--list", "idempotency_key": KEY_COLUMN,
           "body": "--text/--html/--template-id"}


def register(main: click.Group) -> None:
    main.add_command(bulk)


@dataclass
class Row:
    line: int
    item: dict[str, Any]


def _fields(flag: str, template: str | None) -> set[str]:
    """The ``{column}`` names in one template, or a :class:`FlagError` naming the flag."""
    if template is None:
        return set()
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise FlagError(f"{flag}: {err} (write {{{{ and }}}} for literal braces)") from None
    return {name.split(".")[0].split("[")[0] for name in names}


def _read(data: bytes, path: str) -> tuple[list[str], list[tuple[int, dict[str, str], bool]]]:
    """The header and ``(line number, row, too many values)`` for every data row that is not blank (a quoted value
    may span lines: the number is the row's first line)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FlagError(f"{path}: not UTF-8 text (byte {err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise FlagError(f"{path}: empty file; the first line names the columns (one of them {EMAIL_COLUMN!r})"
                        ) from None
    except csv.Error as err:
        raise FlagError(f"{path}: line 1: {err}") from None
    if EMAIL_COLUMN not in header:
        raise FlagError(f"{path}: no {EMAIL_COLUMN!r} column (columns: {', '.join(map(repr, header))})")
    duplicate = sorted({name for name in header if header.count(name) > 1})
    if duplicate:
        raise FlagError(f"{path}: column {duplicate[0]!r} appears twice")
    rows = []
    start = reader.line_num + 1
    try:
        for values in reader:
            if any(v.strip() for v in values):
                row = {name: (values[i] if i < len(values) else "") for i, name in enumerate(header)}
                rows.append((start, row, len(values) > len(header)))
            start = reader.line_num + 1
    except csv.Error as err:
        raise FlagError(f"{path}: line {reader.line_num}: {err}") from None
    return header, rows


@click.command("bulk")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--template-id", help="SMTP2Go template id; the row's other columns are its template_data.")
@click.option("--subject", "-s", help="Subject line; {column} fields are filled from the row.")
@click.option("--text", "text_body", help="Plain-text body; {column} fields are filled from the row.")
@click.option("--html", "html_body", help="HTML body; {column} fields are filled from the row.")
@click.option("--from", "sender", help="Sender; default MAIL_DEFAULT_SENDER.")
@click.option("--list", "list_id", help="The mailing list these emails belong to (unsubscribes are scoped to it).")
@click.option("--lane", type=click.Choice(["bulk", "transactional"]), default="bulk", show_default=True,
              help="The lane they travel on.")
@click.option("--dry-run", is_flag=True, help="Check every row and report the bad ones; store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts (and tracking ids) as JSON.")
@friendly_errors
def bulk(csv_file: str, template_id: str | None, subject: str | None, text_body: str | None,
         html_body: str | None, sender: str | None, list_id: str | None, lane: str, dry_run: bool,
         as_json: bool) -> None:
    """Queue one email per row of FILE.csv (its `email` column is the recipient).

    With --template-id the other columns are each row's template_data; otherwise --subject and --text or --html
    are filled with them ({column}). Running it again on the same file sends nothing twice."""
    if template_id is None:
        if not (text_body or html_body):
            raise FlagError("no body: give --text or --html (with {column} fields), or --template-id")
        if subject is None:
            raise FlagError("--subject is required unless --template-id is given")
    elif any(v is not None for v in (subject, text_body, html_body)):
        raise FlagError("--template-id: the template carries subject and body; leave out --subject, --text, --html")
    data = Path(csv_file).read_bytes()
    header, rows = _read(data, csv_file)
    columns = [c for c in header if c not in (EMAIL_COLUMN, KEY_COLUMN)]
    templates = {"--subject": subject, "--text": text_body, "--html": html_body}
    for flag, template in templates.items():
        missing = sorted(_fields(flag, template) - set(columns))
        if missing:
            raise FlagError(f"{flag}: no column {missing[0]!r} in {csv_file} (columns: "
                            f"{', '.join(map(repr, columns)) or 'none but email'})")
    digest = hashlib.sha256(data).hexdigest()[:32]
    has_keys = KEY_COLUMN in header

    def build(line: int, row: dict[str, str]) -> dict[str, Any]:
        values = {c: row[c] for c in columns}
        address = row[EMAIL_COLUMN].strip()
        key = row.get(KEY_COLUMN, "").strip() if has_keys else ""
        item: dict[str, Any] = {
            "to": address, "sender": sender, "list_id": list_id,
            "idempotency_key": key or f"bulk:{digest}:{line}:{address.lower()}"}
        if template_id is not None:
            item.update(template_id=template_id, template_data=values)
        else:
            item.update(subject=subject.format_map(values) if subject is not None else None,
                        text_body=text_body.format_map(values) if text_body else None,
                        html_body=html_body.format_map(values) if html_body else None)
        return item

    use_stack()
    from worker.api.enqueue import prepare

    good: list[Row] = []
    bad: list[str] = []
    for line, row, too_long in rows:
        if too_long:
            bad.append(f"line {line}: more values than the {len(header)} columns")
            continue
        try:
            item = build(line, row)
            prepare(**item, lane=lane)
        except InvalidEmail as err:
            bad.append(f"line {line}: {_where(err.field)}: {err.problem}")
            continue
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            bad.append(f"line {line}: {type(err).__name__} filling a {{column}} field: {err}")
            continue
        good.append(Row(line, item))
    for message in bad:
        click.echo(one_line(message), err=True)
    if bad:
        raise click.ClickException(f"{len(bad)} bad row(s) of {len(rows)} in {printable(csv_file)}; nothing stored")
    if dry_run:
        _report({"rows": len(rows), "enqueued": 0, "already": 0, "dry_run": True}, as_json,
                f"{len(rows)} row(s) OK; nothing stored (--dry-run)")
        return
    ids, already = _enqueue(good, lane)
    _report({"rows": len(rows), "enqueued": len(ids) - already, "already": already, "ids": ids}, as_json,
            f"enqueued {len(ids) - already}, already there {already} ({len(rows)} row(s))")


def _where(field: str) -> str:
    """An enqueue_email field as a column or flag of this command (``template_data['name']`` is column name)."""
    if field in _FIELDS:
        return _FIELDS[field]
    if field.startswith("template_data["):
        return f"column {field[len('template_data['):].split(']')[0]}"
    return field


def _enqueue(rows: list[Row], lane: str) -> tuple[list[str], int]:
    """Enqueue in chunks of BULK_BATCH_SIZE (a progress bar on stderr); the ids, and how many were there already."""
    from worker.api.bulk import enqueue_many
    from worker.api.enqueue import _find_by_idempotency_keys
    from worker.infrastructure.settings_spec import read

    size = int(read("BULK_BATCH_SIZE"))
    ids: list[str] = []
    already = 0
    with click.progressbar(length=len(rows), label="enqueueing", file=sys.stderr) as bar:
        for start in range(0, len(rows), size):
            chunk = [r.item for r in rows[start:start + size]]
            already += len(_find_by_idempotency_keys(sorted({i["idempotency_key"] for i in chunk})))
            ids.extend(enqueue_many(chunk, lane=lane))
            bar.update(len(chunk))
    return ids, already


def _report(data: dict[str, Any], as_json: bool, text: str) -> None:
    import json

    click.echo(json.dumps(data) if as_json else text)
