"""Input validation for ``enqueue_email``.

Everything that can be checked before a row is written is checked here, so a bad call fails at once with an
:class:`InvalidEmail` that names the field, and nothing is stored or sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import formataddr, parseaddr
from typing import Any

from worker.errors import InvalidEmail

MAX_ADDRESSES_PER_FIELD = 100
#: SMTP2Go's limit on the whole message, attachments included.
MAX_TOTAL_BYTES = 50 * 1024 * 1024
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
_ADDR_RE = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' (RFC 5322 ftext)
_RESERVED_HEADERS = {"to", "cc", "bcc", "from", "subject", "x-mailworker-id", "content-type",
                     "content-transfer-encoding", "mime-version"}


def format_address(address: str, name: str | None) -> str:
    """``Name <address>`` (RFC 5322 quoting) when there is a display name, else the bare address."""
    return formataddr((name, address)) if name else address


@dataclass(frozen=True)
class Address:
    address: str
    name: str | None = None

    @property
    def formatted(self) -> str:
        return format_address(self.address, self.name)


def check_header_value(field: str, value: str) -> None:
    if _FORBIDDEN.search(value):
        raise InvalidEmail(field, "must not contain CR, LF or NUL characters")


def parse_address(field: str, raw: Any) -> Address:
    if not isinstance(raw, str):
        raise InvalidEmail(field, f"expected an email address string, got {type(raw).__name__}")
    check_header_value(field, raw)
    text = raw.strip()
    if not text:
        raise InvalidEmail(field, "empty address")
    name, addr = parseaddr(text)
    if "<" in text and not text.endswith(">"):
        raise InvalidEmail(field, f"{raw!r} is not a valid address")
    if not addr or not _ADDR_RE.match(addr) or ".." in addr or addr.startswith("."):
        raise InvalidEmail(field, f"{raw!r} is not a valid address")
    if len(addr) > 320:
        raise InvalidEmail(field, f"{raw!r} is longer than 320 characters")
    return Address(address=addr, name=name.strip() or None)


def parse_address_list(field: str, raw: Any, *, required: bool = False) -> list[Address]:
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
    if len(items) > MAX_ADDRESSES_PER_FIELD:
        raise InvalidEmail(field, f"{len(items)} addresses given; at most {MAX_ADDRESSES_PER_FIELD} allowed")
    out: list[Address] = []
    seen: set[str] = set()
    for item in items:
        addr = parse_address(field, item)
        key = addr.address.lower()
        if key not in seen:
            seen.add(key)
            out.append(addr)
    return out


def check_headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidEmail("headers", "expected a dict of header name to value")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidEmail("headers", f"invalid header name {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidEmail(f"headers[{name}]", "is set by mailworker; use the matching argument")
        if not isinstance(value, str):
            raise InvalidEmail(f"headers[{name}]", "value must be a string")
        check_header_value(f"headers[{name}]", value)
        out[name] = value
    return out


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
        if not isinstance(mimetype, str) or "/" not in mimetype:
            raise InvalidEmail(f"{field}.mimetype", f"{mimetype!r} is not a MIME type")
        check_header_value(f"{field}.mimetype", mimetype)
        out.append((filename, content, mimetype))
    return out


def check_send_at(raw: Any) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, datetime):
        raise InvalidEmail("send_at", "expected a datetime")
    if raw.tzinfo is None or raw.utcoffset() is None:
        raise InvalidEmail("send_at", "must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return raw


def check_optional_str(field: str, raw: Any, *, max_len: int = 255, header: bool = True) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidEmail(field, f"expected a string, got {type(raw).__name__}")
    if header:
        check_header_value(field, raw)
    if len(raw) > max_len:
        raise InvalidEmail(field, f"longer than {max_len} characters")
    return raw
