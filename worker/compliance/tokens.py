"""One-click unsubscribe (RFC 8058): the token in ``<UNSUBSCRIBE_BASE_URL>/u/<token>`` and the headers.

A token is ``base64url(version | nonce | AES-GCM(address, list_id, issued_at))`` under a key derived from
``UNSUBSCRIBE_SECRET``. The address is never in clear; the authentication tag binds address, list and issue
time, so a token cannot be forged or altered to name another address or list (the tag check is constant
time, inside the AEAD). A token older than ``UNSUBSCRIBE_TOKEN_DAYS`` is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.compliance.keys import derive, secret
from worker.infrastructure import settings_spec as spec

_VERSION = b"\x01"
_AAD = b"mailworker-unsubscribe-v1"
#: A token of a 320-character address and a 64-character list id is about 560 characters; refuse far longer.
MAX_TOKEN_CHARS = 1024
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"


class BadToken(ValueError):
    """The token is malformed, forged, altered, or expired (the message says which, never the address).
    ``expired`` tells an old genuine link from one that never was."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class Unsubscribe:
    address: str
    list_id: str
    issued_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def issue(address: str, list_id: str, *, master: str | None = None, now: float | None = None) -> str:
    payload = json.dumps({"a": address.strip().lower(), "l": list_id, "t": int(now if now is not None
                                                                               else time.time())},
                         separators=(",", ":")).encode()
    nonce = os.urandom(12)
    sealed = AESGCM(derive("unsubscribe-token", master)).encrypt(nonce, payload, _AAD)
    return _b64(_VERSION + nonce + sealed)


def verify(token: str, *, master: str | None = None, max_age_days: int | None = None,
           now: float | None = None) -> Unsubscribe:
    """The address and list of a genuine, unexpired token; :class:`BadToken` otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise BadToken("token: missing or too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("token: not base64url") from None
    if len(raw) < 1 + 12 + 16 or raw[:1] != _VERSION:
        raise BadToken("token: malformed")
    try:
        payload = json.loads(AESGCM(derive("unsubscribe-token", master)).decrypt(raw[1:13], raw[13:], _AAD))
        result = Unsubscribe(str(payload["a"]), str(payload["l"]), int(payload["t"]))
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise BadToken("token: not valid (forged, altered, or made with another UNSUBSCRIBE_SECRET)") from None
    days = max_age_days if max_age_days is not None else int(spec.read("UNSUBSCRIBE_TOKEN_DAYS"))
    if (now if now is not None else time.time()) - result.issued_at > days * 86400:
        raise BadToken(f"token: expired (older than {days} days)", expired=True)
    return result


def unsubscribe_headers(address: str, list_id: str | None) -> dict[str, str]:
    """``List-Unsubscribe`` and ``List-Unsubscribe-Post`` for mail of ``list_id`` to ``address``; empty when the
    email belongs to no list or ``UNSUBSCRIBE_BASE_URL`` / ``UNSUBSCRIBE_SECRET`` are not set."""
    base = spec.read("UNSUBSCRIBE_BASE_URL")
    master = secret()
    if not list_id or not base or not master or not address:
        return {}
    links = [f"<{str(base).rstrip('/')}/u/{issue(address, list_id, master=master)}>"]
    mailto = spec.read("UNSUBSCRIBE_MAILTO")
    if mailto:
        links.append(f"<mailto:{mailto}?subject=unsubscribe>")
    return {"List-Unsubscribe": ", ".join(links), "List-Unsubscribe-Post": ONE_CLICK_BODY}
