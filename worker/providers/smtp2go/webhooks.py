"""SMTP2Go's webhooks: their authentication (shared secrets) and their wire format -> :class:`NormalizedEvent`,
the one module that knows SMTP2Go's event names and fields on the receiving side (pure: no I/O, never raises).
Everything after it speaks :class:`EventType`.

Two sources, one map of event names (:data:`EVENT_MAP`):

- **webhooks** (:func:`normalise_webhook`): ``event``, ``time`` (else ``sendtime``), ``email_id``, ``id``,
  ``rcpt`` or ``recipients``, ``bounce``, ``message``, ``reason``, ``context``, ``host``, ``user-agent``,
  ``url``, and echoed custom headers such as ``X-Mailworker-Id``. JSON bodies and flat form dicts (values
  possibly one-item lists) both arrive here. The dedup key is the event ``id``, else a sha256 of
  email_id + event + recipient + time.
- **``/activity/search`` events** (:func:`normalise_activity`): ``event`` (``hard-bounced``, ``rejected``, ...:
  other names than the webhooks'), ``date``, ``email_id``, ``recipient``, ``smtp_response``, ``reason``,
  ``host`` and ``custom_headers`` as an object keyed by header name. The dedup key is deterministic
  (``activity:<email_id>:<event>:<recipient>``), so a search made twice records nothing twice.

Also here: which body fields are lists by nature (:data:`FORM_LIST_FIELDS`) and what makes a body item an
event at all (:func:`is_event`), for the webhook receiver's HTTP decoding.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

from worker.infrastructure.models import EventType, utcnow
from worker.providers.base import NormalizedEvent, WebhookHandler

PROVIDER = "smtp2go"

#: SMTP2Go event names -> our type, for webhooks (and the aliases some integrations send) and for
#: ``/activity/search`` (``ACTIVITY_EVENT_NAMES``); anything else is UNKNOWN.
EVENT_MAP: dict[str, EventType] = {
    "processed": EventType.PROCESSED,
    "delivered": EventType.DELIVERED,
    "open": EventType.OPEN,
    "opened": EventType.OPEN,
    "click": EventType.CLICK,
    "clicked": EventType.CLICK,
    "bounce": EventType.BOUNCE,
    "spam": EventType.SPAM,
    "spam_complaint": EventType.SPAM,
    "unsubscribe": EventType.UNSUBSCRIBE,
    "unsubscribed": EventType.UNSUBSCRIBE,
    "resubscribe": EventType.RESUBSCRIBE,
    "reject": EventType.REJECT,
    # /activity/search names (``processed``, ``delivered`` and ``spam`` are the same as the webhooks')
    "hard-bounced": EventType.BOUNCE,
    "soft-bounced": EventType.BOUNCE,
    "rejected": EventType.REJECT,
    "resubscribed": EventType.RESUBSCRIBE,
}
#: The event names ``/activity/search`` documents (its ``event_types`` filter takes only these).
ACTIVITY_EVENT_NAMES = ("processed", "delivered", "soft-bounced", "hard-bounced", "rejected", "spam", "unsubscribed",
                        "resubscribed", "opened", "clicked")
#: Activity names that carry the bounce type in the name.
_BOUNCE_IN_NAME = {"hard-bounced": "hard", "soft-bounced": "soft"}
#: Webhook form fields that are lists by nature: one recipient must still arrive as a one-element list.
FORM_LIST_FIELDS = frozenset({"recipients"})

_TRACKING_HEADER = "x-mailworker-id"
_MAX_TEXT = 8000  # url, user agent, detail: TEXT columns, and nobody needs more
_SMTP_CODE_RE = re.compile(r"^\s*([245])(?:\d\d|\.\d)")
_MIN_YEAR, _MAX_YEAR = 1971, 9998


# --------------------------------------------------------------------------------------------- normalising


def _scalar(value: Any) -> str | None:
    """Form bodies may arrive as ``{"k": ["v"]}`` and JSON may carry numbers; empty means absent."""
    if isinstance(value, list | tuple):
        value = next((v for v in value if v not in (None, "")), None)
    if value is None or isinstance(value, bool | dict | list | tuple):
        return None
    return str(value).strip() or None


def _recipient_list(value: Any) -> tuple[str, ...]:
    """``recipients`` as a list, a comma-separated string, or a JSON list flattened into a form field."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    out: list[str] = []
    for item in value if isinstance(value, list | tuple) else [value]:
        for part in item.split(",") if isinstance(item, str) else ():
            addr = (parseaddr(part)[1] if "<" in part else part).strip().lower()
            if addr and addr not in out:
                out.append(addr)
    return tuple(out)


def parse_time(value: Any) -> datetime | None:
    """ISO-8601 (``Z`` or an offset; naive means UTC), unix seconds (int, float or digits), or RFC 2822."""
    text = _scalar(value)
    if text is None:
        return None
    try:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
            dt = datetime.fromtimestamp(seconds / 1000 if seconds > 1e11 else seconds, UTC)  # ms too
        else:
            try:
                dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
            except ValueError:
                dt = parsedate_to_datetime(text)
    except (OverflowError, OSError, TypeError, ValueError, IndexError):
        return None
    dt = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)
    return dt if 1971 <= dt.year <= 9998 else None


def _header_from(container: Any, name: str) -> str | None:
    """Header ``name`` in ``custom_headers``/``headers``: a dict, JSON, ``{header, value}`` items, ``K: v``."""
    if isinstance(container, str) and container.strip()[:1] in ("[", "{"):
        try:
            container = json.loads(container)
        except ValueError:
            return None
    if isinstance(container, dict):
        keyed = {str(k).lower(): v for k, v in container.items()}
        if name in keyed:
            return _scalar(keyed[name])
        if str(keyed.get("header") or keyed.get("name") or "").lower() == name:
            return _scalar(keyed.get("value"))
        return None
    for item in container if isinstance(container, list | tuple) else [container]:
        if isinstance(item, str):
            key, _, value = item.partition(":")
            found = value.strip() if key.strip().lower() == name else None
        else:
            found = _header_from(item, name) if isinstance(item, dict) else None
        if found:
            return found
    return None


def _bounce_type(raw: str | None, message: str | None) -> str | None:
    """SMTP2Go's ``bounce`` field; failing that the SMTP code (5xx hard, 4xx soft); else unknown."""
    for kind in ("hard", "soft"):
        if (raw or "").lower().startswith(kind):
            return kind
    match = _SMTP_CODE_RE.match(message or "")
    return ("hard" if match.group(1) == "5" else "soft") if match else None


def is_event(item: Any) -> bool:
    """Whether a decoded body item is an SMTP2Go event: an object carrying ``event`` or ``email_id`` (anything
    else cannot be linked or classified)."""
    return isinstance(item, dict) and ("event" in item or "email_id" in item)


def activity_event_names(types: Iterable[EventType]) -> list[str]:
    """The ``/activity/search`` ``event_types`` that stand for ``types`` (sorted)."""
    wanted = set(types)
    return sorted(name for name in ACTIVITY_EVENT_NAMES if EVENT_MAP[name] in wanted)


def normalise_activity(event: Mapping[str, Any]) -> NormalizedEvent:
    """Turn one ``/activity/search`` event into a :class:`NormalizedEvent`; never raises.

    Read as the webhook it stands for would be (the same time, recipient and detail rules); its key is
    ``activity:<email_id>:<event>:<recipient>``, the same on every search.
    """
    name = (_scalar(event.get("event")) or "").lower()
    recipient = event.get("recipient")
    as_webhook = {
        "event": name, "email_id": event.get("email_id"), "rcpt": recipient,
        "time": event.get("date"), "id": f"activity:{event.get('email_id')}:{name}:{recipient}",
        "message": event.get("smtp_response") or event.get("reason"), "reason": event.get("reason"),
        "host": event.get("host"), _TRACKING_HEADER: _header_from(event.get("custom_headers"), _TRACKING_HEADER),
    }
    ev = normalise_webhook({k: v for k, v in as_webhook.items() if v not in (None, "")})
    return replace(ev, raw={**event, "source": "activity_search"})


def normalise_webhook(payload: Mapping[str, Any]) -> NormalizedEvent:
    """Turn one webhook body (JSON object or flat form dict) into a :class:`NormalizedEvent`; never raises."""
    fields = {str(k).lower(): v for k, v in payload.items()}

    def get(name: str) -> str | None:
        return _scalar(fields.get(name))

    raw_event = (get("event") or "").lower()
    event_type = EVENT_MAP.get(raw_event, EventType.UNKNOWN)
    email_id = get("email_id")
    tracking_ref = get(_TRACKING_HEADER)
    for key in ("custom_headers", "headers"):
        if tracking_ref is None and key in fields:
            tracking_ref = _header_from(fields[key], _TRACKING_HEADER)
    recipients = _recipient_list(fields.get("recipients"))
    rcpt = _recipient_list(get("rcpt"))
    recipient = None
    if event_type != EventType.PROCESSED:  # processed is about the message: recipient NULL
        recipient = rcpt[0] if rcpt else (recipients[0] if len(recipients) == 1 else None)

    occurred_at, time_source = parse_time(get("time")), "time"
    if occurred_at is None:
        occurred_at, time_source = parse_time(get("sendtime")), "sendtime"
    if occurred_at is None:
        occurred_at, time_source = utcnow(), "received"

    event_id = get("id")
    if event_id and len(event_id) <= 191:
        key = event_id
    else:
        raw_time = get("time") or get("sendtime") or ""
        parts = [email_id or "", event_type.value if event_type != EventType.UNKNOWN else raw_event,
                 recipient or ",".join(recipients), raw_time]
        if event_id or not raw_time:  # an over-long id, or no time at all: the whole body is the identity
            parts.append(event_id or json.dumps(payload, sort_keys=True, default=str))
        key = "sha256:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    message = get("message")
    return NormalizedEvent(
        provider_event_id=key,
        event_type=event_type,
        raw_event=raw_event[:64] or "(none)",
        occurred_at=occurred_at,
        time_source=time_source,
        email_id=email_id if email_id and len(email_id) <= 128 else None,
        tracking_ref=tracking_ref if tracking_ref and len(tracking_ref) <= 64 else None,
        recipient=recipient[:320] if recipient else None,
        recipients=recipients,
        bounce_type=(_bounce_type(get("bounce") or _BOUNCE_IN_NAME.get(raw_event), message)
                     if event_type == EventType.BOUNCE else None),
        message=message,
        reason=get("reason"),
        context=get("context"),
        host=get("host"),
        user_agent=get("user-agent") or get("user_agent"),
        url=get("url"),
        message_id_header=(get("message-id") or get("message_id") or "")[:255] or None,
        provider=PROVIDER,
        raw=payload,
    )


def normalise_stored(raw: Mapping[str, Any]) -> NormalizedEvent:
    """A stored event body (``NormalizedEvent.raw``) normalised again: a webhook body or an activity event."""
    if raw.get("source") == "activity_search" and "date" in raw:
        return normalise_activity(raw)
    return normalise_webhook(raw)


def _secrets(settings: Any) -> tuple[str, ...]:
    return tuple(settings.smtp2go_webhook_secrets)


WEBHOOKS = WebhookHandler(secrets=_secrets, is_event=is_event, normalise=normalise_stored,
                          list_fields=FORM_LIST_FIELDS)


