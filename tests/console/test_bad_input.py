"""Hostile or damaged input answers 400 with a rendered error page naming what was wrong, never a 500."""

from __future__ import annotations

import base64

import pytest

from console_app.query import QueryError, decode_cursor, encode_cursor, parse
from tests.console.conftest import Console, make_message
from worker.infrastructure.models import MessageStatus


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("text, message", [
    ("after:999999999d", "out of range"),
    ("after:99999999999999999999999m", "out of range"),
    ("before:9999999w", "out of range"),
    ("after:0001-01-01T00:00+14:00", "out of range"),
    ("before:9999-12-31T23:59-14:00", "out of range"),
])
def test_dates_out_of_range_are_a_query_error(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=f"^{text.partition(':')[0]}: .*{message}"):
        parse(text)


def test_a_cursor_outside_the_calendar_is_damaged() -> None:
    for raw in ("0001-01-01T00:00:00+14:00|x", "9999-12-31T23:59:59-14:00|x"):
        with pytest.raises(QueryError, match="page link is damaged"):
            decode_cursor(_cursor(raw))
    assert decode_cursor(_cursor("2026-01-01T00:00:00+00:00|abc"))[1] == "abc"


def test_the_explicit_cases_from_the_review_answer_400(console: Console) -> None:
    make_message(MessageStatus.SENT)
    for q in ("after:999999999d", "after:0001-01-01T00:00+14:00"):
        answer = console.get("/messages", query_string={"q": q})
        assert answer.status_code == 400, q
        assert "out of range" in answer.text and "<h1>Messages</h1>" in answer.text  # the page, with its form
    damaged = console.get("/messages", query_string={"cursor": _cursor("0001-01-01T00:00:00+14:00|x")})
    assert damaged.status_code == 400 and "the page link is damaged" in damaged.text
    offset = console.get("/suppressions?offset=99999999999999999999999")
    assert offset.status_code == 400
    assert "offset" in offset.text and '<p class="notice bad">' in offset.text  # the rendered error page


NASTY_QUERIES = [
    "after:999999999d", "after:0001-01-01T00:00+14:00", "before:9999-12-31T23:59-14:00",
    "after:99999999999999999999999m", "before:99999999999999999999w", "after:1e400", "before:-1d",
    "after:2026-02-30", "after:+99999-01-01", "after:\x00", "to:\x00@example.com", "subject:\x00",
    "after:" + "9" * 5000 + "d", "id:" + "x" * 5000, "status:" + "," * 1000, '"' * 101,
    "after:9999-12-31T23:59:59.999999-00:01",
]
NASTY_CURSORS = [
    _cursor("0001-01-01T00:00:00+14:00|x"), _cursor("9999-12-31T23:59:59-14:00|x"), _cursor("2026-01-01|x"),
    _cursor("2026-01-01T00:00:00+00:00|"), _cursor("|"), _cursor("x" * 3000), "é", "%00", "====", "a",
    base64.urlsafe_b64encode(b"\xff\xfe|x").decode(), _cursor("2026-01-01T00:00:00+99:00|x"),
    _cursor("2026-01-01T00:00:00+00:00|" + "\x00" * 10),
]
NASTY_OFFSETS = ["9" * 5000, "99999999999999999999999", "9223372036854775808", "-1", "abc", "1e9", "", "0x10", "١٢"]


def test_nasty_inputs_never_answer_500(console: Console) -> None:
    make_message(MessageStatus.SENT)
    answers: list[tuple[str, int]] = []
    for q in NASTY_QUERIES:
        answers.append((f"q={q[:40]!r}", console.get("/messages", query_string={"q": q}).status_code))
    for cursor in NASTY_CURSORS:
        for direction in ("older", "newer", "sideways"):
            answer = console.get("/messages", query_string={"cursor": cursor, "dir": direction})
            answers.append((f"cursor={cursor[:40]!r} dir={direction}", answer.status_code))
    for offset in NASTY_OFFSETS:
        answer = console.get("/suppressions", query_string={"offset": offset})
        answers.append((f"offset={offset[:40]!r}", answer.status_code))
    for path in ("/messages/" + "x" * 3000, "/suppressions/release?address=%00", "/suppressions?q=%00%25_"):
        answers.append((path[:60], console.get(path).status_code))
    assert [a for a in answers if a[1] >= 500] == []
    assert all(code in (200, 400, 404) for _, code in answers), answers


@pytest.mark.parametrize("offset", ["99999999999999999999999", "-1", "abc", "1000000001"])
def test_a_bad_suppression_offset_is_400_naming_it(console: Console, offset: str) -> None:
    answer = console.get("/suppressions", query_string={"offset": offset})
    assert answer.status_code == 400
    assert "offset" in answer.text


def test_good_inputs_still_work(console: Console) -> None:
    tid = make_message(MessageStatus.SENT)
    assert tid in console.get("/messages", query_string={"q": "after:7d after:0001-01-02"}).text
    assert tid not in console.get("/messages", query_string={"q": "before:0001-01-02T00:00+00:00"}).text
    assert console.get("/suppressions", query_string={"offset": "100"}).status_code == 200
    when = parse("after:1d").after
    assert when is not None and decode_cursor(encode_cursor(when, tid)) == (when, tid)
