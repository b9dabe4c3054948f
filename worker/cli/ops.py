"""Operator commands: ``module``, ``stats``, ``suppressions`` (attached to the ``mailworker`` group)."""

from __future__ import annotations

import sys
from typing import Any

import click

from worker.cli.common import FlagError, emit, friendly_errors, parse_duration, parse_when, printable, use_stack


def register(main: click.Group) -> None:
    main.add_command(module)
    main.add_command(stats)
    main.add_command(suppressions)
    main.add_command(requeue)
    main.add_command(purge)


# ------------------------------------------------------------------------------------------- module


@click.group()
def module() -> None:
    """Show and change the SMTP2Go module (settings are stored encrypted)."""


def _check_name(name: str) -> None:
    from worker.infrastructure.modules import SMTP2GO

    if name != SMTP2GO:
        raise FlagError(f"unknown module {name!r} (known: {SMTP2GO})")


@module.command("show")
@click.argument("name", default="smtp2go")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def module_show(name: str, as_json: bool) -> None:
    """Show whether the module is enabled and its settings (secrets masked)."""
    from worker.infrastructure.config import get_settings
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.modules import masked, smtp2go_config

    _check_name(name)
    use_stack()
    with session_scope() as session:
        cfg = smtp2go_config(session, get_settings())
    data = {
        "name": name,
        "enabled": cfg.enabled,
        "usable": cfg.usable,
        "source": cfg.source,
        "settings": masked({"api_key": cfg.api_key, "api_url": cfg.api_url,
                            "webhook_secret": ",".join(cfg.webhook_secrets) or None, **cfg.options}),
    }
    emit(data, as_json, lambda d: "\n".join(
        [f"{d['name']}: {'enabled' if d['enabled'] else 'disabled'} (from {d['source']})"
         + ("" if d["usable"] or not d["enabled"] else " -- no API key, SMTP relay will be used")]
        + [f"  {k} = {'(not set)' if v is None else v}" for k, v in d["settings"].items()]))


@module.command("enable")
@click.argument("name", default="smtp2go")
@friendly_errors
def module_enable(name: str) -> None:
    """Enable the module (its database row then decides, whatever SMTP2GO_API_KEY says)."""
    _toggle(name, True)


@module.command("disable")
@click.argument("name", default="smtp2go")
@friendly_errors
def module_disable(name: str) -> None:
    """Disable the module: new sends use the SMTP relay."""
    _toggle(name, False)


def _toggle(name: str, enabled: bool) -> None:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.modules import set_module_enabled

    _check_name(name)
    use_stack()
    with session_scope() as session:
        set_module_enabled(session, name, enabled)
    click.echo(f"{name} {'enabled' if enabled else 'disabled'}")


@module.command("set")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True)
@friendly_errors
def module_set(name: str, pairs: tuple[str, ...]) -> None:
    """Store settings: KEY=VALUE ... (api_key, api_url, webhook_secret, track_opens, track_clicks, fastaccept).

    Secrets stay out of the command line (where `ps` and shell history see them): KEY=- reads the value from
    stdin (`printf %s "$KEY" | mailworker module set smtp2go api_key=-`), and a bare KEY asks for it with
    hidden input. An empty value (KEY=) removes the key. Values are encrypted with SETTINGS_ENCRYPTION_KEY.
    """
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.modules import SECRET_KEYS, SMTP2GO_KEYS, update_module_settings

    _check_name(name)
    unknown = sorted({pair.partition("=")[0] for pair in pairs} - SMTP2GO_KEYS)
    if unknown:  # before any prompt or stdin read
        raise click.BadParameter(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(SMTP2GO_KEYS))})",
                                 param_hint="PAIRS")
    values: dict[str, Any] = {}
    from_stdin = [pair[:-2] for pair in pairs if pair.endswith("=-")]
    if len(from_stdin) > 1:
        raise click.BadParameter(f"only one KEY=- can read stdin (got {', '.join(from_stdin)})", param_hint="PAIRS")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:  # a bare KEY: ask (hidden for secrets)
            value = str(click.prompt(key, hide_input=key in SECRET_KEYS, err=True)).strip()
            if not value:
                raise click.BadParameter(f"no value given for {key}", param_hint="PAIRS")
        elif value == "-":
            value = sys.stdin.read().strip()
            if not value:
                raise click.BadParameter(f"{key}=-: nothing to read on stdin", param_hint="PAIRS")
        elif value and key in SECRET_KEYS:
            click.echo(f"warning: {key} given on the command line, where other users (ps) and shell history "
                       f"can read it; use {key}=- (stdin) or a bare {key} (prompt) instead", err=True)
        if value.lower() in {"true", "false"}:
            values[key] = value.lower() == "true"
        else:
            values[key] = value or None
    use_stack()
    with session_scope() as session:
        update_module_settings(session, name, values)
    click.echo(f"{name}: updated {', '.join(sorted(values))}")


@module.command("keygen")
def module_keygen() -> None:
    """Print a new SETTINGS_ENCRYPTION_KEY value."""
    from worker.infrastructure.crypto import generate_key

    click.echo(generate_key())


@module.command("rotate")
@friendly_errors
def module_rotate() -> None:
    """Re-encrypt stored settings with the first SETTINGS_ENCRYPTION_KEY (after prepending a new key)."""
    from sqlalchemy import select

    from worker.infrastructure.config import get_settings
    from worker.infrastructure.crypto import rotate_token
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import IntegrationModule

    use_stack()
    keys = get_settings().require_encryption_keys()
    count = 0
    with session_scope() as session:
        for row in session.scalars(select(IntegrationModule)):
            if row.settings_encrypted:
                row.settings_encrypted = rotate_token(row.settings_encrypted, keys)
                count += 1
    click.echo(f"re-encrypted {count} module(s)")


# -------------------------------------------------------------------------------------------- stats


def _render_stats(s: dict[str, Any]) -> str:
    since, until = s.get("since"), s.get("until")
    window = (f"mail queued from {since or 'the first message'} until {until or 'now'}"
              if since or until else "all mail ever queued (narrow with --since 7d / --until)")
    lines = [f"window          {window}", f"total           {s['total']}"]
    lines.append("by status       " + (", ".join(f"{k}={v}" for k, v in s["by_status"].items() if v) or "-"))
    lines.append("by transport    " + (", ".join(f"{k}={v}" for k, v in s["by_transport"].items() if v) or "-"))
    lines.append(f"fallbacks       {s['fallback_count']}")
    for rate in ("delivery_rate", "open_rate", "click_rate", "bounce_rate", "spam_rate"):
        lines.append(f"{rate:<16}{s[rate] * 100:.1f}%")
    c = s.get("complaint_rate_7d")
    if c:
        over = "  OVER THE LINE" if c["over"] else ""
        lines.append(f"complaints 7d   {c['rate'] * 100:.2f}% ({c['complaints']} of {c['delivered_base']} recipients "
                     f"accepted in the last 7 days, whatever the window; line {c['threshold'] * 100:.2f}%){over}")
    return "\n".join(lines)


@click.command()
@click.option("--since", help="ISO date/time or a duration ago (7d, 12h).")
@click.option("--until", help="ISO date/time or a duration ago.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def stats(since: str | None, until: str | None, as_json: bool) -> None:
    """Totals by status and transport, fallbacks, and delivery/open/click/bounce/spam rates; and the spam
    complaint rate of the last 7 days against the 0.3 % line (COMPLAINT_RATE_THRESHOLD)."""
    from worker.tracking.complaints import complaint_rate
    from worker.tracking.stats import get_email_stats

    start, end = parse_when(since), parse_when(until)
    use_stack()
    data = get_email_stats(since=start, until=end)
    data = {"since": start.isoformat(timespec="seconds") if start else None,
            "until": end.isoformat(timespec="seconds") if end else None, **data,
            "complaint_rate_7d": complaint_rate().as_dict()}
    emit(data, as_json, _render_stats)


# ------------------------------------------------------------------------------------- suppressions


@click.group()
def suppressions() -> None:
    """The suppression list: addresses mailworker will not send to."""


@suppressions.command("list")
@click.option("--search", help="Only addresses containing this text.")
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def suppressions_list(search: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List suppressed addresses with their reason."""
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import list_suppressions

    use_stack()
    with session_scope() as session:
        rows = list_suppressions(session, limit=limit, offset=offset, search=search)
    emit(rows, as_json, lambda rs: "\n".join(
        f"{r['address']:<40} {r['reason']:<14} {r.get('created_at') or ''}" for r in rs) or "(none)")


@suppressions.command("add")
@click.argument("address")
@click.option("--reason", default="manual", show_default=True)
@friendly_errors
def suppressions_add(address: str, reason: str) -> None:
    """Stop sending to ADDRESS."""
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import add_suppression

    use_stack()
    with session_scope() as session:
        added = add_suppression(session, address, reason)
    click.echo(printable(f"{address}: {'suppressed' if added else 'already suppressed'}"))


@suppressions.command("remove")
@click.argument("address")
@friendly_errors
def suppressions_remove(address: str) -> None:
    """Allow sending to ADDRESS again."""
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import remove_suppression

    use_stack()
    with session_scope() as session:
        removed = remove_suppression(session, address)
    if not removed:
        raise click.ClickException(f"{address} is not on the suppression list")
    from worker.compliance.sync import release_remote

    click.echo(printable(f"{address}: removed; {release_remote(address)}"))


# ---------------------------------------------------------------------------------------- maintenance


@click.command()
@click.argument("ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every failed message (with --since to narrow).")
@click.option("--stuck", is_flag=True, help="Messages whose lease expired or whose publish was lost.")
@click.option("--since", help="Only messages queued since (ISO time or duration ago, e.g. 1d).")
@click.option("--held", is_flag=True, help="Messages held for an operator problem (fixed now): send at once.")
@click.option("--include-ambiguous", is_flag=True,
              help="Also resend parked sends whose outcome is unknown, without reconciliation (may deliver twice).")
@click.option("--dry-run", is_flag=True, help="Show what would be requeued; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def requeue(ids: tuple[str, ...], failed: bool, stuck: bool, held: bool, since: str | None,
            include_ambiguous: bool, dry_run: bool, as_json: bool) -> None:
    """Send failed, stuck or held messages again, by tracking id or by filter.

    A stuck message whose worker died mid-send is parked for reconciliation, never resent blindly."""
    from worker.operations.maintenance import requeue as run

    if not ids and not failed and not stuck and not held and not include_ambiguous:
        raise click.UsageError("give tracking ids, --failed, --stuck, --held or --include-ambiguous")
    start = parse_when(since)
    use_stack()
    result = run(list(ids) or None, failed=failed, stuck=stuck, held=held, since=start,
                 include_ambiguous=include_ambiguous, dry_run=dry_run)

    def render(r: dict[str, Any]) -> str:
        verb = "would requeue" if r["dry_run"] else "requeued"
        lines = [f"{verb} {len(r['requeued'])} message(s)"] + [f"  {i}" for i in r["requeued"]]
        lines += [f"parked {i}: it may have been sent; reconciliation settles it" for i in r["parked"]]
        lines += [f"skipped {i}: {why}" for i, why in r["skipped"].items()]
        return "\n".join(lines)

    emit(result.as_dict(), as_json, render)


@click.command()
@click.option("--older-than", "older_than", required=True, help="Age cut-off, e.g. 90d.")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def purge(older_than: str, dry_run: bool, as_json: bool) -> None:
    """Drop bodies, attachments and events of finished mail older than the cut-off (statuses stay), and status
    callbacks created before it that are delivered or dead letters, with their deliveries and attempts."""
    from worker.operations.maintenance import purge as run

    cutoff = parse_duration(older_than)
    use_stack()
    result = run(cutoff, dry_run=dry_run)
    emit(result.as_dict(), as_json, lambda r: (
        f"{'would purge' if r['dry_run'] else 'purged'} {r['messages']} message(s), "
        f"{r['attachments']} attachment(s), {r['events']} event(s), {r['status_events']} status event(s), "
        f"{r['callback_deliveries']} callback delivery(ies), {r['callback_attempts']} callback attempt(s)"))
