"""The suppression list: addresses mailworker must not send to.

Addresses are stored lower-cased (the domain is case-insensitive and SMTP2Go reports addresses in whatever case
the receiving server used; treating the local part case-insensitively too is what every provider does).
Entries come from SMTP2Go events (hard bounce, spam complaint, unsubscribe, reject; see :mod:`worker.tracking.events`)
and from operators (``mailworker suppressions add|remove``). The send path drops suppressed recipients before it
sends.

Every entry has a scope: ``list_id`` NULL suppresses for every list and for transactional mail (hard bounce,
spam complaint, reject, manual), a list id only for mail of that list (an unsubscribe: a user who leaves the
newsletter still gets password resets). The unique key is (address, ``scope``), ``scope`` being the list id or
``""``. An erased address stays suppressed as ``hmac:<hex>`` (:func:`worker.compliance.keys.address_hash`), which
the send path matches too.

Every function takes the caller's session and never commits, so an event and the suppression it causes land in
the same transaction. :func:`add_suppression` is race-safe without savepoints: two event workers suppressing the
same address at once (a bounce and a complaint for two messages) use the database's own "insert unless the key
exists" (``INSERT IGNORE`` on MariaDB/MySQL, ``ON CONFLICT DO NOTHING`` on SQLite/PostgreSQL), so neither fails
and exactly one reports the address as new. Savepoints are avoided on purpose: pysqlite's SAVEPOINT handling is
broken unless the engine works around it, and a failed INSERT inside a savepoint still takes locks on MariaDB.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.api.validation import parse_address
from worker.compliance.keys import HASH_PREFIX
from worker.errors import InvalidEmail
from worker.infrastructure.models import EventType, Message, Suppression, TrackingEvent, utcnow

#: Reasons written by :mod:`worker.tracking.events`; operators may use any short word (``manual`` by default).
REASON_HARD_BOUNCE = "hard_bounce"
REASON_SPAM = "spam_complaint"
REASON_UNSUBSCRIBE = "unsubscribe"
#: SMTP2Go sends ``reject`` when the recipient is already on *its* suppression list, whatever the event's text.
REASON_REJECT = "reject"
REASON_MANUAL = "manual"

_MAX_REASON = 32  # Suppression.reason is VARCHAR(32)
_MAX_DETAIL = 4000
_MAX_LIST_ID = 64


def normalize_address(address: str) -> str:
    """Lenient normalisation for look-ups and removal: ``Name <A@B.com>`` and ``a@b.com`` are the same key."""
    text = (address or "").strip()
    if "<" in text:
        text = parseaddr(text)[1] or text
    return text.strip().lower()


def validate_address(address: Any) -> str:
    """Strict normalisation for additions: a real address, lower-cased; :class:`InvalidEmail` on ``address``."""
    return parse_address("address", address).address.lower()


def check_list_id(list_id: Any) -> str | None:
    """None (every list) or a short list id; :class:`InvalidEmail` on ``list_id`` otherwise."""
    if list_id is None:
        return None
    if not isinstance(list_id, str) or not list_id.strip() or len(list_id) > _MAX_LIST_ID:
        raise InvalidEmail("list_id", f"a list id is 1 to {_MAX_LIST_ID} characters")
    return list_id


def add_suppression(session: Session, address: str, reason: str, *, detail: str | None = None,
                    source_message_id: str | None = None, list_id: str | None = None,
                    origin: str | None = None, pushed: bool = False) -> bool:
    """Suppress ``address`` for ``list_id`` (None: every list); True if newly added, False if that scope already
    had it (kept as it was). ``address`` may be a ``hmac:`` hash (erasure keeps it suppressed that way).

    The first reason wins: a later complaint does not overwrite the hard bounce that suppressed the address first.
    """
    hashed = isinstance(address, str) and address.startswith(HASH_PREFIX)
    addr = address if hashed else validate_address(address)
    list_id = check_list_id(list_id)
    scope = list_id or ""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidEmail("reason", "a short reason is required (e.g. manual)")
    reason = reason.strip()
    if len(reason) > _MAX_REASON:
        raise InvalidEmail("reason", f"longer than {_MAX_REASON} characters")
    if session.scalar(select(Suppression.id).where(Suppression.address == addr,
                                                   Suppression.scope == scope)) is not None:
        return False
    values = {
        "address": addr,
        "list_id": list_id,
        "scope": scope,
        "origin": origin,
        "pushed_at": utcnow() if pushed else None,
        "reason": reason,
        "detail": detail[:_MAX_DETAIL] if detail else None,
        "source_message_id": source_message_id if source_message_id and len(source_message_id) <= 36 else None,
        "created_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    if dialect in {"mysql", "mariadb"}:
        stmt: Any = insert(Suppression).values(**values).prefix_with("IGNORE")
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(Suppression).values(**values).on_conflict_do_nothing(index_elements=["address", "scope"])
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(Suppression).values(**values).on_conflict_do_nothing(index_elements=["address", "scope"])
    else:  # any other backend: a savepoint around a plain INSERT
        try:
            with session.begin_nested():
                session.execute(insert(Suppression).values(**values))
        except IntegrityError:
            return False
        return True
    result = session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


_EVERY = object()


def remove_suppression(session: Session, address: str, list_id: Any = _EVERY) -> bool:
    """Take ``address`` off the list (every scope, unless ``list_id`` names one: None is the global entry);
    True if it was on it."""
    addr = address if address.startswith(HASH_PREFIX) else normalize_address(address)
    if not addr:
        return False
    stmt = delete(Suppression).where(Suppression.address == addr)
    if list_id is not _EVERY:
        stmt = stmt.where(Suppression.scope == (list_id or ""))
    result = session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


def is_suppressed(session: Session, address: str, list_id: str | None = None) -> bool:
    """Whether mail to ``address`` is suppressed: globally, or (``list_id`` given) for that list."""
    addr = normalize_address(address)
    scopes = ["", list_id] if list_id else [""]
    return bool(addr) and session.scalar(select(Suppression.id).where(
        Suppression.address == addr, Suppression.scope.in_(scopes)).limit(1)) is not None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def list_suppressions(session: Session, *, limit: int = 100, offset: int = 0,
                      search: str | None = None) -> list[dict[str, Any]]:
    """Newest first; ``search`` is a case-insensitive substring of the address (``%``/``_`` match literally)."""
    stmt = select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc())
    if search:
        needle = search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(Suppression.address).like(f"%{needle}%", escape="\\"))
    stmt = stmt.limit(max(0, int(limit))).offset(max(0, int(offset)))
    return [
        {
            "address": s.address,
            "reason": s.reason,
            "detail": s.detail,
            "source_message_id": s.source_message_id,
            "created_at": _iso(s.created_at),
            "list_id": s.list_id,
            "scope": s.list_id or "every list",
            "origin": s.origin,
        }
        for s in session.scalars(stmt)
    ]


def count_suppressions(session: Session) -> int:
    return int(session.scalar(select(func.count(Suppression.id))) or 0)


def message_list_id(session: Session, message_id: str | None) -> str | None:
    """The list a message was sent for (None: transactional, or unknown)."""
    column = Message.__table__.c.get("list_id")
    if not message_id or column is None:
        return None
    value = session.execute(select(column).where(Message.__table__.c.id == message_id)).scalar()
    return str(value) if value else None


def _later_event(session: Session, address: str, after: datetime, types: list[EventType]) -> bool:
    """Is an event of ``types`` for ``address`` that happened after ``after`` already stored? (hard bounces)"""
    cond = and_(TrackingEvent.recipient == address, TrackingEvent.event_type.in_(types),
                TrackingEvent.occurred_at > after,
                or_(TrackingEvent.event_type != EventType.BOUNCE, TrackingEvent.bounce_type == "hard"))
    return bool(session.scalar(select(exists().where(cond))))


def suppress_for_event(session: Session, address: str, event_type: EventType, occurred_at: datetime, *,
                       bounce_type: str | None = None, detail: str | None = None,
                       source_message_id: str | None = None, list_id: str | None = None) -> str | None:
    """The suppression effect of one provider event: ``"suppressed"``, ``"unsuppressed"`` or None.

    Hard bounce, spam complaint, unsubscribe and reject add the address; resubscribe removes it; a soft bounce
    never suppresses. SMTP2Go sends ``reject`` only for a recipient already on its own suppression list, so the
    reject itself is the fact, not its wording (which need not mention suppression); leaving the address off our
    list meant sending to it, and being refused, again and again. ``detail`` carries the text SMTP2Go gave, so
    the operator still sees why. Events can arrive out of order (SMTP2Go retries for 48 h), so the newest fact
    wins: nothing is added when a later resubscribe is already stored, and a resubscribe removes nothing when a
    later suppressing event is already stored. An unsubscribe from mail of a list (``list_id``) suppresses for
    that list only; everything else suppresses for every list.
    """
    addr = normalize_address(address)
    reason = None
    if event_type == EventType.BOUNCE and bounce_type == "hard":
        reason = REASON_HARD_BOUNCE
    elif event_type == EventType.SPAM:
        reason = REASON_SPAM
    elif event_type == EventType.UNSUBSCRIBE:
        reason = REASON_UNSUBSCRIBE
    elif event_type == EventType.REJECT:
        reason = REASON_REJECT
    if reason:
        if _later_event(session, addr, occurred_at, [EventType.RESUBSCRIBE]):
            return None
        scope = list_id if reason == REASON_UNSUBSCRIBE else None
        added = add_suppression(session, addr, reason, detail=detail, source_message_id=source_message_id,
                                list_id=scope)
        return "suppressed" if added else None
    if event_type == EventType.RESUBSCRIBE:
        if _later_event(session, addr, occurred_at,
                        [EventType.BOUNCE, EventType.SPAM, EventType.UNSUBSCRIBE, EventType.REJECT]):
            return None
        return "unsuppressed" if remove_suppression(session, addr) else None
    return None
