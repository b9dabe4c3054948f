"""The header rules enqueue_email validates with are the transports' own: a value accepted here builds into a MIME
message for the relay, and a refused one would not have. Pure logic, no services."""

from __future__ import annotations

from typing import Any

import pytest

from worker.api.validation import (
    LINE_BREAKS,
    check_attachments,
    check_headers,
    check_optional_str,
    check_template_data,
    parse_address,
    parse_address_list,
)
from worker.errors import InvalidEmail
from worker.providers.base import OutgoingAttachment, OutgoingEmail
from worker.providers.smtp.transport import prepare


def _email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        tracking_id="6a1f0f5e-0000-4000-8000-000000000009", sender="Support <support@example.org>",
        to=["Alice <alice@example.com>"], cc=[], bcc=[], subject="Hi", text_body="text", html_body=None,
        reply_to=None, headers={}, attachments=[], template_id=None, template_data=None,
        message_id_header="<m9@example.org>")
    fields.update(overrides)
    return OutgoingEmail(**fields)


def test_line_breaks_are_exactly_what_splitlines_splits_on() -> None:
    splits = {chr(c) for c in range(0x110000) if len(("a" + chr(c) + "b").splitlines()) > 1}
    assert set(LINE_BREAKS) == splits


@pytest.mark.parametrize("ch", list(LINE_BREAKS))
def test_each_refused_line_break_is_one_the_mime_build_refuses(ch: str) -> None:
    """The rule is not stricter than the transport: every character refused at enqueue breaks the relay's build."""
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        prepare(_email(subject=f"Line one{ch}line two"))


def _checks(value: str) -> list[tuple[str, Any]]:
    """(expected field, call) for every place a header value comes from."""
    return [
        ("subject", lambda: check_optional_str("subject", value, max_len=998)),
        ("template_id", lambda: check_optional_str("template_id", value)),
        ("headers[X-Tag]", lambda: check_headers({"X-Tag": value})),
        ("sender", lambda: parse_address("sender", f"Bob {value} <bob@example.com>")),
        ("reply_to", lambda: parse_address("reply_to", f"Bob {value} <bob@example.com>")),
        ("to", lambda: parse_address_list("to", [f"Ann {value} <ann@example.com>"])),
        ("cc", lambda: parse_address_list("cc", f"Ann {value} <ann@example.com>")),
        ("bcc", lambda: parse_address_list("bcc", f"Ann {value} <ann@example.com>")),
        ("attachments[0].filename", lambda: check_attachments([(f"a{value}.pdf", b"%PDF", "application/pdf")])),
    ]


@pytest.mark.parametrize("ch", [*LINE_BREAKS, "\x00"])
def test_every_header_field_refuses_every_line_break_and_nul_naming_the_field(ch: str) -> None:
    for field, call in _checks(f"one{ch}two"):
        with pytest.raises(InvalidEmail) as info:
            call()
        assert info.value.field == field
        message = str(info.value)
        assert message.startswith(f"{field}: contains a ") and f"(U+{ord(ch):04X})" in message
        assert len(message.splitlines()) == 1


@pytest.mark.parametrize("ch", ["\ud800", "\udfff", "\udc80"])
def test_every_header_field_refuses_a_lone_surrogate(ch: str) -> None:
    for field, call in _checks(f"one{ch}two"):
        with pytest.raises(InvalidEmail) as info:
            call()
        assert info.value.field == field
        assert f"lone surrogate (U+{ord(ch):04X})" in str(info.value)


def test_header_values_the_rule_accepts_build_for_the_relay() -> None:
    """Tabs, other control characters and non-ASCII text are no line breaks: accepted, and the MIME build agrees."""
    value = "tab\there \x01\x1f\x7f ünïcödé ✓ 😀"
    check_optional_str("subject", value, max_len=998)
    check_headers({"X-Tag": value})
    check_attachments([(f"{value}.pdf", b"%PDF", "application/pdf")])
    built = prepare(_email(subject=value, headers={"X-Tag": value},
                           attachments=[OutgoingAttachment(f"{value}.pdf", b"%PDF", "application/pdf")]))
    assert built.payload.endswith(b"\r\n.\r\n")


@pytest.mark.parametrize("name", ["X-Tag\n", "X-Tag\r\n", "X Tag", "X-Tag:", "X-\ud800", ""])
def test_header_names_are_checked_whole(name: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        check_headers({name: "v"})
    assert info.value.field == "headers" and "invalid header name" in str(info.value)


@pytest.mark.parametrize("name", ["Date", "message-id", "Message-ID"])
def test_headers_mailworker_sets_itself_are_refused(name: str) -> None:
    """Date and Message-ID are always on the message: a second one is refused by the MIME build."""
    with pytest.raises(InvalidEmail) as info:
        check_headers({name: "x"})
    assert info.value.field == f"headers[{name}]" and "set by mailworker" in str(info.value)
    with pytest.raises(ValueError, match="at most 1"):
        prepare(_email(headers={name: "x"}))


def test_a_header_a_message_carries_once_is_refused_in_two_spellings() -> None:
    with pytest.raises(InvalidEmail) as info:
        check_headers({"Sender": "a@example.com", "sender": "b@example.com"})
    assert str(info.value) == ("headers[sender]: the same header as headers[Sender], which a message may carry "
                               "only once")
    # headers that may repeat are left alone
    assert check_headers({"X-Tag": "a", "x-tag": "b"}) == {"X-Tag": "a", "x-tag": "b"}


def test_custom_headers_are_capped_at_100() -> None:
    assert len(check_headers({f"X-H{i}": "v" for i in range(100)})) == 100
    with pytest.raises(InvalidEmail) as info:
        check_headers({f"X-H{i}": "v" for i in range(101)})
    assert str(info.value) == "headers: 101 custom headers given; at most 100 allowed"


@pytest.mark.parametrize("mimetype", ['text/html; name="evil.exe"', "text/html;charset=utf-8", "text/plain\n",
                                      "text/", "/html", "text/html/x", "text /html", "tëxt/plain", "text/*",
                                      "text/plain\r\nX-Evil: 1", "", "application"])
def test_attachment_mimetype_is_type_slash_subtype_only(mimetype: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        check_attachments([("a.html", b"<p>", mimetype)])
    assert info.value.field == "attachments[0].mimetype"
    assert "expected type/subtype" in str(info.value) and len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("mimetype", ["application/pdf", "text/plain", "image/svg+xml", "application/vnd.ms-excel",
                                      "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                                      "application/x-7z-compressed", "message/rfc822"])
def test_real_mimetypes_are_accepted(mimetype: str) -> None:
    assert check_attachments([("f", b"x", mimetype)]) == [("f", b"x", mimetype)]


@pytest.mark.parametrize(("data", "field", "problem"), [
    ({"name": "A\ud800"}, "template_data['name']", "lone surrogate (U+D800)"),
    ({"a": {"b\udfff": 1}}, "template_data['a'] key 'b\\udfff'", "lone surrogate (U+DFFF)"),
    ({"items": [1, "ok", ["\udc00"]]}, "template_data['items'][2][0]", "lone surrogate (U+DC00)"),
    ({"n": float("nan")}, "template_data['n']", "nan is not a JSON number"),
    ({"n": float("inf")}, "template_data['n']", "inf is not a JSON number"),
    ({"when": {1, 2}}, "template_data['when']", "a set is not a JSON value"),
    ({1: "x"}, "template_data", "key 1 is a int; JSON object keys are strings"),
])
def test_template_data_must_be_json_without_surrogates(data: dict[Any, Any], field: str, problem: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        check_template_data(data)
    assert info.value.field == field
    assert problem in str(info.value)


def test_template_data_cycle_is_refused_not_a_crash() -> None:
    data: dict[str, Any] = {}
    data["self"] = data
    with pytest.raises(InvalidEmail, match="nested deeper than 64 levels"):
        check_template_data(data)


def test_reference_and_idempotency_key_refuse_surrogates_but_not_line_breaks() -> None:
    for field in ("reference", "idempotency_key"):
        with pytest.raises(InvalidEmail) as info:
            check_optional_str(field, "ref\ud800", header=False)
        assert info.value.field == field
        assert check_optional_str(field, "line\x0bbreak", header=False) == "line\x0bbreak"
