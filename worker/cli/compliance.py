"""Compliance commands: ``erase ADDRESS`` and ``suppressions sync`` (attached to the ``mailworker`` group)."""

from __future__ import annotations

from typing import Any

import click

from worker.cli.common import emit, friendly_errors, use_stack


def register(main: click.Group) -> None:
    from worker.cli.ops import suppressions

    main.add_command(erase)
    suppressions.add_command(suppressions_sync)


@click.command()
@click.argument("address")
@click.option("--reason", default="erasure request", show_default=True, help="Why (kept in the audit log).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def erase(address: str, reason: str, yes: bool, as_json: bool) -> None:
    """Erase ADDRESS: its messages' content, its recipient rows, events and callback payloads, audit text.

    Rows that count (messages, recipients, events) stay with a keyed hash in place of the address, so stats do
    not change; a suppression of the address stays, as the hash. Needs UNSUBSCRIBE_SECRET.
    """
    from worker.compliance.erasure import erase as run_erase
    from worker.tracking.suppressions import validate_address

    validate_address(address)
    if not yes and not as_json:
        click.confirm(f"Erase everything stored about {address}? This cannot be undone", abort=True)
    use_stack()
    report = run_erase(address, actor="cli", reason=reason)
    emit(report.as_dict(), as_json, lambda r: f"erased (now {r['address_hash']}): {report.describe()}")


@click.command("sync")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def suppressions_sync(as_json: bool) -> None:
    """Pull SMTP2Go's suppression list into ours and push our global suppressions there, now."""
    from worker.compliance.sync import sync

    use_stack()
    report = sync()

    def render(data: dict[str, Any]) -> str:
        lines = [f"state: {data['state']}" + (f" ({data['note']})" if data["note"] else "")]
        lines.append(f"pulled from SMTP2Go: {len(data['pulled'])}")
        lines += [f"  + {a}" for a in data["pulled"]]
        lines.append(f"pushed to SMTP2Go: {len(data['pushed'])}")
        lines += [f"  > {a}" for a in data["pushed"]]
        return "\n".join(lines)

    emit(report.as_dict(), as_json, render)
    if report.state in {"permission_denied", "failed"}:
        raise SystemExit(1)
