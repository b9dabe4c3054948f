"""The operator's side of HTTP callbacks: endpoints with encrypted secrets (``mailworker callbacks``).

A URL is accepted only when its host resolves to public addresses (or to ``CALLBACK_ALLOWED_NETWORKS``): see
:mod:`worker.callbacks.http`, which checks the address again on every attempt. Show a URL with
:func:`mask_endpoint_url`: one may carry credentials (``https://user:password@host/``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.callbacks import signing
from worker.callbacks.http import AddressRefused, check_host
from worker.callbacks.outbox import EVENT_TYPES
from worker.infrastructure.config import MASK, get_settings, mask_url
from worker.infrastructure.crypto import decrypt_settings, encrypt_settings
from worker.infrastructure.models import CallbackEndpoint, utcnow

#: How long the secret before a rotation keeps signing (a second signature) so receivers can switch over.
ROTATION_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True)
class Created:
    id: int
    url: str
    secret: str  # shown once, to the operator who created it; stored encrypted only


def _encrypt(secret: str) -> str:
    return encrypt_settings({"secret": secret}, get_settings().require_encryption_keys())


def _decrypt(token: str) -> str:
    return str(decrypt_settings(token, get_settings().require_encryption_keys())["secret"])


def mask_endpoint_url(url: str) -> str:
    """The URL as it may be shown (CLI, console, logs): a password in it masked (``user:***@host``), and a lone
    user part too (``***@host``: often a token)."""
    masked = mask_url(url)
    if masked != url:
        return masked
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if not sep or at < 0:
        return url
    return f"{scheme}://{MASK}{rest[at:]}"


def check_url(url: str) -> str:
    """``url`` when it is an http(s) URL whose host resolves to allowed addresses only (public ones, or
    ``CALLBACK_ALLOWED_NETWORKS``); else ``ValueError`` with one line saying why (the URL masked)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{mask_endpoint_url(url)!r} is not a usable URL (bad port or brackets)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{mask_endpoint_url(url)!r} is not an http(s) URL")
    try:
        check_host(parts.hostname, port, get_settings().callback_allowed_networks)
    except AddressRefused as err:
        raise ValueError(str(err)) from None
    return url


def check_events(events: list[str] | None) -> list[str] | None:
    if not events:
        return None
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})")
    return sorted(set(events))


def add_endpoint(session: Session, url: str, events: list[str] | None = None) -> Created:
    secret = signing.new_secret()
    row = CallbackEndpoint(url=check_url(url), events=check_events(events), secret_encrypted=_encrypt(secret),
                           enabled=True, created_at=utcnow())
    session.add(row)
    session.flush()
    return Created(row.id, row.url, secret)


def rotate_secret(session: Session, endpoint_id: int, overlap: timedelta = ROTATION_OVERLAP) -> str:
    row = session.get(CallbackEndpoint, endpoint_id)
    if row is None:
        raise LookupError(f"no callback endpoint {endpoint_id}")
    secret = signing.new_secret()
    row.previous_secret_encrypted, row.previous_until = row.secret_encrypted, utcnow() + overlap
    row.secret_encrypted = _encrypt(secret)
    return secret


def signing_secrets(row: Any, now: datetime | None = None) -> list[str]:
    """The secrets that sign a request to ``row`` now: the current one, and the previous one while it lasts."""
    out = [_decrypt(row.secret_encrypted)]
    if row.previous_secret_encrypted and row.previous_until and row.previous_until > (now or utcnow()):
        out.append(_decrypt(row.previous_secret_encrypted))
    return out


def wants(row: Any, event_type: str) -> bool:
    return bool(row.enabled) and (not row.events or event_type in row.events)


def list_endpoints(session: Session) -> list[CallbackEndpoint]:
    return list(session.scalars(select(CallbackEndpoint).order_by(CallbackEndpoint.id)))


def set_enabled(session: Session, endpoint_id: int, enabled: bool, reason: str | None = None) -> bool:
    row = session.get(CallbackEndpoint, endpoint_id)
    if row is None:
        return False
    row.enabled, row.disabled_reason = enabled, None if enabled else reason
    return True


def remove_endpoint(session: Session, endpoint_id: int) -> bool:
    """Remove an endpoint (its delivery history stays, with its id)."""
    row = session.get(CallbackEndpoint, endpoint_id)
    if row is None:
        return False
    session.delete(row)
    return True
