"""enqueue_email refuses what a transport would refuse after the send began -- line breaks the MIME build splits on,
lone surrogates, a Content-Type with parameters -- and counts every stored part against the 50 MB limit. Each
refusal is one line naming the field, and nothing is stored or published."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import SEND_QUEUE
from worker import InvalidEmail, enqueue_email, get_email_status
from worker.api.validation import MAX_TOTAL_BYTES
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import Message

MB = 1024 * 1024


def _count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


BAD_CALLS = [
    # line breaks Python's email package splits on, beyond CR and LF
    ({"subject": "Line one\x0bline two"}, "subject", "line break character (U+000B)"),
    ({"subject": "page\x0cbreak"}, "subject", "(U+000C)"),
    ({"subject": "sep\x1crecord"}, "subject", "(U+001C)"),
    ({"subject": "next\x85line"}, "subject", "(U+0085)"),
    ({"subject": "para\u2029graph"}, "subject", "(U+2029)"),
    ({"headers": {"X-Tag": "a\u2028b"}}, "headers[X-Tag]", "(U+2028)"),
    ({"sender": "Support\x1d <support@example.org>"}, "sender", "(U+001D)"),
    ({"to": "Ann\x1e <ann@example.com>"}, "to", "(U+001E)"),
    ({"cc": ["Cc\x0b Person <cc@example.com>"]}, "cc", "(U+000B)"),
    ({"bcc": "Hidden\x85 <bcc@example.com>"}, "bcc", "(U+0085)"),
    ({"reply_to": "Reply\u2028 <r@example.com>"}, "reply_to", "(U+2028)"),
    ({"attachments": [("a\x0c.pdf", b"%PDF", "application/pdf")]}, "attachments[0].filename", "(U+000C)"),
    # lone surrogates: not encodable as UTF-8 (the database, MIME, JSON)
    ({"subject": "s\ud800"}, "subject", "lone surrogate (U+D800)"),
    ({"text_body": "body \udc00"}, "text_body", "lone surrogate (U+DC00)"),
    ({"html_body": "<p>\udfff</p>"}, "html_body", "lone surrogate (U+DFFF)"),
    ({"headers": {"X-Tag": "v\ud83d"}}, "headers[X-Tag]", "lone surrogate (U+D83D)"),
    ({"headers": {"X-\ud800": "v"}}, "headers", "invalid header name"),
    ({"template_id": "t-1", "template_data": {"name": "Al\ud800"}}, "template_data['name']", "lone surrogate"),
    ({"template_id": "t-1", "template_data": {"na\ud800me": "Al"}}, "template_data key 'na\\ud800me'",
     "lone surrogate"),
    ({"reference": "ticket\udc80"}, "reference", "lone surrogate (U+DC80)"),
    ({"idempotency_key": "key\udc80"}, "idempotency_key", "lone surrogate (U+DC80)"),
    ({"attachments": [("a\ud800.pdf", b"%PDF", "application/pdf")]}, "attachments[0].filename", "lone surrogate"),
    ({"sender": "Sup\ud800 <support@example.org>"}, "sender", "lone surrogate"),
    ({"to": ["Ann\udfff <ann@example.com>"]}, "to", "lone surrogate"),
    # JSON that SMTP2Go's request could not carry
    ({"template_id": "t-1", "template_data": {"total": float("nan")}}, "template_data['total']", "not a JSON number"),
    # MIME types go into Content-Type as they are
    ({"attachments": [("ok.pdf", b"%PDF", "application/pdf"), ("a.html", b"<p>", 'text/html; name="evil.exe"')]},
     "attachments[1].mimetype", "expected type/subtype"),
    # headers the MIME build allows only once
    ({"headers": {"Date": "Mon, 1 Jan 2024 00:00:00 +0000"}}, "headers[Date]", "set by mailworker"),
    ({"reply_to": "r@example.com", "headers": {"reply-to": "other@example.com"}}, "headers[reply-to]",
     "given together with reply_to"),
    # size and count
    ({"headers": {f"X-H{i}": "v" for i in range(10_000)}}, "headers", "10000 custom headers given; at most 100"),
    ({"template_id": "t-1", "template_data": {"blob": "x" * (60 * MB)}}, "template_data", "the limit is"),
    ({"headers": {"X-A": "a" * (26 * MB), "X-B": "b" * (26 * MB)}}, "headers", "the limit is"),
    ({"text_body": "t" * (20 * MB), "html_body": "h" * (31 * MB)}, "html_body", "the limit is"),
]


@pytest.mark.parametrize(("kwargs", "field", "problem"), BAD_CALLS)
def test_refused_with_one_line_naming_the_field_and_nothing_stored(db: str, redis_client: Any,
                                                                   kwargs: dict[str, Any], field: str,
                                                                   problem: str) -> None:
    call = {"to": "ok@example.com", "subject": "s", "text_body": "body", **kwargs}
    with pytest.raises(InvalidEmail) as info:
        enqueue_email(**call)
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}: ") and problem in message
    assert len(message.splitlines()) == 1 and len(message) < 300
    assert _count() == 0
    assert redis_client.llen(SEND_QUEUE) == 0


def test_size_counts_template_data_and_headers_not_only_bodies(db: str, redis_client: Any) -> None:
    with pytest.raises(InvalidEmail) as info:
        enqueue_email("ok@example.com", "s", template_id="t-1",
                      template_data={"rows": ["r" * MB] * 30}, headers={"X-Big": "h" * (21 * MB)})
    assert info.value.field == "template_data"
    assert f"the limit is {MAX_TOTAL_BYTES} bytes" in str(info.value)
    assert _count() == 0


def test_a_message_within_every_limit_is_stored_with_its_full_size(db: str, redis_client: Any) -> None:
    data = {"name": "Anna Müller", "items": [{"sku": "A-1", "qty": 2, "price": 9.5}], "vip": True, "note": None}
    headers = {f"X-H{i}": f"value {i}\ttabbed" for i in range(100)}
    tid = enqueue_email("Ann <ann@example.com>", "Ünïcödé ✓ subject", template_id="t-1", template_data=data,
                        headers=headers, attachments=[("r.pdf", b"%PDF-1.7" * 100, "application/pdf")])
    status = get_email_status(tid)
    assert status is not None and status["status"] == "queued"
    with session_scope() as session:
        row = session.get(Message, tid)
        assert row is not None
        assert row.template_data == data and row.headers == headers
        expected_at_least = len(json.dumps(data, ensure_ascii=False).encode()) + sum(
            len(k) + len(v) for k, v in headers.items()) + 4 * 800 // 3
        assert row.size_bytes >= expected_at_least
