"""The search grammar (unit layer: parsing only) and keyset cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from console_app.query import QueryError, decode_cursor, encode_cursor, parse


def test_every_term_of_the_grammar() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    q = parse('to:Alice@Example.com status:failed,held reference:ticket_reply:42 id:abc email_id:em-1 '
              'subject:"password reset" after:24h before:2026-11-26T09:30 welcome', now)
    assert q.to == ["Alice@Example.com"]
    assert q.statuses == ["failed", "held"]
    assert q.reference == "ticket_reply:42"  # only the first colon separates the key
    assert q.ids == ["abc"] and q.email_id == "em-1"
    assert q.subject == ["password reset"]
    assert q.after == now - timedelta(hours=24)
    assert q.before == datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    assert q.free == ["welcome"]


@pytest.mark.parametrize("text, message", [
    ("status:lost", "not a status"),
    ("after:yesterday", "not a date"),
    ("to:", "needs a value"),
])
def test_mistakes_name_the_term(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse(text)


def test_unknown_keys_and_unbalanced_quotes_are_free_text() -> None:
    assert parse("foo:bar").free == ["foo:bar"]
    assert parse('subject:"half').subject == ['"half']


def test_cursor_round_trip_and_damage() -> None:
    when = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "id-1")) == (when, "id-1")
    with pytest.raises(QueryError):
        decode_cursor("garbage!")
