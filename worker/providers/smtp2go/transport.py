"""SMTP2Go v3 HTTP API client: ``POST /email/send`` and ``POST /activity/search`` (used by :mod:`.reconcile`).

One client for both calls, so sending and reconciliation share the per-thread keep-alive session, the
timeouts, the proxy/CA handling and -- most importantly -- one answer to "could SMTP2Go have acted on this
request?". Reconciliation exists only because that answer is sometimes "maybe"; if the two paths classified
failures differently, a send could be parked for a reason the reconciler does not understand.

Reads SMTP2Go's real response shapes: success is ``data.email_id`` with no ``error``/``error_code``/``failures``
(``data.*`` first, then the top level; ``failures`` may be a list of strings; with ``fastaccept`` the counts
are absent). The stored id is ``data.email_id`` -- never ``request_id``, which names the HTTP request only.

Classification, so the task never guesses (decided from urllib3's exception types, not message text):
- the request never left (name resolution, refused connection, connect timeout, proxy or TLS handshake
  failure), 429, 5xx -> :class:`RetryableDeliveryError`;
- the request may have left: read timeout, connection dropped or reset after the write, an SSL EOF after the
  write, an HTTP error while reading the response (truncated body, bad chunking or encoding), a 200 we cannot
  read -> :class:`AmbiguousDeliveryError` (SMTP2Go has no idempotency key: resending blindly could deliver twice);
- 401/403 -> :class:`CredentialsRejected`, a :class:`Held` outcome of the transport (an operator problem: the
  key was revoked or rotated, never a property of the message);
- other 4xx, or an error in a 200 -> :class:`PermanentDeliveryError`.
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    CredentialsRejected,
    DeliveryError,
    MailworkerError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from worker.infrastructure.config import Settings, check_api_url
from worker.infrastructure.modules import Smtp2GoConfig
from worker.providers.base import (
    TRACKING_HEADER,
    Accepted,
    NotSent,
    Outcome,
    OutgoingEmail,
    Unknown,
    held,
    outcome_of,
    unbuildable,
)

PROVIDER = "smtp2go"
#: The documented maximum ``limit`` of one ``/activity/search`` page.
ACTIVITY_PAGE_MAX = 1000
_local = threading.local()


class HandshakeFailed(ssl.SSLError):
    """A TLS error raised while the connection was being set up: nothing of the request was written yet."""


class _Connection(HTTPSConnection):
    def connect(self) -> None:
        try:
            super().connect()
        except HandshakeFailed:
            raise
        except ssl.SSLError as err:
            raise HandshakeFailed(*err.args) from err


class _Pool(HTTPSConnectionPool):
    ConnectionCls = _Connection


class _Adapter(HTTPAdapter):
    """Marks TLS failures of the connection set-up by type (:class:`HandshakeFailed`), directly and via a proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": HTTPConnectionPool, "https": _Pool}

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = {"http": HTTPConnectionPool, "https": _Pool}
        return manager


def _session() -> requests.Session:
    """One keep-alive session per thread (requests sessions are not thread-safe to share).

    ``trust_env`` is off: the environment is read once per API URL instead (:func:`_environment`), with the
    same meaning: ``HTTPS_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE``.
    """
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        adapter = _Adapter(pool_connections=4, pool_maxsize=16, max_retries=0)
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


# --------------------------------------------------------------------------------------------- transport

#: urllib3/socket failures that can only happen before a byte of the request was written.
_BEFORE_THE_REQUEST: tuple[type[BaseException], ...] = (
    u3.NewConnectionError,  # includes NameResolutionError
    u3.ConnectTimeoutError,
    u3.ProxyError,  # urllib3 wraps only failures before the proxy tunnel was up
    u3.LocationParseError,
    socket.gaierror,
    ConnectionRefusedError,
    ssl.SSLCertVerificationError,
    ssl.CertificateError,
    HandshakeFailed,
)


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps: ``__cause__``/``__context__``, urllib3's ``reason`` and exception args."""
    seen: set[int] = set()
    stack: list[Any] = [err]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])


def request_left(err: BaseException) -> bool:
    """Could SMTP2Go have received this request? False only with proof that it failed before the write.

    The proof is an exception type raised while connecting (:class:`HandshakeFailed` for TLS); anything
    else -- a reset, an EOF, a timeout or a protocol error while reading -- may have
    happened after SMTP2Go read the whole request and acted on it.
    """
    for e in _causes(err):
        if isinstance(e, _BEFORE_THE_REQUEST):
            return False
    return True


def _unusable_url(err: Exception) -> ConfigurationError:
    return ConfigurationError(f"the SMTP2Go API URL is not usable ({type(err).__name__}): check SMTP2GO_API_URL or "
                              "`mailworker module set smtp2go api_url=...`")


def _transport_error(err: requests.RequestException, *, timeout: float) -> DeliveryError | ConfigurationError:
    """The delivery error (or configuration error) for a request that got no complete HTTP answer."""
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return RetryableDeliveryError("connect timeout", provider=PROVIDER)
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema, requests.exceptions.URLRequired)):
        # Nothing left, and nothing will until an operator fixes the URL: an operator problem, so the send
        # path holds the mail (never retries it into a fallback or a failure). Most such URLs are refused
        # before this, by check_api_url at start-up, in `module set` and in from_config.
        return _unusable_url(err)
    if isinstance(err, requests.exceptions.ReadTimeout):
        return AmbiguousDeliveryError(f"no answer within {timeout:g}s after sending", provider=PROVIDER)
    if isinstance(err, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return AmbiguousDeliveryError(f"the answer broke off while being read ({type(err).__name__})",
                                      provider=PROVIDER)
    if not request_left(err):
        what = "TLS handshake failed" if isinstance(err, requests.exceptions.SSLError) else "cannot connect"
        return RetryableDeliveryError(what, provider=PROVIDER)
    if isinstance(err, requests.exceptions.SSLError):
        return AmbiguousDeliveryError("TLS connection ended after sending", provider=PROVIDER)
    return AmbiguousDeliveryError(f"connection lost after sending ({type(err).__name__})", provider=PROVIDER)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any  # the parsed JSON, or None when the body was not JSON
    retry_after: float | None


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """The request body, byte for byte what ``requests.post(json=...)`` would send. Encoded by the caller before
    the request: inside ``requests`` a value JSON cannot carry (NaN, a set) is an ``InvalidJSONError``, a
    ``RequestException`` indistinguishable from a request that broke off after it left."""
    return json.dumps(payload, allow_nan=False).encode("utf-8")


def _post(path: str, payload: Mapping[str, Any] | bytes, *, api_key: str, api_url: str, timeout: float,
          connect_timeout: float, verify: bool | str) -> _Answer:
    """POST JSON (a mapping, or a body already :func:`encode_json`-ed) to ``{api_url}{path}`` with the key in the
    header; transport failures raise classified."""
    url = f"{api_url.rstrip('/')}{path}"
    proxies, ca_bundle = _environment(url)
    data = payload if isinstance(payload, bytes) else encode_json(payload)
    try:
        response = _session().post(
            url,
            data=data,
            headers={"X-Smtp2go-Api-Key": api_key, "Accept": "application/json",
                     "Content-Type": "application/json"},
            timeout=(connect_timeout, timeout),
            verify=ca_bundle if verify is True and ca_bundle else verify,
            proxies=proxies,
        )
    except requests.RequestException as err:
        raise _transport_error(err, timeout=timeout) from err
    except u3.LocationValueError as err:  # a host urllib3 cannot even parse (requests does not wrap it)
        raise _unusable_url(err) from err
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return _Answer(response.status_code, body, _retry_after(response))


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
            try:
                parsed = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                continue
            return max(0.0, parsed.timestamp() - time.time())
        if value > 1_000_000_000:  # an epoch timestamp
            value -= time.time()
        return max(0.0, value)
    return None


# --------------------------------------------------------------------------------------------- answers


def _first(data: dict[str, Any], body: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    return value if value not in (None, "", []) else body.get(key)


def _failure_text(failures: Any) -> str:
    if isinstance(failures, list):
        return "; ".join(str(f if not isinstance(f, dict) else f.get("error") or f) for f in failures)
    return str(failures)


def credentials_rejected(status: int, *, what: str = "the API key") -> CredentialsRejected:
    """The operator-facing error for a 401/403; it names the fix and never the key."""
    return CredentialsRejected(
        f"SMTP2Go refused {what} ({status}): revoked or rotated? set it with "
        "`mailworker module set smtp2go api_key=...`", provider=PROVIDER, status_code=status)


def _check_status(status: int, retry_after: float | None) -> None:
    """What the status alone decides, the same for every endpoint: credentials, rate limit, server error."""
    if status in (401, 403):
        raise credentials_rejected(status)
    if status == 429:
        raise RetryableDeliveryError("rate limited", provider=PROVIDER, status_code=429, retry_after=retry_after)
    if status >= 500:
        raise RetryableDeliveryError(f"server error {status}", provider=PROVIDER, status_code=status,
                                     retry_after=retry_after)


def _api_error(status: int, body: Any) -> PermanentDeliveryError | None:
    """The error SMTP2Go reported in a JSON body (``data.*`` first, then the top level), if any."""
    if not isinstance(body, dict):
        return None
    raw_data = body.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    error = _first(data, body, "error")
    error_code = _first(data, body, "error_code")
    failures = _first(data, body, "failures")
    if not (error or error_code or failures):
        return None
    detail = str(error or _failure_text(failures) or error_code)
    validation = body.get("field_validation_errors") or data.get("field_validation_errors")
    if isinstance(validation, dict) and validation.get("message"):
        detail += f" ({validation.get('fieldname')}: {validation['message']})"
    return PermanentDeliveryError(detail, provider=PROVIDER, status_code=status,
                                  error_code=str(error_code) if error_code else None)


def interpret_response(status: int, body: Any, *, retry_after: float | None = None) -> str:
    """Turn an ``/email/send`` HTTP status and parsed JSON body into an email id, or raise the right error."""
    _check_status(status, retry_after)
    if not isinstance(body, dict):
        if status == 200:
            raise AmbiguousDeliveryError("200 with an unreadable body", provider=PROVIDER, status_code=status)
        raise PermanentDeliveryError(f"HTTP {status} with an unreadable body", provider=PROVIDER,
                                     status_code=status)
    error = _api_error(status, body)
    if error is not None:
        raise error
    if status >= 300:
        raise PermanentDeliveryError(f"HTTP {status}", provider=PROVIDER, status_code=status)
    data = body.get("data")
    email_id = data.get("email_id") if isinstance(data, dict) else None
    if not email_id:
        raise AmbiguousDeliveryError("200 without data.email_id", provider=PROVIDER, status_code=status)
    return str(email_id)


# --------------------------------------------------------------------------------------------- /email/send


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
    """Send one message through ``POST {api_url}/email/send``; returns SMTP2Go's ``email_id`` or raises the
    classified error (the function behind :class:`Smtp2GoTransport`, for callers that want exceptions)."""
    answer = _post("/email/send", build_payload(email, options=options), api_key=api_key, api_url=api_url,
                   timeout=timeout, connect_timeout=connect_timeout, verify=verify)
    return interpret_response(answer.status, answer.body, retry_after=answer.retry_after)


def send_outcome(status: int, body: Any, *, retry_after: float | None = None) -> Outcome:
    """An ``/email/send`` answer as a transport outcome (a refused key is :class:`Held`)."""
    try:
        return Accepted(interpret_response(status, body, retry_after=retry_after))
    except CredentialsRejected as err:
        return held(err)
    except DeliveryError as err:
        outcome = outcome_of(err)
        if err.status_code == 429 and isinstance(outcome, NotSent):
            return replace(outcome, rate_limited=True)
        return outcome


@dataclass(frozen=True)
class Smtp2GoTransport:
    """The SMTP2Go transport: ``POST /email/send`` with this account's key (the classification is in the module
    docstring). Built from the module configuration; holds no connection (sessions are per thread)."""

    api_key: str = field(repr=False)
    api_url: str
    timeout: float = 30.0
    connect_timeout: float = 5.0
    verify: bool | str = True
    options: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Smtp2GoConfig, settings: Settings) -> Smtp2GoTransport:
        if not config.api_key:
            raise ConfigurationError("no SMTP2Go API key (SMTP2GO_API_KEY, or `mailworker module set smtp2go "
                                     "api_key=...`)")
        check_api_url(config.api_url, name="the SMTP2Go API URL (SMTP2GO_API_URL, or the module's api_url)")
        return cls(api_key=config.api_key, api_url=config.api_url, timeout=settings.smtp2go_timeout,
                   connect_timeout=settings.smtp2go_connect_timeout, verify=settings.smtp2go_ca_file or True,
                   options=config.options)

    def send(self, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome:
        try:  # the whole body before ``departing``: a message that cannot be built was never sent
            payload = encode_json(build_payload(email, options=self.options))
        except Exception as err:  # noqa: BLE001 - whatever the build raised, nothing left the process
            return unbuildable(PROVIDER, err)
        if departing is not None:
            departing()
        try:
            answer = _post("/email/send", payload, api_key=self.api_key, api_url=self.api_url,
                           timeout=self.timeout, connect_timeout=self.connect_timeout, verify=self.verify)
        except DeliveryError as err:
            return outcome_of(err)
        except ConfigurationError as err:
            return held(err)
        return send_outcome(answer.status, answer.body, retry_after=answer.retry_after)

    def send_batch(self, emails: list[OutgoingEmail],
                   departing: Callable[[list[str]], None] | None = None) -> list[Outcome]:
        """Send ``emails`` in one ``POST /email/batch`` (see :func:`send_batch_outcomes`)."""
        return send_batch_outcomes(self, emails, departing)


# --------------------------------------------------------------------------------------------- /activity/search


class ActivitySearchError(MailworkerError):
    """``/activity/search`` gave no usable page. ``kind`` says what happened, so a report can say it too:

    ``rate_limited`` (429), ``server_error`` (5xx), ``unreachable`` (no connection, timeout, answer cut off),
    ``refused`` (another 4xx or an error in the body: our request or the key's permissions) or ``unreadable``
    (a 200 that is not the documented shape). A 401/403 is not one of these: it raises
    :class:`~worker.errors.CredentialsRejected`.
    """

    def __init__(self, message: str, *, kind: str, status_code: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after


@dataclass(frozen=True)
class ActivityPage:
    """One page of ``/activity/search``: ``data.events``, ``data.continue_token`` (None: last page) and
    ``data.total_events`` (all matches, not this page's count)."""

    events: list[dict[str, Any]]
    continue_token: str | None
    total_events: int | None


def search_activity(
    query: Mapping[str, Any],
    *,
    api_key: str,
    api_url: str,
    timeout: float = 30.0,
    connect_timeout: float = 5.0,
    verify: bool | str = True,
) -> ActivityPage:
    """One ``POST {api_url}/activity/search`` page for ``query`` (the documented fields, e.g. ``start_date``,
    ``search_recipient``, ``custom_headers``, ``continue_token``). The search is read-only, so a request that
    may have left is simply "unreachable": nothing can have happened twice."""
    try:
        answer = _post("/activity/search", query, api_key=api_key, api_url=api_url, timeout=timeout,
                       connect_timeout=connect_timeout, verify=verify)
        _check_status(answer.status, answer.retry_after)
    except CredentialsRejected as err:
        raise credentials_rejected(err.status_code or 401, what="the API key for activity search") from err
    except DeliveryError as err:
        if err.status_code == 429:
            wait = f", retry in {err.retry_after:.0f}s" if err.retry_after is not None else ""
            raise ActivitySearchError(f"SMTP2Go activity search rate limited (429){wait}", kind="rate_limited",
                                      status_code=429, retry_after=err.retry_after) from err
        if err.status_code is not None:
            raise ActivitySearchError(f"SMTP2Go activity search failed with {err.status_code}",
                                      kind="server_error", status_code=err.status_code) from err
        raise ActivitySearchError(f"SMTP2Go activity search unreachable: {err}", kind="unreachable") from err
    error = _api_error(answer.status, answer.body)
    if error is not None and (error.error_code or "").endswith("ENDPOINT_PERMISSION_DENIED"):
        # the documented answer for a key without the activity permission: a credentials problem too
        raise credentials_rejected(answer.status, what="activity search for this API key (no permission)")
    if error is not None or answer.status >= 300:
        detail = f": {error}" if error is not None else ""
        raise ActivitySearchError(f"SMTP2Go activity search refused the request ({answer.status}){detail}",
                                  kind="refused", status_code=answer.status)
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(events, list):
        raise ActivitySearchError("SMTP2Go activity search answered 200 without data.events",
                                  kind="unreadable", status_code=answer.status)
    token = data.get("continue_token")
    total = data.get("total_events")
    return ActivityPage(events=[e for e in events if isinstance(e, dict)],
                        continue_token=str(token) if token else None,
                        total_events=total if isinstance(total, int) else None)


def custom_header(event: Mapping[str, Any], name: str) -> str | None:
    """A custom header of an activity event: ``custom_headers`` is an object keyed by header name (matched
    case-insensitively, as header names are)."""
    headers = event.get("custom_headers")
    if not isinstance(headers, dict):
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if str(key).lower() == wanted and value not in (None, ""):
            return str(value)
    return None


# --------------------------------------------------------------------------------------------- /email/batch

#: SMTP2Go's documented maximum number of emails in one ``/email/batch`` request.
BATCH_MAX = 1000


def interpret_batch_response(status: int, body: Any, count: int, *,
                             retry_after: float | None = None) -> list[Outcome]:
    """An ``/email/batch`` answer as one outcome per email of the request (``count`` of them, in order).

    A 200 lists one ``{"email_id"}`` (or ``{"schedule_id"}``) per email in request order: each is
    :class:`Accepted` with its own id; a 200 we cannot match item for item is :class:`Unknown` for every item
    (something may have been accepted). SMTP2Go does not document a per-item refusal, nor whether a failed
    request may have accepted some items, so: 401/403 hold every item; 429 is a pause for every item (nothing
    sent); 5xx is :class:`Unknown` for every item; another 4xx (or an error in a 200) refused the batch as a
    whole without saying which item: every item is ``NotSent(declined=True, retryable=False)``, "refused with
    its batch, not for itself", and the core sends each alone to find the offending one.
    """
    if status in (401, 403):
        return [held(credentials_rejected(status))] * count
    if status == 429:
        return [NotSent(retryable=True, reason="SMTP2Go batch rate limited (429)", retry_after=retry_after,
                        rate_limited=True)] * count
    if status >= 500:
        return [Unknown(f"SMTP2Go answered the batch with {status}: any of its emails may have been accepted")
                ] * count
    error = _api_error(status, body) if isinstance(body, dict) else None
    if error is not None or status >= 300:
        detail = error.describe() if error is not None else f"HTTP {status}"
        return [NotSent(retryable=False, declined=True,
                        reason=f"SMTP2Go refused the batch of {count} as a whole ({status}): {detail}")] * count
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != count:
        got = f"{len(data)} ids" if isinstance(data, list) else "no id list"
        return [Unknown(f"SMTP2Go answered the batch of {count} with 200 and {got}")] * count
    outcomes: list[Outcome] = []
    for index, item in enumerate(data):
        ident = (item.get("email_id") or item.get("schedule_id")) if isinstance(item, dict) else None
        outcomes.append(Accepted(str(ident)) if ident else
                        Unknown(f"SMTP2Go answered the batch with 200 but no email_id for item {index}"))
    return outcomes


def build_batch_item(email_msg: OutgoingEmail, *, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One item of ``POST /email/batch``: the ``/email/send`` body (with ``X-Mailworker-Id``), without the
    request-level ``fastaccept`` option."""
    item = build_payload(email_msg, options=None)
    encode_json(item)  # a value JSON cannot carry fails here, for this item alone, before anything leaves
    return item


def send_batch_outcomes(transport: Smtp2GoTransport, emails: list[OutgoingEmail],
                        departing: Callable[[list[str]], None] | None = None) -> list[Outcome]:
    """Send ``emails`` in one ``POST /email/batch``: one outcome per email, in order.

    Every item is built first; one that cannot be built is ``NotSent(unbuildable)`` and left out of the request.
    ``departing`` gets the tracking ids that leave, just before the request. A request that never left is
    ``NotSent`` (retryable) for each; one that may have left without an answer is :class:`Unknown` for each.
    """
    if len(emails) > BATCH_MAX:
        raise ValueError(f"emails: at most {BATCH_MAX} in one SMTP2Go batch, got {len(emails)}")
    outcomes: list[Outcome | None] = [None] * len(emails)
    items: list[dict[str, Any]] = []
    leaving: list[int] = []
    for index, email_msg in enumerate(emails):
        try:
            items.append(build_batch_item(email_msg, options=transport.options))
            leaving.append(index)
        except Exception as err:  # noqa: BLE001 - whatever the build raised, this item never leaves
            outcomes[index] = unbuildable(PROVIDER, err)
    if leaving:
        try:
            body = encode_json({"emails": items})
        except Exception as err:  # noqa: BLE001 - each item encoded alone; the list cannot fail, but be honest
            return [unbuildable(PROVIDER, err)] * len(emails)
        if departing is not None:
            departing([emails[i].tracking_id for i in leaving])
        answered: list[Outcome]
        try:
            answer = _post("/email/batch", body, api_key=transport.api_key, api_url=transport.api_url,
                           timeout=transport.timeout, connect_timeout=transport.connect_timeout,
                           verify=transport.verify)
        except DeliveryError as err:
            answered = [outcome_of(err)] * len(leaving)
        except ConfigurationError as err:
            answered = [held(err)] * len(leaving)
        else:
            answered = interpret_batch_response(answer.status, answer.body, len(leaving),
                                                retry_after=answer.retry_after)
        for index, outcome in zip(leaving, answered, strict=True):
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]
