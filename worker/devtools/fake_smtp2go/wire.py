"""SMTP2Go's v3 wire formats: ids, timestamps, and the bodies of success and error answers.

Kept apart from the endpoints so every part of the fake - the send and activity endpoints, scripted answers,
webhooks - builds exactly the same shapes as the fixture files; the worker's parsers are tested against these,
so a drift here would let a parser bug through.
"""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

_B62 = string.digits + string.ascii_letters
_JSON_ERROR = "An error occurred processing the json data you sent with the request."
Reply = tuple[int, dict | str, dict[str, str]]


def _email_id() -> str:
    """A fresh id shaped like SMTP2Go's ``1t9QkX-4Rb2Wm8YzK-Q7aP``: what callers store, never request_id."""
    n, s = uuid.uuid4().int, ""
    while len(s) < 18:
        n, r = divmod(n, 62)
        s += _B62[r]
    return f"{s[:6]}-{s[6:14]}-{s[14:]}"


def _rid() -> str:
    return str(uuid.uuid4())


def _iso(ts: float, micro: bool = False) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.isoformat() if micro else dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_error(error: str, code: str) -> dict[str, Any]:
    return {"request_id": _rid(), "data": {"error": error, "error_code": f"E_ApiResponseCodes.{code}"}}


def _toplevel_error(fieldname: str, message: str) -> dict[str, Any]:
    return {"error": _JSON_ERROR, "error_code": "E_ApiResponseCodes.NON_VALIDATING_IN_PAYLOAD",
            "field_validation_errors": {"fieldname": fieldname, "message": message}}


def _rate_limited(reset: int) -> Reply:
    return 429, _api_error("Rate limit exceeded", "RATE_LIMIT_EXCEEDED"), {
        "X-Ratelimit-Reset": str(reset), "Retry-After": str(reset)}


def _success(n_rcpt: int, fast: bool) -> dict[str, Any]:
    if fast:
        return {"request_id": _rid(), "data": {"email_id": _email_id()}}
    return {"request_id": _rid(),
            "data": {"succeeded": n_rcpt, "failed": 0, "failures": [], "email_id": _email_id()}}


def _recipients(p: dict) -> list[str]:
    return [parseaddr(str(a))[1] or str(a) for k in ("to", "cc", "bcc") for a in (p.get(k) or [])]
