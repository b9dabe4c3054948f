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


_ = parse_when  # used by replay below
