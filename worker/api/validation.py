"""Input validation for ``enqueue_email``.

Everything that can be checked before a row is written is checked here, so a bad call fails at once with an
:class:`InvalidEmail` that names the field, and nothing is stored or sent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.utils import formataddr, getaddresses
from typing import Any

from email_validator import EmailNotValidError, validate_email

from worker.errors import InvalidEmail

MAX_ADDRESSES_PER_FIELD = 100
#: SMTP2Go's limit on the whole message, attachments included.
MAX_TOTAL_BYTES = 50 * 1024 * 1024
#: RFC 3696's practical ceiling; email-validator's own limits are stricter, this one is the column's promise.
MAX_ADDRESS_CHARS = 320
#: Custom headers per message: far more than any real use, few enough that a runaway dict is refused.
MAX_CUSTOM_HEADERS = 100
#: ``template_data`` nesting deeper than this is refused (a cycle would otherwise recurse until it crashes).
MAX_TEMPLATE_DATA_DEPTH = 64
#: Exactly the characters ``str.splitlines`` splits on. Python's ``email`` package (the relay's MIME build)
#: refuses a header value that ``splitlines`` cuts into several lines, so a header value, display name or
#: attachment filename holding any of these would be accepted here and refused by the transport after the send
#: began. tests/worker/api/test_header_rules.py checks this list against ``splitlines`` over all of Unicode.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_BREAK = re.compile(f"[{re.escape(LINE_BREAKS)}]")
#: A lone surrogate is not a Unicode character: UTF-8 (the database, MIME, JSON for the API) cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 5322 ftext); used with fullmatch
#: RFC 6838 ``type-name "/" subtype-name`` (restricted-name: a letter or digit, then up to 126 of these), no
#: parameters: the transports put the value into Content-Type as it is.
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_RESERVED_HEADERS = {"to", "cc", "bcc", "from", "subject", "x-mailworker-id", "content-type",
                     "content-transfer-encoding", "mime-version", "date", "message-id"}


def format_address(address: str, name: str | None) -> str:
    """``Name <address>`` (RFC 5322 quoting) when there is a display name, else the bare address."""
    return formataddr((name, address)) if name else address


@dataclass(frozen=True)
class Address:
    """One validated mailbox. ``address`` is the ASCII form (IDN domains IDNA-encoded), so transports,
    suppressions and webhook matching all compare the same string."""

    address: str
    name: str | None = None

    @property
    def formatted(self) -> str:
        return format_address(self.address, self.name)


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def check_text(field: str, value: str) -> None:
    """Text that is stored and sent (a body, a reference, a ``template_data`` string) must be encodable as
    UTF-8: no lone surrogates."""
    found = _SURROGATE.search(value)
    if found:
        raise InvalidEmail(field, f"contains a lone surrogate ({_codepoint(found.group())}), which is not a "
                                  "character and cannot be encoded as UTF-8")


def check_header_value(field: str, value: str) -> None:
    """A value that goes into a header (subject, custom header, address with display name, attachment
    filename): one line by the transport's own rule (see :data:`LINE_BREAKS`), no NUL, encodable."""
    check_text(field, value)
    found = _LINE_BREAK.search(value)
    if found:
        raise InvalidEmail(field, f"contains a line break character ({_codepoint(found.group())}); a header "
                                  "value must be one line")
    if "\x00" in value:
        raise InvalidEmail(field, "contains a NUL character (U+0000), which no header can carry")


def split_addresses(text: str) -> list[str]:
    """Split an address field at the top-level ``,`` and ``;`` separators, leaving ones inside quoted display
    names (``"Doe, Jane" <jane@example.com>``), comments and ``<...>`` alone.

    ``getaddresses`` knows only ``,``, and on a whole malformed list it can silently merge or drop entries
    (``a@x <b@y>`` becomes two mailboxes); splitting first lets each part be checked to hold exactly one.
    """
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = in_angle = False
    comment_depth = 0
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or comment_depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif comment_depth:
            comment_depth += {"(": 1, ")": -1}.get(ch, 0)
        elif ch == '"':
            quoted = True
        elif ch == "(":
            comment_depth = 1
        elif ch in "<>":
            in_angle = ch == "<"
        elif ch in ",;" and not in_angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _parse_mailbox(field: str, text: str) -> Address:
    """One ``addr`` or ``Name <addr>``: parsed by ``getaddresses``, validated by email-validator."""
    pairs = getaddresses([text])
    if len(pairs) > 1:
        raise InvalidEmail(field, f"{text!r} is not one address; separate several with ',' or ';'")
    if not pairs or not pairs[0][1] or ("<" in text and not text.endswith(">")):
        raise InvalidEmail(field, f"{text!r} is not a valid address")
    name, addr = pairs[0]
    local = addr.rpartition("@")[0]
    if local and not local.isascii():
        raise InvalidEmail(field, f"{addr!r} has a non-ASCII local part, which needs SMTPUTF8; SMTP2Go and "
                                  "most relays do not support it")
    try:
        # No DNS at enqueue (check_deliverability=False); special-use domains (.test, .invalid, localhost)
        # are still refused, the documentation domains example.com/.org/.net pass.
        valid = validate_email(addr, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as err:
        raise InvalidEmail(field, f"{text!r} is not a valid address: {err}") from None
    ascii_addr = valid.ascii_email or valid.normalized
    if len(ascii_addr) > MAX_ADDRESS_CHARS:
        raise InvalidEmail(field, f"{text!r} is longer than {MAX_ADDRESS_CHARS} characters")
    return Address(address=ascii_addr, name=name.strip() or None)


def _parse_item(field: str, raw: Any) -> list[Address]:
    """Every mailbox in one string (``a@x, Bob <b@y>; c@z``); a string without any is an error."""
    if not isinstance(raw, str):
        raise InvalidEmail(field, f"expected an email address string, got {type(raw).__name__}")
    check_header_value(field, raw)
    parts = split_addresses(raw)
    if not parts:
        raise InvalidEmail(field, "empty address")
    return [_parse_mailbox(field, part) for part in parts]


def parse_address(field: str, raw: Any) -> Address:
    """Exactly one mailbox (``sender``, ``reply_to``, a suppression): a list here would silently lose all but
    the first, so more than one is refused."""
    addresses = _parse_item(field, raw)
    if len(addresses) != 1:
        raise InvalidEmail(field, f"{raw!r} holds {len(addresses)} addresses; exactly one is allowed")
    return addresses[0]


def parse_address_list(field: str, raw: Any, *, required: bool = False) -> list[Address]:
    """``to``/``cc``/``bcc``: a string or a list of strings, each holding one or more mailboxes. Duplicates
    (case-insensitive) are dropped; the per-field cap counts the distinct mailboxes after splitting, as the
    provider sees them."""
    if raw is None:
        items: list[Any] = []
    elif isinstance(raw, str):
        items = [raw]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise InvalidEmail(field, f"expected a string or a list of strings, got {type(raw).__name__}")
    if required and not items:
        raise InvalidEmail(field, "at least one recipient is required")
    out: list[Address] = []
    seen: set[str] = set()
    for item in items:
        for addr in _parse_item(field, item):
            key = addr.address.lower()
            if key not in seen:
                seen.add(key)
                out.append(addr)
        if len(out) > MAX_ADDRESSES_PER_FIELD:
            raise InvalidEmail(field, f"more than {MAX_ADDRESSES_PER_FIELD} addresses given; at most "
                                      f"{MAX_ADDRESSES_PER_FIELD} allowed")
    return out


def check_headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidEmail("headers", "expected a dict of header name to value")
    if len(raw) > MAX_CUSTOM_HEADERS:
        raise InvalidEmail("headers", f"{len(raw)} custom headers given; at most {MAX_CUSTOM_HEADERS} allowed")
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidEmail("headers", f"invalid header name {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidEmail(f"headers[{name}]", "is set by mailworker; use the matching argument")
        # Header names are case-insensitive: "Sender" and "sender" are one header, and the ones a message may
        # carry only once (Sender, Reply-To, ...) would be refused by the MIME build.
        if name.lower() in seen and policy.default.header_max_count(name) == 1:
            raise InvalidEmail(f"headers[{name}]", f"the same header as headers[{seen[name.lower()]}], which a "
                                                   "message may carry only once")
        seen.setdefault(name.lower(), name)
        if not isinstance(value, str):
            raise InvalidEmail(f"headers[{name}]", "value must be a string")
        check_header_value(f"headers[{name}]", value)
        out[name] = value
    return out


def check_template_data(raw: Any) -> dict[str, Any] | None:
    """``template_data`` is stored as JSON and sent as JSON: only JSON values (str keys, finite numbers, text
    without lone surrogates). The error names the offending path, e.g. ``template_data['items'][2]``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidEmail("template_data", f"expected a dict, got {type(raw).__name__}")
    _check_json("template_data", raw, 0)
    return raw


def _check_json(path: str, value: Any, depth: int) -> None:
    if depth > MAX_TEMPLATE_DATA_DEPTH:
        raise InvalidEmail(path, f"nested deeper than {MAX_TEMPLATE_DATA_DEPTH} levels (a cycle?)")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        check_text(path, value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEmail(path, f"{value!r} is not a JSON number")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(f"{path}[{i}]", item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEmail(path, f"key {key!r} is a {type(key).__name__}; JSON object keys are strings")
            check_text(f"{path} key {key!r}", key)
            _check_json(f"{path}[{key!r}]", item, depth + 1)
    else:
        raise InvalidEmail(path, f"a {type(value).__name__} is not a JSON value (use str, int, float, bool, None, "
                                 "list or dict)")


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON in UTF-8 (after :func:`check_template_data`, so it always encodes)."""
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def check_attachments(raw: Any) -> list[tuple[str, bytes, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise InvalidEmail("attachments", "expected a list of (filename, content_bytes, mimetype) tuples")
    out = []
    for i, item in enumerate(raw):
        field = f"attachments[{i}]"
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise InvalidEmail(field, "expected a (filename, content_bytes, mimetype) tuple")
        filename, content, mimetype = item
        if not isinstance(filename, str) or not filename.strip():
            raise InvalidEmail(f"{field}.filename", "must be a non-empty string")
        check_header_value(f"{field}.filename", filename)
        if isinstance(content, bytearray | memoryview):
            content = bytes(content)
        if not isinstance(content, bytes):
            raise InvalidEmail(f"{field}.content", "must be bytes")
        if not isinstance(mimetype, str) or not _MIME_TYPE.fullmatch(mimetype):
            raise InvalidEmail(f"{field}.mimetype", f"{mimetype!r} is not a MIME type: expected type/subtype "
                                                    "(e.g. application/pdf), without parameters")
        out.append((filename, content, mimetype))
    return out


def check_send_at(raw: Any, field: str = "send_at") -> datetime | None:
    """An aware datetime or None (``send_at``, ``expires_at``)."""
    if raw is None:
        return None
    if not isinstance(raw, datetime):
        raise InvalidEmail(field, "expected a datetime")
    if raw.tzinfo is None or raw.utcoffset() is None:
        raise InvalidEmail(field, "must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return raw


def check_optional_str(field: str, raw: Any, *, max_len: int = 255, header: bool = True) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidEmail(field, f"expected a string, got {type(raw).__name__}")
    if header:
        check_header_value(field, raw)
    else:
        check_text(field, raw)
    if len(raw) > max_len:
        raise InvalidEmail(field, f"longer than {max_len} characters")
    return raw
