"""Telling the application: ``mailworker cancel`` and ``mailworker callbacks add|list|remove|replay|rotate``."""

from __future__ import annotations

from typing import Any

import click

from worker.cli.common import emit, friendly_errors, parse_when


def register(main: click.Group) -> None:
    main.add_command(cancel)
    main.add_command(callbacks)


# ------------------------------------------------------------------------------------------- cancel


@click.command()
@click.argument("tracking_ids", nargs=-1)
@click.option("--idempotency-key", "keys", multiple=True, help="Cancel by the key it was enqueued with (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def cancel(tracking_ids: tuple[str, ...], keys: tuple[str, ...], as_json: bool) -> None:
    """Take back queued, scheduled, retrying or held emails that no transport was handed yet.

    Exits 1 when any of them could not be cancelled (a transport has it already, or no such email)."""
    from worker.api.cancel import cancel_email

    if not tracking_ids and not keys:
        raise click.UsageError("give tracking ids or --idempotency-key")
    results = {tid: cancel_email(tid) for tid in tracking_ids}
    results.update({f"key:{key}": cancel_email(idempotency_key=key) for key in keys})
    data = {"cancelled": [k for k, v in results.items() if v],
            "not_cancelled": [k for k, v in results.items() if not v]}

    def render(d: dict[str, Any]) -> str:
        lines = [f"cancelled {k}" for k in d["cancelled"]]
        lines += [f"not cancelled {k}: a transport has it already, it is finished, or there is no such email"
                  for k in d["not_cancelled"]]
        return "\n".join(lines)

    emit(data, as_json, render)
    if data["not_cancelled"]:
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------- callbacks


@click.group()
def callbacks() -> None:
    """HTTP endpoints that receive signed status callbacks (Standard Webhooks)."""


@callbacks.command("add")
@click.argument("url")
@click.option("--events", help="Comma-separated event types (default: all), e.g. email.delivered,email.bounced.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def callbacks_add(url: str, events: str | None, as_json: bool) -> None:
    """Register an endpoint; prints its id and its signing secret (shown once; stored encrypted).

    Its host must resolve to public addresses only, unless CALLBACK_ALLOWED_NETWORKS allows the range."""
    from worker.callbacks.endpoints import add_endpoint, mask_endpoint_url
    from worker.infrastructure.db import session_scope

    wanted = [e.strip() for e in events.split(",") if e.strip()] if events else None
    try:
        with session_scope() as session:
            created = add_endpoint(session, url, wanted)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    emit({"id": created.id, "url": mask_endpoint_url(created.url), "secret": created.secret}, as_json,
         lambda d: f"endpoint {d['id']} {d['url']}\nsecret {d['secret']}\n"
                   "(store the secret now: it is not shown again)")


@callbacks.command("list")
@click.option("--dead", is_flag=True, help="List dead letters (deliveries that gave up) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def callbacks_list(dead: bool, as_json: bool) -> None:
    """Endpoints with their pending, delivered and dead deliveries (never their secrets; passwords in URLs
    masked)."""
    from sqlalchemy import func, select

    from worker.callbacks.dispatcher import dead_letters
    from worker.callbacks.endpoints import list_endpoints, mask_endpoint_url
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import CallbackDelivery

    if dead:
        letters = dead_letters()
        emit(letters, as_json, lambda rows: "\n".join(
            f"{r['event_id']} {r['type']} -> {r['kind']} {r['endpoint_id']}: {r['attempts']} attempt(s), "
            f"{r['last_error']}" for r in rows) or "no dead letters")
        return
    with session_scope() as session:
        counts = {(e, s): n for e, s, n in session.execute(
            select(CallbackDelivery.endpoint_id, CallbackDelivery.state, func.count())
            .where(CallbackDelivery.kind == "http")
            .group_by(CallbackDelivery.endpoint_id, CallbackDelivery.state)).all()}
        rows = [{"id": e.id, "url": mask_endpoint_url(e.url), "events": e.events or "all", "enabled": e.enabled,
                 "disabled_reason": e.disabled_reason, "rotating": e.previous_until is not None,
                 **{state: counts.get((e.id, state), 0) for state in ("pending", "delivered", "dead")}}
                for e in list_endpoints(session)]
    emit(rows, as_json, lambda rs: "\n".join(
        f"{r['id']} {r['url']} events={r['events'] if isinstance(r['events'], str) else ','.join(r['events'])} "
        f"{'enabled' if r['enabled'] else 'DISABLED (' + (r['disabled_reason'] or '') + ')'} "
        f"pending={r['pending']} delivered={r['delivered']} dead={r['dead']}" for r in rs) or "no endpoints")


@callbacks.command("remove")
@click.argument("endpoint_id", type=int)
@friendly_errors
def callbacks_remove(endpoint_id: int) -> None:
    """Remove an endpoint (its delivery history stays)."""
    from worker.callbacks.endpoints import remove_endpoint
    from worker.infrastructure.db import session_scope

    with session_scope() as session:
        if not remove_endpoint(session, endpoint_id):
            raise click.ClickException(f"no callback endpoint {endpoint_id}")
    click.echo(f"removed endpoint {endpoint_id}")


@callbacks.command("rotate")
@click.argument("endpoint_id", type=int)
@friendly_errors
def callbacks_rotate(endpoint_id: int) -> None:
    """New signing secret; the old one keeps signing (a second signature) for 24 hours."""
    from worker.callbacks.endpoints import rotate_secret
    from worker.infrastructure.db import session_scope

    try:
        with session_scope() as session:
            secret = rotate_secret(session, endpoint_id)
    except LookupError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"secret {secret}\n(requests carry both signatures for 24 hours)")


@callbacks.command("replay")
@click.option("--event", "event_ids", multiple=True, help="Event id (evt_...), repeatable.")
@click.option("--endpoint", "endpoint_id", type=int, help="Only to this endpoint (re-enables it if disabled).")
@click.option("--since", help="Events created since (ISO time or duration ago, e.g. 6h).")
@click.option("--until", help="Events created before (ISO time or duration ago).")
@friendly_errors
def callbacks_replay(event_ids: tuple[str, ...], endpoint_id: int | None, since: str | None,
                     until: str | None) -> None:
    """Deliver events again with their original webhook-id (receivers apply them idempotently)."""
    from worker.callbacks.dispatcher import replay

    try:
        count = replay(event_ids=list(event_ids) or None, endpoint_id=endpoint_id, since=parse_when(since),
                       until=parse_when(until))
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    except LookupError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} due now")
