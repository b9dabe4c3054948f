"""Turning a webhook body into event dicts, strictly: anything odd is a 400 or 415, never a 500.

SMTP2Go's default output format is ``application/x-www-form-urlencoded`` (one flat event per request); the
JSON format sends one object, and our own tools may send a list. Field names are kept exactly as sent
(``user-agent``; ``Message-Id`` and ``message-id`` stay distinct) because event processing relies on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
_UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}
#: Form fields that are lists by nature: one recipient must still arrive as a one-element list.
_LIST_FIELDS = {"recipients"}


class UnsupportedContentType(Exception):
    """The body is neither JSON nor a form (answer 415)."""


class MalformedBody(Exception):
    """The body cannot be decoded or is not an event or a list of events (answer 400)."""


def _reject_constant(name: str) -> Any:
    raise MalformedBody(f"invalid JSON constant {name}")


#: One decoder for every request: ``json.loads(text, parse_constant=...)`` builds a new ``JSONDecoder`` (and its
#: scanner) per call. Threads share it exactly as they share the stdlib's own default decoder behind
#: ``json.loads(text)``; it holds only its options.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
#: The only way a surrogate code point gets into a decoded value: a ``\uD800``-``\uDFFF`` escape (the body was
#: decoded as strict UTF-8, which refuses encoded surrogates). JSON escapes are always lowercase ``\u``.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(body: bytes) -> list[Any]:
    """One event object or a list of them -> a list of items (items are validated later)."""
    try:
        text = body.decode("utf-8-sig")
        value = _DECODER.decode(text)
    except MalformedBody:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError covers JSONDecodeError and integers too long to convert.
        raise MalformedBody("malformed JSON") from err
    # A lone \ud800 escape is valid JSON but not storable text: refuse it now, not in the database. Encoding the
    # whole value again costs as much as decoding it, so only bodies with a surrogate escape pay for the check
    # (a valid pair, or an escaped backslash before "ud800", passes it).
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise MalformedBody("JSON contains unpaired surrogates") from err
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    raise MalformedBody("JSON body must be an event object or a list of events")


def parse_form(body: bytes) -> list[Any]:
    """A form body -> one flat event dict.

    A key sent once maps to its string; a repeated key (or ``key[]``) maps to the list of its values in order,
    so ``recipients=a&recipients=b`` keeps both recipients instead of silently keeping one.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedBody("form body is not UTF-8") from err
    values: dict[str, list[str]] = {}
    forced_lists: set[str] = set()
    for field in text.rstrip("\r\n").split("&"):
        if not field:
            continue
        raw_key, sep, raw_value = field.partition("=")
        if not sep:
            raise MalformedBody("malformed form field")
        try:
            key = unquote_plus(raw_key, errors="strict")
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError as err:
            raise MalformedBody("form field is not UTF-8") from err
        if not key:
            raise MalformedBody("malformed form field")
        if key.endswith("[]") and len(key) > 2:
            key = key[:-2]
            forced_lists.add(key)
        values.setdefault(key, []).append(value)
    event: dict[str, Any] = {}
    for key, items in values.items():
        if len(items) > 1 or key in forced_lists or key in _LIST_FIELDS:
            event[key] = items
        else:
            event[key] = items[0]
    return [event]


def parse_body(mimetype: str, params: Mapping[str, str], body: bytes) -> list[Any]:
    """Dispatch on the content type; raise :class:`UnsupportedContentType` or :class:`MalformedBody`."""
    mimetype = mimetype.lower()
    if mimetype not in {JSON_TYPE, FORM_TYPE}:
        raise UnsupportedContentType(mimetype or "missing")
    charset = params.get("charset", "").strip().lower()
    if charset and charset not in _UTF8_CHARSETS:
        raise UnsupportedContentType(f"{mimetype}; charset={charset}")
    if mimetype == JSON_TYPE:
        return parse_json(body)
    return parse_form(body)


def split_events(items: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """Keep the items that look like events; count the rest as ignored.

    An item is an event when it is an object carrying ``event`` or ``email_id``; anything else cannot be
    linked or classified, so it is acknowledged (SMTP2Go must not retry it forever) but not processed.
    """
    events = [item for item in items if isinstance(item, dict) and ("event" in item or "email_id" in item)]
    return events, len(items) - len(events)
