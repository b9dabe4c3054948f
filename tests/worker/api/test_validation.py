"""Address parsing and validation: pure logic, no services.

A field holding several addresses must become several recipients (never the first one only), and every address
is checked by email-validator and stored in the ASCII form the transports and webhooks use.
"""

from __future__ import annotations

import pytest

from worker.api.validation import (
    MAX_ADDRESSES_PER_FIELD,
    Address,
    format_address,
    parse_address,
    parse_address_list,
    split_addresses,
)
from worker.errors import InvalidEmail


def _addrs(raw: object) -> list[tuple[str, str | None]]:
    return [(a.address, a.name) for a in parse_address_list("to", raw)]


@pytest.mark.parametrize(("raw", "expected"), [
    ("a@example.com, b@example.com", [("a@example.com", None), ("b@example.com", None)]),
    ("a@example.com;b@example.org", [("a@example.com", None), ("b@example.org", None)]),
    ("a@example.com; b@example.org, c@example.net", [("a@example.com", None), ("b@example.org", None),
                                                      ("c@example.net", None)]),
    ("Alice <a@example.com>, Bob <b@example.net>", [("a@example.com", "Alice"), ("b@example.net", "Bob")]),
    ('"Doe, Jane" <jane@example.com>', [("jane@example.com", "Doe, Jane")]),
    ('"Doe; Jane" <jane@example.com>; x@example.com', [("jane@example.com", "Doe; Jane"),
                                                       ("x@example.com", None)]),
    (["a@example.com, b@example.com", "Carol <c@example.com>"],
     [("a@example.com", None), ("b@example.com", None), ("c@example.com", "Carol")]),
    ("a@example.com,", [("a@example.com", None)]),  # a trailing separator is not an address
])
def test_several_addresses_in_one_field_are_several_recipients(raw: object,
                                                               expected: list[tuple[str, str | None]]) -> None:
    assert _addrs(raw) == expected


def test_duplicates_dropped_case_insensitively_after_splitting() -> None:
    assert _addrs(["A@Example.com, b@example.com", "a@example.com; B@EXAMPLE.COM"]) == [
        ("A@example.com", None), ("b@example.com", None)]


def test_split_keeps_separators_inside_quotes_comments_and_brackets() -> None:
    assert split_addresses('"a, b; c" <x@example.com>, (note, here) y@example.com; <z@example.com>') == [
        '"a, b; c" <x@example.com>', "(note, here) y@example.com", "<z@example.com>"]
    assert split_addresses(r'"quote \" ,inside" <x@example.com>') == [r'"quote \" ,inside" <x@example.com>']
    assert split_addresses(" , ;") == []


def test_idn_domain_accepted_and_stored_idna_encoded_with_name_kept() -> None:
    assert parse_address("to", "anna@bücher.example") == Address("anna@xn--bcher-kva.example")
    assert parse_address("to", "Anna Müller <anna@BÜCHER.example>") == Address(
        "anna@xn--bcher-kva.example", "Anna Müller")


def test_smtputf8_local_part_refused_naming_the_field() -> None:
    with pytest.raises(InvalidEmail) as info:
        parse_address_list("cc", "ok@example.com, jürgen@example.com")
    assert info.value.field == "cc"
    assert str(info.value) == ("cc: 'jürgen@example.com' has a non-ASCII local part, which needs SMTPUTF8; "
                               "SMTP2Go and most relays do not support it")


@pytest.mark.parametrize("field", ["sender", "reply_to"])
@pytest.mark.parametrize("raw", ["a@example.com, b@example.com", "a@example.com; b@example.com",
                                 "Alice <a@example.com>, Bob <b@example.com>"])
def test_single_address_field_refuses_several(field: str, raw: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        parse_address(field, raw)
    assert info.value.field == field
    assert "holds 2 addresses; exactly one is allowed" in str(info.value)


def test_single_address_keeps_display_name() -> None:
    assert parse_address("sender", '"Support, EU" <support@example.org>') == Address(
        "support@example.org", "Support, EU")


@pytest.mark.parametrize("raw", [
    "not-an-address", "a@b", "bad@@example.com", "a..b@example.com", "x@localhost", "x@foo.test",
    "x@example.invalid", "a@example.com b@example.com", "a@example.com <b@example.com>", "a@example.com>",
    "Alice <a@example.com> trailing", '"Doe, Jane <j@example.com>', "", " , ", "Alice <>",
    "a@example.com\r\nBcc: victim@example.com", "a@exa\x00mple.com", "x" * 310 + "@example.com",
])
def test_invalid_addresses_refused_with_one_line_naming_the_field(raw: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        parse_address_list("bcc", ["ok@example.com", raw])
    assert info.value.field == "bcc"
    assert str(info.value).startswith("bcc: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("raw", [42, None, b"a@example.com"])
def test_non_string_items_refused(raw: object) -> None:
    with pytest.raises(InvalidEmail, match="expected an email address string") as info:
        parse_address_list("to", [raw])
    assert info.value.field == "to"


def test_cap_counts_addresses_after_splitting() -> None:
    many = ", ".join(f"u{i}@example.com" for i in range(MAX_ADDRESSES_PER_FIELD))
    assert len(parse_address_list("to", many)) == MAX_ADDRESSES_PER_FIELD
    with pytest.raises(InvalidEmail, match="at most 100") as info:
        parse_address_list("to", many + ", one-more@example.com")
    assert info.value.field == "to"
    # duplicates are not recipients, so they do not count against the cap
    assert len(parse_address_list("to", [many, "U0@example.com"])) == MAX_ADDRESSES_PER_FIELD


def test_documentation_domains_are_valid() -> None:
    assert _addrs("a@example.com, b@example.org, c@example.net, d@sub.example.com") == [
        ("a@example.com", None), ("b@example.org", None), ("c@example.net", None), ("d@sub.example.com", None)]


def test_required_and_empty() -> None:
    with pytest.raises(InvalidEmail, match="at least one recipient"):
        parse_address_list("to", [], required=True)
    assert parse_address_list("cc", None) == []


def test_format_address_round_trips_through_parsing() -> None:
    formatted = format_address("jane@example.com", "Doe, Jane")
    assert formatted == '"Doe, Jane" <jane@example.com>'
    assert parse_address("to", formatted) == Address("jane@example.com", "Doe, Jane")
    assert Address("a@example.com").formatted == "a@example.com"
