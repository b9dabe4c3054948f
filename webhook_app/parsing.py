"""Turning a webhook body into event dicts, strictly: anything odd is a 400, 413 or 415, never a 500.

SMTP2Go's default output format is ``application/x-www-form-urlencoded`` (one flat event per request); the
JSON format sends one object, and our own tools may send a list. Field names are kept exactly as sent
(``user-agent``; ``Message-Id`` and ``message-id`` stay distinct) because event processing relies on them.

Some SMTP2Go deliveries carry no content type, or ``text/plain`` / ``application/octet-stream``, and some come
as ``multipart/form-data``. Answering those with 415 would lose the events for good once SMTP2Go's retry window
closes, so a body under any other content type is accepted when it is a JSON event or list (and only then:
anything else stays a 415), and multipart forms are read like urlencoded ones. Only a declared JSON, form or
multipart type makes a body that fails to parse a 400: without a declaration we cannot call it malformed.

This module is HTTP only (content types, charsets, form and multipart encodings). What SMTP2Go's fields mean --
which are lists by nature, what makes an item an event -- is the provider's webhook module's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from worker.providers.smtp2go.webhooks import FORM_LIST_FIELDS, is_event

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
#: Most parts one multipart body may have. An SMTP2Go event has a few dozen fields; the cap keeps a body of
#: thousands of empty parts (cheap to send, each one a header parse) from costing more than a real event.
MAX_FORM_PARTS = 1000
_MULTIPART_CHUNK = 64 * 1024
_UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}


class UnsupportedContentType(Exception):
    """The body is neither JSON nor a form (answer 415)."""


class MalformedBody(Exception):
    """The body cannot be decoded or is not an event or a list of events (answer 400)."""


class BodyTooLarge(Exception):
    """A multipart body over the size or part limit (answer 413, like any other oversized body)."""


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


def _collect(pairs: list[tuple[str, str]]) -> list[Any]:
    """Form fields in order -> one flat event dict (the same rule for urlencoded and multipart bodies).

    A key sent once maps to its string; a repeated key (or ``key[]``) maps to the list of its values in order,
    so ``recipients=a&recipients=b`` keeps both recipients instead of silently keeping one.
    """
    values: dict[str, list[str]] = {}
    forced_lists: set[str] = set()
    for key, value in pairs:
        if not key:
            raise MalformedBody("malformed form field")
        if key.endswith("[]") and len(key) > 2:
            key = key[:-2]
            forced_lists.add(key)
        values.setdefault(key, []).append(value)
    event: dict[str, Any] = {}
    for key, items in values.items():
        if len(items) > 1 or key in forced_lists or key in FORM_LIST_FIELDS:
            event[key] = items
        else:
            event[key] = items[0]
    return [event]


def parse_form(body: bytes) -> list[Any]:
    """A urlencoded form body -> one flat event dict (see :func:`_collect` for repeated keys)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedBody("form body is not UTF-8") from err
    pairs: list[tuple[str, str]] = []
    for field in text.rstrip("\r\n").split("&"):
        if not field:
            continue
        raw_key, sep, raw_value = field.partition("=")
        if not sep:
            raise MalformedBody("malformed form field")
        try:
            pairs.append((unquote_plus(raw_key, errors="strict"), unquote_plus(raw_value, errors="strict")))
        except UnicodeDecodeError as err:
            raise MalformedBody("form field is not UTF-8") from err
    return _collect(pairs)


def _part_text(headers: Headers, data: bytes) -> str:
    """One part's value as text: strict UTF-8 (a part may declare a charset; only UTF-8 and ASCII are read).

    Werkzeug's own form parser decodes with ``errors="replace"``, which would store mangled addresses without
    a word; a field we cannot read exactly is refused instead, like a bad byte in a urlencoded body.
    """
    charset = parse_options_header(headers.get("content-type"))[1].get("charset", "").strip().lower()
    if charset and charset not in _UTF8_CHARSETS:
        raise UnsupportedContentType(f"multipart part charset={charset}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedBody("form field is not UTF-8") from err


def parse_multipart(body: bytes, boundary: str | None, max_bytes: int) -> list[Any]:
    """A ``multipart/form-data`` body -> one flat event dict, read like a urlencoded form.

    Werkzeug's sans-IO decoder over the body the view has already read (and size-checked), so nothing here
    reads the request stream again; it is still bounded by ``max_bytes`` (the receiver's body cap) and by
    :data:`MAX_FORM_PARTS`. Fields come out in body order, so repeated keys keep their order. A part with a
    filename (what ``requests`` makes of ``files={"k": ("name", b"v")}``) is one more field: its content is the
    value, nothing is dropped for how the client chose to encode it.
    """
    if not boundary:
        raise MalformedBody("multipart body without a boundary")
    try:
        decoder = MultipartDecoder(boundary.encode("latin-1"), max_form_memory_size=max_bytes,
                                   max_parts=MAX_FORM_PARTS)
    except UnicodeEncodeError as err:
        raise MalformedBody("multipart boundary is not ASCII") from err
    pairs: list[tuple[str, str]] = []
    name: str | None = None
    headers = Headers()
    chunks: list[bytes] = []
    try:
        for start in [*range(0, len(body), _MULTIPART_CHUNK), None]:
            decoder.receive_data(None if start is None else body[start:start + _MULTIPART_CHUNK])
            event = decoder.next_event()
            while not isinstance(event, NeedData | Epilogue):
                if isinstance(event, Field | File):
                    name, headers, chunks = event.name, event.headers, []
                elif isinstance(event, Data):
                    chunks.append(event.data)
                    if not event.more_data:
                        if name is None:
                            raise MalformedBody("multipart part without a name")
                        pairs.append((name, _part_text(headers, b"".join(chunks))))
                event = decoder.next_event()
    except RequestEntityTooLarge as err:
        raise BodyTooLarge("multipart body over the size or part limit") from err
    except ValueError as err:  # werkzeug's "cannot parse", a header that is not UTF-8
        raise MalformedBody("malformed multipart body") from err
    if not isinstance(event, Epilogue):
        raise MalformedBody("multipart body ends before its closing boundary")
    return _collect(pairs)


def parse_body(mimetype: str, params: Mapping[str, str], body: bytes, *, max_bytes: int) -> list[Any]:
    """Dispatch on the content type; raise :class:`UnsupportedContentType`, :class:`MalformedBody` or
    :class:`BodyTooLarge`.

    A declared JSON, urlencoded or multipart body must parse as that (else 400). Any other content type, or
    none, is read as JSON when it is one (a JSON event object or list), because SMTP2Go sometimes sends its
    JSON output that way; a body that is not is 415, as before. A non-UTF-8 charset is always 415: decoding
    the body as UTF-8 against its own declaration could store wrong text.
    """
    mimetype = mimetype.lower()
    charset = params.get("charset", "").strip().lower()
    if charset and charset not in _UTF8_CHARSETS:
        raise UnsupportedContentType(f"{mimetype or 'missing'}; charset={charset}")
    if mimetype == JSON_TYPE:
        return parse_json(body)
    if mimetype == FORM_TYPE:
        return parse_form(body)
    if mimetype == MULTIPART_TYPE:
        return parse_multipart(body, params.get("boundary"), max_bytes)
    try:
        return parse_json(body)
    except MalformedBody as err:
        raise UnsupportedContentType(f"{mimetype or 'missing'} body that is not JSON") from err


def split_events(items: list[Any], accept: Callable[[Any], bool] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Keep the items that look like events (``accept``: the provider's test, SMTP2Go's by default); count the
    rest as ignored: they cannot be linked or classified, so they are acknowledged (the provider must not retry
    them forever) but not processed."""
    events = [item for item in items if (accept or is_event)(item)]
    return events, len(items) - len(events)
