"""The CLI never hands a terminal the control characters that remote text carries.

A bounce's text comes from whichever mail server refused the message; an ESC sequence in it could retitle the
operator's terminal (OSC 0), erase the screen (CSI 2J) or, through a one-byte C1 CSI (0x9b), do the same on
terminals that honour 8-bit controls. The CLI is run with ``color=True`` so click passes text as a terminal
would receive it (without it click strips some ANSI sequences itself and the test would prove nothing).
"""

from __future__ import annotations

import json
import re
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from worker import enqueue_email
from worker.cli import main
from worker.cli.common import emit, one_line, printable
from worker.sending.delivery import deliver
from worker.tracking.events import process_event

#: Every control a terminal acts on: C0 but newline and tab, DEL, C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HOSTILE = "550 mailbox \x1b]0;pwned\x07gone\x1b[2J now\x9b6n end\x7f\r"


def _run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args), color=True)
    assert result.exit_code == 0, result.output
    return result


def _no_controls(text: str) -> None:
    found = _CONTROL.findall(text)
    assert not found, f"control characters reach the terminal: {found!r} in {text!r}"


def test_printable_keeps_newline_tab_and_text_and_drops_every_other_control() -> None:
    assert printable("a\tb\nc") == "a\tb\nc"
    assert printable("x\x1b]0;pwned\x07y\x1b[2Jz\x9bq\x7fé€") == "x]0;pwnedy[2Jzqé€"
    assert printable("".join(map(chr, range(0x20)))) == "\t\n"
    assert printable("".join(map(chr, range(0x7f, 0xa0)))) == ""
    assert one_line("a\x1b\n b") == "a b"


def test_status_strips_controls_from_bounce_text_subject_and_reference(fake_api: Any, sqlite_db: str,
                                                                      redis_client: Any) -> None:
    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Message

    tid = enqueue_email("victim@example.com", "hello", text_body="b")
    with session_scope() as session:  # as stored text may read after any path that wrote it
        session.execute(update(Message).where(Message.id == tid).values(
            subject="Invoice \x1b]52;c;ZWNobyBwd25lZA==\x07 due", reference="ref-\x9b2J-7"))
    assert deliver(tid, owner="w").kind == "sent"
    process_event({"event": "bounce", "id": "b1", "email_id": fake_api.sends[0]["email_id"],
                   "rcpt": "victim@example.com", "bounce": "hard", "message": HOSTILE,
                   "time": "2026-11-20T09:14:05Z"})

    text = _run("status", tid).output
    _no_controls(text)
    assert "550 mailbox ]0;pwnedgone[2J now6n end" in text  # the readable text stays
    assert "Invoice ]52;c;ZWNobyBwd25lZA== due" in text and "ref-2J-7" in text
    assert "bounced" in text

    raw = _run("status", tid, "--json").output  # JSON escapes controls itself: still no raw byte
    _no_controls(raw.replace("\n", ""))
    data = json.loads(raw)
    assert "\x1b]0;pwned\x07" in data["recipients"][0]["error"]  # the data is exact, only its encoding is safe
    assert data["subject"].startswith("Invoice \x1b]52;")


def test_suppressions_list_strips_controls_from_stored_reason(sqlite_db: str) -> None:
    from worker.infrastructure.db import session_scope
    from worker.tracking.suppressions import add_suppression

    with session_scope() as session:
        add_suppression(session, "x@example.com", "sync\x1b[2J\x9bx")
    text = _run("suppressions", "list").output
    _no_controls(text)
    assert "x@example.com" in text and "sync[2Jx" in text


def test_error_messages_strip_controls(sqlite_db: str) -> None:
    result = CliRunner().invoke(main, ["suppressions", "remove", "a\x1b]0;t\x07@example.com"], color=True)
    assert result.exit_code == 1
    _no_controls(result.output)
    assert "a]0;t@example.com" in result.output


@pytest.mark.parametrize("char", ["\x1b", "\x7f", "\x9b", "\x00"])
def test_json_output_escapes_controls(char: str) -> None:
    @click.command()
    def show() -> None:
        emit({"detail": f"a{char}b"}, True, str)

    out = CliRunner().invoke(show, [], color=True).output
    _no_controls(out.replace("\n", ""))
    assert json.loads(out) == {"detail": f"a{char}b"}
