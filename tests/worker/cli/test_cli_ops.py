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


# ------------------------------------------------------------------------ module set: secrets without argv

API_SECRET = "api-FROM0STDIN0123456789"


@pytest.fixture
def module_db(sqlite_db: str, base_env: pytest.MonkeyPatch) -> str:
    from worker.infrastructure.config import reset_settings
    from worker.infrastructure.crypto import generate_key

    base_env.setenv("SETTINGS_ENCRYPTION_KEY", generate_key())
    reset_settings()
    return sqlite_db


def _stored() -> Any:
    from worker.infrastructure.config import get_settings
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.modules import smtp2go_config

    with session_scope() as session:
        return smtp2go_config(session, get_settings())


def test_module_set_reads_a_secret_from_stdin(module_db: str) -> None:
    result = CliRunner().invoke(main, ["module", "set", "smtp2go", "api_key=-", "track_opens=true"],
                                input=API_SECRET + "\n")
    assert result.exit_code == 0, result.output
    assert "updated api_key, track_opens" in result.stdout and result.stderr == ""
    assert API_SECRET not in result.output
    cfg = _stored()
    assert cfg.api_key == API_SECRET and cfg.options["track_opens"] is True


def test_module_set_prompts_with_hidden_input_for_a_bare_key(module_db: str) -> None:
    result = CliRunner().invoke(main, ["module", "set", "smtp2go", "webhook_secret", "api_url=http://x/v3"],
                                input="hook-secret-42\n")
    assert result.exit_code == 0, result.output
    assert "webhook_secret" in result.stderr  # the prompt
    assert "hook-secret-42" not in result.output  # not echoed
    cfg = _stored()
    assert cfg.webhook_secrets == ("hook-secret-42",) and cfg.api_url == "http://x/v3"


def test_module_set_warns_when_a_secret_is_in_argv(module_db: str) -> None:
    result = CliRunner().invoke(main, ["module", "set", "smtp2go", f"api_key={API_SECRET}", "fastaccept=true"])
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: api_key given on the command line")
    assert "api_key=-" in warning[0] and API_SECRET not in result.stderr
    assert _stored().api_key == API_SECRET
    quiet = CliRunner().invoke(main, ["module", "set", "smtp2go", "api_url=http://y/v3", "api_key="])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # non-secrets, and removing a key, say nothing
    assert _stored().api_key is None


@pytest.mark.parametrize(("args", "stdin", "expected"), [
    (["api_key=-"], "", "api_key=-: nothing to read on stdin"),
    (["api_key=-", "webhook_secret=-"], "x", "only one KEY=- can read stdin"),
    (["apikey"], "never-read", "unknown setting(s) apikey"),
    (["=x"], "", "unknown setting(s)"),
])
def test_module_set_mistakes_are_one_line(module_db: str, args: list[str], stdin: str, expected: str) -> None:
    result = CliRunner().invoke(main, ["module", "set", "smtp2go", *args], input=stdin)
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output
    assert "never-read" not in result.output
