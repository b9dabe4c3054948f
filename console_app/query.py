"""The message search: a small query grammar, compiled to indexed SQL, paged newest first by keyset.

Grammar (terms are ANDed; values may be quoted: ``subject:"password reset"``)::

    to:alice@example.com      a recipient (to, cc or bcc), exact address            ix_recipients_address
    status:failed,bounced     one or more statuses; also ``parked`` and ``held``     ix_messages_status_queued_at
    lane:bulk                 the lane: transactional or bulk (bounded by the other terms and the page)
    batch:<batch id>          the emails one send_batch task carried                ix_messages_batch_id
    reference:ticket_reply:42 the application's reference, exact                    ix_messages_reference
    id:<tracking id>          exact                                                 primary key
    email_id:<smtp2go id>     SMTP2Go's email_id, exact                             unique index
    subject:reset             a substring of the subject (a scan, bounded by the other terms and the page)
    after:2026-11-20  before:2026-11-21T09:30  after:24h  after:7d     queued_at    ix_messages_queued_at
    anything else             free text: an address (contains @) is ``to:``, a UUID is ``id:``, otherwise
                              the subject contains it or the reference is it

Pagination is by keyset on ``(queued_at, id)``: a page is "the next N rows older than the last one seen", so
page 1000 costs what page 1 costs (OFFSET would read and throw away every row before it).
"""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from worker.infrastructure.models import Lane, Message, MessageStatus, Recipient, utcnow

KEYS = ("to", "status", "lane", "batch", "reference", "id", "email_id", "subject", "before", "after")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class QueryError(ValueError):
    """The query cannot be understood; the text says which term and why."""


@dataclass
class Query:
    text: str = ""
    to: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    lanes: list[str] = field(default_factory=list)
    batch: str | None = None
    reference: str | None = None
    ids: list[str] = field(default_factory=list)
    email_id: str | None = None
    subject: list[str] = field(default_factory=list)
    before: datetime | None = None
    after: datetime | None = None
    free: list[str] = field(default_factory=list)


def parse_time(term: str, value: str, now: datetime | None = None) -> datetime:
    """``2026-11-20``, ``2026-11-20T09:30`` (UTC unless an offset is given), or relative: ``30m``, ``24h``, ``7d``.

    A date that cannot be a UTC datetime (``999999999d`` ago, ``0001-01-01T00:00+14:00``) is a
    :class:`QueryError` naming the term, like any other bad date.
    """
    text = value.strip()
    rel = _RELATIVE.match(text.lower())
    try:
        if rel:
            return (now or utcnow()) - timedelta(**{_UNITS[rel.group(2)]: int(rel.group(1))})
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise QueryError(f"{term}: {_shown(value)} is out of range (years 1 to 9999 UTC)") from None
    except ValueError:
        raise QueryError(f"{term}: {_shown(value)} is not a date (2026-11-20, 2026-11-20T09:30, or 24h / 7d ago)"
                         ) from None


def _shown(value: str, limit: int = 60) -> str:
    """The user's value for an error message: quoted, and cut short (a query can be kilobytes)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: take the words as they are
        return text.split()


def parse(text: str, now: datetime | None = None) -> Query:
    query = Query(text=text.strip())
    for token in _split(text):
        key, sep, value = token.partition(":")
        key = key.lower()
        if not sep or key not in KEYS:
            query.free.append(token)
            continue
        value = value.strip()
        if not value:
            raise QueryError(f"{key}: needs a value")
        if key == "to":
            query.to.append(value)
        elif key == "status":
            for word in value.lower().split(","):
                if not word:
                    continue
                if word not in {s.value for s in MessageStatus}:
                    known = ", ".join(s.value for s in MessageStatus)
                    raise QueryError(f"status: {word!r} is not a status ({known})")
                query.statuses.append(word)
        elif key == "lane":
            for word in value.lower().split(","):
                if not word:
                    continue
                if word not in {lane.value for lane in Lane}:
                    raise QueryError(f"lane: {_shown(word)} is not a lane ({', '.join(lane.value for lane in Lane)})")
                query.lanes.append(word)
        elif key == "batch":
            query.batch = value
        elif key == "reference":
            query.reference = value
        elif key == "id":
            query.ids.append(value)
        elif key == "email_id":
            query.email_id = value
        elif key == "subject":
            query.subject.append(value)
        elif key == "before":
            query.before = parse_time(key, value, now)
        elif key == "after":
            query.after = parse_time(key, value, now)
    return query


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _recipient_is(address: str, dialect: str) -> ColumnElement[bool]:
    """Addresses match case-insensitively. MariaDB's collation already does (ix_recipients_address serves it);
    SQLite compares BINARY, so there the match is on lower(address) (a scan of recipients: the embedded
    database is the small one)."""
    if dialect == "sqlite":
        match = func.lower(Recipient.address) == address.lower()
    else:
        match = Recipient.address == address
    return Message.id.in_(select(Recipient.message_id).where(match))


def _status_condition(statuses: list[str]) -> ColumnElement[bool]:
    return Message.status.in_([MessageStatus(s) for s in statuses])


def conditions(query: Query, dialect: str = "mysql") -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for address in query.to:
        where.append(_recipient_is(address, dialect))
    if query.statuses:
        where.append(_status_condition(query.statuses))
    if query.lanes:
        where.append(Message.lane.in_([Lane(lane) for lane in query.lanes]))
    if query.batch is not None:
        where.append(Message.batch_id == query.batch)
    if query.reference is not None:
        where.append(Message.reference == query.reference)
    if query.ids:
        where.append(Message.id.in_(query.ids))
    if query.email_id is not None:
        where.append(Message.smtp2go_message_id == query.email_id)
    for text in query.subject:
        where.append(Message.subject.like(_like(text), escape="\\"))
    if query.before is not None:
        where.append(Message.queued_at < query.before)
    if query.after is not None:
        where.append(Message.queued_at >= query.after)
    for word in query.free:
        if "@" in word:
            where.append(_recipient_is(word, dialect))
        elif _UUID.match(word):
            where.append(Message.id == word.lower())
        else:
            where.append(or_(Message.subject.like(_like(word), escape="\\"), Message.reference == word))
    return where


# ------------------------------------------------------------------------------------------------ paging


def encode_cursor(queued_at: datetime, tracking_id: str) -> str:
    raw = f"{queued_at.astimezone(UTC).isoformat()}|{tracking_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The cursor's position; a :class:`QueryError` for anything :func:`encode_cursor` could not have made
    (tampered, truncated, or a time outside what a UTC datetime can hold)."""
    damaged = QueryError("the page link is damaged: start again from the newest")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, tracking_id = raw.partition("|")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None or not tracking_id or len(tracking_id) > 64 or "\0" in tracking_id:
            raise damaged
        return when.astimezone(UTC), tracking_id
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise damaged from None


@dataclass
class Page:
    rows: list[Any]
    older: str | None  # cursor of the next (older) page
    newer: str | None  # cursor of the previous (newer) page
    recipients: dict[str, list[Recipient]]


def search_statement(query: Query, *, limit: int, older_than: tuple[datetime, str] | None = None,
                     newer_than: tuple[datetime, str] | None = None, dialect: str = "mysql") -> Select[Any]:
    """Newest first (``older_than``: the page after a cursor); ``newer_than`` reads oldest first (reversed later)."""
    columns = (Message.id, Message.status, Message.subject, Message.reference, Message.transport,
               Message.queued_at, Message.sent_at, Message.ambiguous_since, Message.held_since, Message.last_error)
    stmt = select(*columns).where(*conditions(query, dialect))
    if older_than is not None:
        when, tid = older_than
        stmt = stmt.where(Message.queued_at <= when, or_(Message.queued_at < when, Message.id < tid))
    if newer_than is not None:
        when, tid = newer_than
        stmt = stmt.where(Message.queued_at >= when, or_(Message.queued_at > when, Message.id > tid))
        return stmt.order_by(Message.queued_at.asc(), Message.id.asc()).limit(limit)
    return stmt.order_by(Message.queued_at.desc(), Message.id.desc()).limit(limit)


def search(session: Session, query: Query, *, page_size: int, cursor: str | None = None,
           direction: str = "older") -> Page:
    anchor = decode_cursor(cursor) if cursor else None
    backwards = anchor is not None and direction == "newer"
    stmt = search_statement(query, limit=page_size + 1, older_than=anchor if not backwards else None,
                            newer_than=anchor if backwards else None,
                            dialect=session.get_bind().dialect.name)
    rows = list(session.execute(stmt).all())
    more = len(rows) > page_size
    rows = rows[:page_size]
    if backwards:
        rows.reverse()
    older = newer = None
    if rows:
        first, last = rows[0], rows[-1]
        if (more and not backwards) or (backwards and anchor is not None):
            older = encode_cursor(last.queued_at, last.id)
        if (backwards and more) or (not backwards and anchor is not None):
            newer = encode_cursor(first.queued_at, first.id)
    recipients: dict[str, list[Recipient]] = {}
    ids = [r.id for r in rows]
    if ids:
        for rcpt in session.scalars(select(Recipient).where(Recipient.message_id.in_(ids))
                                    .order_by(Recipient.id)):
            recipients.setdefault(rcpt.message_id, []).append(rcpt)
    return Page(rows=rows, older=older, newer=newer, recipients=recipients)


def scans(query: Query) -> bool:
    """Does the query match substrings (``subject:`` or free words)? Then no count is shown: counting would walk
    every row the page's LIMIT spares."""
    return bool(query.subject) or any("@" not in w and not _UUID.match(w) for w in query.free)


def count_estimate(session: Session, query: Query, cap: int = 10_000) -> tuple[int, bool]:
    """How many match, counted up to ``cap`` (a LIMITed subquery: never a full count of a million rows)."""
    inner = select(Message.id).where(*conditions(query, session.get_bind().dialect.name)).limit(cap + 1).subquery()
    found = int(session.scalar(select(func.count()).select_from(inner)) or 0)
    return min(found, cap), found > cap
