"""The operator CLI against a real MariaDB: stats, suppressions, help on every command."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner

from worker import enqueue_email
from worker.cli import main
from worker.sending.delivery import deliver
from worker.tracking.events import process_event


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_stats_reports_counts_and_rates(fake_api: Any, db: str, redis_client: Any) -> None:
    ids = [enqueue_email(f"u{i}@example.com", "s", text_body="b") for i in range(4)]
    for tid in ids:
        assert deliver(tid, owner="w").kind == "sent"
    first = fake_api.sends[0]["email_id"]
    process_event({"event": "delivered", "id": "d1", "email_id": first, "rcpt": "u0@example.com",
                   "time": "2026-11-20T09:14:05Z"})
    process_event({"event": "bounce", "id": "b1", "email_id": fake_api.sends[1]["email_id"],
                   "rcpt": "u1@example.com", "bounce": "hard", "time": "2026-11-20T09:14:05Z"})
    stats = _invoke("stats", "--json")
    assert stats["total"] == 4
    assert stats["by_status"]["sent"] == 2 and stats["by_status"]["delivered"] == 1
    assert stats["by_status"]["bounced"] == 1
    assert stats["by_transport"]["smtp2go"] == 4
    assert stats["delivery_rate"] == 0.25 and stats["bounce_rate"] == 0.25
    text = _invoke("stats", "--since", "1h")
    assert "total           4" in text and "delivery_rate   25.0%" in text
    future = _invoke("stats", "--since", "2999-01-01", "--json")
    assert future["total"] == 0


def test_suppressions_add_list_remove(db: str) -> None:
    assert "suppressed" in _invoke("suppressions", "add", "Bad@Example.com", "--reason", "manual")
    assert "already suppressed" in _invoke("suppressions", "add", "bad@example.com")
    rows = _invoke("suppressions", "list", "--json")
    assert [(r["address"], r["reason"]) for r in rows] == [("bad@example.com", "manual")]
    assert _invoke("suppressions", "list", "--search", "nomatch", "--json") == []
    assert "removed" in _invoke("suppressions", "remove", "bad@example.com")
    again = CliRunner().invoke(main, ["suppressions", "remove", "bad@example.com"])
    assert again.exit_code == 1 and "not on the suppression list" in again.output
    invalid = CliRunner().invoke(main, ["suppressions", "add", "not-an-address"])
    assert invalid.exit_code == 1 and "address" in invalid.output and "Traceback" not in invalid.output


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(_all_commands(cmd, (*prefix, name)))
    return out


@pytest.mark.parametrize("path", _all_commands(main))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "usage:" in result.output.lower()


def test_database_errors_are_one_line(base_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from worker.infrastructure.config import reset_settings

    base_env.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")  # never migrated
    reset_settings()
    result = CliRunner().invoke(main, ["stats"])
    assert result.exit_code == 1
    assert "mailworker db upgrade" in result.output and "Traceback" not in result.output
