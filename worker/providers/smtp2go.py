"""SMTP2Go v3 HTTP API transport.

Reads SMTP2Go's real response shapes: success is ``data.email_id`` with no ``error``/``error_code``/``failures``
(``data.*`` first, then the top level; ``failures`` may be a list of strings; with ``fastaccept`` the counts
are absent). The stored id is ``data.email_id`` -- never ``request_id``, which names the HTTP request only.

Classification, so the task never guesses:
- connection refused / connect timeout / 429 / 5xx -> :class:`RetryableDeliveryError` (request did not land);
- read timeout, connection dropped after sending, or a 200 we cannot read -> :class:`AmbiguousDeliveryError`
  (SMTP2Go has no idempotency key: resending blindly could deliver twice);
- other 4xx, or an error in a 200 -> :class:`PermanentDeliveryError`.
"""

from __future__ import annotations

import base64
import email.utils
import os
import threading
import time
from functools import lru_cache
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from worker.errors import AmbiguousDeliveryError, PermanentDeliveryError, RetryableDeliveryError
from worker.providers import TRACKING_HEADER, OutgoingEmail

PROVIDER = "smtp2go"
_local = threading.local()


def _session() -> requests.Session:
    """One keep-alive session per thread (requests sessions are not thread-safe to share).

    ``trust_env`` is off: with it on, requests re-reads every proxy variable (and ~/.netrc) on each request,
    about 5% of a worker's CPU in the benchmark profile. The environment is read once instead, per API URL
    (:func:`_environment`), with the same meaning: ``HTTPS_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE``.
    """
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        _local.session = session
    return session


@lru_cache(maxsize=16)
def _environment(url: str) -> tuple[dict[str, str], str | None]:
    """Proxies for ``url`` (honouring ``NO_PROXY``) and the CA bundle from the environment, read once."""
    proxies = requests.utils.get_environ_proxies(url)
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return dict(proxies), ca_bundle


def build_payload(email_msg: OutgoingEmail, *, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of ``POST /email/send`` for one message."""
    custom_headers = [{"header": TRACKING_HEADER, "value": email_msg.tracking_id}]
    if email_msg.reply_to:
        custom_headers.append({"header": "Reply-To", "value": email_msg.reply_to})
    for name, value in email_msg.headers.items():
        custom_headers.append({"header": name, "value": value})
    payload: dict[str, Any] = {
        "sender": email_msg.sender,
        "to": email_msg.to,
        "custom_headers": custom_headers,
    }
    if email_msg.cc:
        payload["cc"] = email_msg.cc
    if email_msg.bcc:
        payload["bcc"] = email_msg.bcc
    if email_msg.subject is not None:
        payload["subject"] = email_msg.subject
    if email_msg.text_body:
        payload["text_body"] = email_msg.text_body
    if email_msg.html_body:
        payload["html_body"] = email_msg.html_body
    if email_msg.template_id:
        payload["template_id"] = email_msg.template_id
        payload["template_data"] = email_msg.template_data or {}
    if email_msg.attachments:
        payload["attachments"] = [
            {"filename": a.filename, "fileblob": base64.b64encode(a.content).decode("ascii"),
             "mimetype": a.mimetype}
            for a in email_msg.attachments
        ]
    for key in ("fastaccept",):
        if options and options.get(key):
            payload[key] = True
    return payload


def _retry_after(response: requests.Response) -> float | None:
    """Seconds to wait, from ``X-Ratelimit-Reset`` (seconds or epoch) or ``Retry-After`` (seconds or date)."""
    for header in ("X-Ratelimit-Reset", "Retry-After"):
        raw = response.headers.get(header)
        if not raw:
            continue
        raw = raw.strip()
        try:
            value = float(raw)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(raw) if raw else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
            continue
        if value > 1_000_000_000:  # an epoch timestamp
            value -= time.time()
        return max(0.0, value)
    return None


def _first(data: dict[str, Any], body: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    return value if value not in (None, "", []) else body.get(key)


def _failure_text(failures: Any) -> str:
    if isinstance(failures, list):
        return "; ".join(str(f if not isinstance(f, dict) else f.get("error") or f) for f in failures)
    return str(failures)


def interpret_response(status: int, body: Any, *, retry_after: float | None = None) -> str:
    """Turn an HTTP status and parsed JSON body into an email id, or raise the right error."""
    if status == 429:
        raise RetryableDeliveryError("rate limited", provider=PROVIDER, status_code=429, retry_after=retry_after)
    if status >= 500:
        raise RetryableDeliveryError(f"server error {status}", provider=PROVIDER, status_code=status,
                                     retry_after=retry_after)
    if not isinstance(body, dict):
        if status == 200:
            raise AmbiguousDeliveryError("200 with an unreadable body", provider=PROVIDER, status_code=status)
        raise PermanentDeliveryError(f"HTTP {status} with an unreadable body", provider=PROVIDER,
                                     status_code=status)
    raw_data = body.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    error = _first(data, body, "error")
    error_code = _first(data, body, "error_code")
    failures = _first(data, body, "failures")
    if error or error_code or failures:
        detail = str(error or _failure_text(failures) or error_code)
        validation = body.get("field_validation_errors") or data.get("field_validation_errors")
        if isinstance(validation, dict) and validation.get("message"):
            detail += f" ({validation.get('fieldname')}: {validation['message']})"
        raise PermanentDeliveryError(detail, provider=PROVIDER, status_code=status,
                                     error_code=str(error_code) if error_code else None)
    if status >= 300:
        raise PermanentDeliveryError(f"HTTP {status}", provider=PROVIDER, status_code=status)
    email_id = data.get("email_id")
    if not email_id:
        raise AmbiguousDeliveryError("200 without data.email_id", provider=PROVIDER, status_code=status)
    return str(email_id)


def send(
    *,
    email: OutgoingEmail,
    api_key: str,
    api_url: str,
    timeout: float = 30.0,
    connect_timeout: float = 5.0,
    verify: bool | str = True,
    options: dict[str, Any] | None = None,
) -> str:
    """Send one message through ``POST {api_url}/email/send``; returns SMTP2Go's ``email_id``."""
    payload = build_payload(email, options=options)
    url = f"{api_url.rstrip('/')}/email/send"
    proxies, ca_bundle = _environment(url)
    try:
        response = _session().post(
            url,
            json=payload,
            headers={"X-Smtp2go-Api-Key": api_key, "Accept": "application/json"},
            timeout=(connect_timeout, timeout),
            verify=ca_bundle if verify is True and ca_bundle else verify,
            proxies=proxies,
        )
    except requests.exceptions.ConnectTimeout as err:
        raise RetryableDeliveryError("connect timeout", provider=PROVIDER) from err
    except requests.exceptions.ReadTimeout as err:
        raise AmbiguousDeliveryError(f"no answer within {timeout:g}s after sending", provider=PROVIDER) from err
    except requests.exceptions.SSLError as err:
        raise RetryableDeliveryError("TLS handshake failed", provider=PROVIDER) from err
    except requests.exceptions.ConnectionError as err:
        if _never_connected(err):
            raise RetryableDeliveryError("cannot connect", provider=PROVIDER) from err
        raise AmbiguousDeliveryError("connection lost after sending", provider=PROVIDER) from err
    except requests.exceptions.RequestException as err:
        raise RetryableDeliveryError(type(err).__name__, provider=PROVIDER) from err
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return interpret_response(response.status_code, body, retry_after=_retry_after(response))


def _never_connected(err: BaseException) -> bool:
    """True when the failure happened before the request was written (safe to retry)."""
    text = repr(err)
    markers = ("NewConnectionError", "Connection refused", "Name or service not known",
               "nodename nor servname", "Failed to resolve", "ConnectTimeoutError")
    return any(m in text for m in markers)
