"""``mailworker bulk FILE.csv`` on real MariaDB and Redis: a dry run reports each bad row by line number with the
column or flag at fault and stores nothing; a run enqueues one bulk email per row (send_batch tasks on the bulk
queue), filled from the row's columns; a second run on the same file stores and publishes nothing new."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker import app, get_email_status
from worker.cli import main
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message


def _stored() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def _batched(redis_client: Any) -> list[str]:
    """Every tracking id in the send_batch tasks waiting on the bulk queue."""
    ids = []
    for raw in redis_client.lrange(app.conf.bulk_queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "mailworker.send_batch"
        ids.extend(json.loads(base64.b64decode(message["body"]))[0][0])
    return ids


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


GOOD = 'email,name,plan\nann@example.com,Ann,gold\n"Bob <bob@example.com>","Bob, Jr.",silver\ncy@example.com,Cy,\n'


def test_dry_run_reports_bad_rows_by_line_and_stores_nothing(db: str, redis_client: Any, tmp_path: Path) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text('email,name\nann@example.com,Ann\nnot-an-address,Bob\n"multi\nline",x\n,Empty\n'
                        'cy@example.com,"Cy\x1b[2J"\n')
    result = _run("bulk", str(csv_file), "--subject", "Hi {name}", "--text", "Hello {name}", "--dry-run")
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("line 3: email: 'not-an-address' is not a valid address")
    assert lines[1].startswith("line 4: email: ")  # the row starting on line 4 (its value spans two lines)
    assert lines[2].startswith("line 6: email: ")
    assert any("3 bad row(s) of 5" in line and "nothing stored" in line for line in lines)
    assert "\x1b" not in result.stderr
    assert _stored() == 0 and redis_client.llen(app.conf.bulk_queue) == 0

    ok = tmp_path / "ok.csv"
    ok.write_text(GOOD)
    result = _run("bulk", str(ok), "--subject", "Hi {name}", "--text", "Hello {name}", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "3 row(s) OK; nothing stored" in result.stdout
    assert _stored() == 0 and redis_client.llen(app.conf.bulk_queue) == 0


def test_a_missing_column_is_one_clear_error(db: str, redis_client: Any, tmp_path: Path) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(GOOD)
    result = _run("bulk", str(csv_file), "--subject", "Hi {first_name}", "--text", "x")
    assert result.exit_code == 2
    assert "--subject: no column 'first_name'" in result.stderr and "'name'" in result.stderr
    no_email = tmp_path / "noemail.csv"
    no_email.write_text("address,name\na@example.com,A\n")
    result = _run("bulk", str(no_email), "--subject", "s", "--text", "x")
    assert result.exit_code == 2 and "no 'email' column" in result.stderr
    assert _stored() == 0


def test_enqueue_then_run_again_sends_nothing_twice(db: str, redis_client: Any, tmp_path: Path,
                                                   base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("BULK_BATCH_SIZE", "2")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(GOOD)
    args = ("bulk", str(csv_file), "--subject", "Hi {name}", "--text", "Your plan: {plan}", "--list", "customers",
            "--json")
    result = _run(*args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["enqueued"], report["already"], report["rows"]) == (3, 0, 3)
    assert "enqueueing" in result.stderr  # the progress bar, on stderr
    ids = report["ids"]
    first = get_email_status(ids[1])
    assert first is not None
    assert (first["subject"], first["lane"], first["list_id"]) == ("Hi Bob, Jr.", "bulk", "customers")
    assert first["recipients"][0]["address"] == "bob@example.com"
    assert sorted(_batched(redis_client)) == sorted(ids)
    assert redis_client.llen(app.conf.bulk_queue) == 2  # 3 emails in send_batch chunks of 2

    again = _run(*args)
    assert again.exit_code == 0, again.stderr
    report2 = json.loads(again.stdout)
    assert (report2["enqueued"], report2["already"]) == (0, 3) and report2["ids"] == ids
    assert _stored() == 3 and redis_client.llen(app.conf.bulk_queue) == 2
    plain = _run(*args[:-1])
    assert "enqueued 0, already there 3 (3 row(s))" in plain.stdout


def test_template_rows_and_the_files_own_idempotency_keys(db: str, redis_client: Any, tmp_path: Path) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("idempotency_key,email,name\nk-1,ann@example.com,Ann\nk-2,bob@example.com,Bob\n")
    result = _run("bulk", str(csv_file), "--template-id", "tpl-1", "--json")
    assert result.exit_code == 0, result.stderr
    ids = json.loads(result.stdout)["ids"]
    status = get_email_status(ids[0])
    assert status is not None
    with session_scope() as session:
        row = session.get(Message, ids[0])
        assert row is not None
        assert (row.template_id, row.template_data, row.idempotency_key) == ("tpl-1", {"name": "Ann"}, "k-1")
    # another file (other content, so another hash) with the same keys: the keys decide, nothing new
    csv_file.write_text("idempotency_key,email,name\nk-1,ann@example.com,Ann\nk-2,bob@example.com,Robert\n")
    result = _run("bulk", str(csv_file), "--template-id", "tpl-1", "--json")
    assert json.loads(result.stdout)["ids"] == ids and _stored() == 2
