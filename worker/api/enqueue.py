"""The application-facing API: ``enqueue_email`` and ``get_email_status``.

``enqueue_email`` validates, writes the message with its recipients and attachments in one transaction,
commits, and only then publishes ``mailworker.send_email(tracking_id)``. The database row is the source of
truth: when the publish fails (broker down), the sweeper publishes the row later; the caller never retries.
``published_at`` is written with the row when the task is published at once, so the sweeper leaves a row that
merely waits in a broker backlog alone (see :mod:`worker.operations.sweeper`); a failed publish clears it again.
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from datetime import datetime, timedelta
from email.utils import make_msgid
from typing import Any

from sqlalchemy import URL, Connection, event, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, scoped_session, selectinload

from worker.api.validation import (
    MAX_TOTAL_BYTES,
    Address,
    check_attachments,
    check_headers,
    check_optional_str,
    check_send_at,
    check_template_data,
    check_text,
    json_size,
    parse_address,
    parse_address_list,
)
from worker.errors import InvalidEmail
from worker.infrastructure.config import get_settings
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import (
    AttemptOutcome,
    Message,
    MessageStatus,
    RecipientKind,
    RecipientStatus,
    utcnow,
)
from worker.sending.jobs import A, M, R
from worker.sending.publish import publish_send

log = logging.getLogger(__name__)

#: ``send_at`` closer than this is published with a broker ETA; later ones wait for the sweeper, so no
#: broker message ever carries a long countdown (Redis redelivers those after the visibility timeout).
SHORT_ETA = timedelta(seconds=60)


def enqueue_email(
    to: str | list[str],
    subject: str | None = None,
    *,
    html_body: str | None = None,
    text_body: str | None = None,
    sender: str | None = None,
    cc: str | list[str] | None = None,
    bcc: str | list[str] | None = None,
    reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, bytes, str]] | None = None,
    template_id: str | None = None,
    template_data: dict[str, Any] | None = None,
    reference: str | None = None,
    idempotency_key: str | None = None,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    connection: Connection | Session | scoped_session[Any] | None = None,
) -> str:
    """Validate and store an email, then hand it to the worker. Returns the tracking id (UUID string).

    ``expires_at`` (aware): not handed to a transport by then, the email is ``expired`` instead of sent.
    ``connection`` (a SQLAlchemy ``Connection`` or ``Session`` on DATABASE_URL's database): the rows are written
    in the caller's transaction and the task is published only once that transaction commits -- nothing is sent
    if it rolls back (see :func:`_publish_after_commit`).
    """
    settings = get_settings()
    to_list = parse_address_list("to", to, required=True)
    cc_list = parse_address_list("cc", cc)
    bcc_list = parse_address_list("bcc", bcc)
    raw_sender = sender if sender is not None else settings.mail_default_sender
    if raw_sender is None:
        raise InvalidEmail("sender", "no sender given and MAIL_DEFAULT_SENDER is not set")
    from_addr = parse_address("sender", raw_sender)
    reply = parse_address("reply_to", reply_to) if reply_to is not None else None
    subject = check_optional_str("subject", subject, max_len=998)
    extra_headers = check_headers(headers)
    files = check_attachments(attachments)
    when = check_send_at(send_at)
    expiry = check_send_at(expires_at, "expires_at")
    caller = _caller_connection(connection) if connection is not None else None
    reference = check_optional_str("reference", reference, header=False)
    idempotency_key = check_optional_str("idempotency_key", idempotency_key, header=False)
    template_id = check_optional_str("template_id", template_id)
    for field_name, body in (("html_body", html_body), ("text_body", text_body)):
        if body is not None:
            if not isinstance(body, str):
                raise InvalidEmail(field_name, f"expected a string, got {type(body).__name__}")
            check_text(field_name, body)
    template_data = check_template_data(template_data)
    if not (html_body or text_body or template_id):
        raise InvalidEmail("body", "give html_body, text_body or template_id")
    if template_data is not None and not template_id:
        raise InvalidEmail("template_data", "given without template_id")
    if reply is not None:
        for name in extra_headers:
            if name.lower() == "reply-to":
                raise InvalidEmail(f"headers[{name}]", "given together with reply_to; a message has one Reply-To")

    size = _encoded_size(
        attachments=sum(_base64_len(len(c)) + len(f.encode()) + len(m) for f, c, m in files),
        html_body=len((html_body or "").encode()), text_body=len((text_body or "").encode()),
        subject=len((subject or "").encode()),
        headers=sum(len(n) + len(v.encode()) + 4 for n, v in extra_headers.items()),  # "Name: value\r\n"
        template_data=json_size(template_data) if template_data is not None else 0,
        to=sum(len(a.formatted.encode()) for a in (*to_list, *cc_list, *bcc_list, from_addr, *_opt(reply))),
    )

    if idempotency_key:
        existing = _find_by_idempotency_key(idempotency_key, caller[0] if caller else None)
        if existing:
            return existing

    tracking_id = str(uuid.uuid4())
    now = utcnow()
    # A far ``send_at`` is published by the sweeper shortly before it is due (published_at stays NULL).
    publish_now = when is None or when - now <= SHORT_ETA
    domain = from_addr.address.rsplit("@", 1)[1]
    # Core inserts on one connection: three round trips (message, recipients, commit); the ORM unit of work
    # cost more CPU than the rest of enqueue_email together (docs/benchmarks.md).
    message = {
        "id": tracking_id, "status": MessageStatus.QUEUED, "sender": from_addr.formatted,
        "reply_to": reply.formatted if reply else None, "subject": subject, "text_body": text_body,
        "html_body": html_body, "headers": extra_headers or None, "template_id": template_id,
        "template_data": template_data, "reference": reference, "idempotency_key": idempotency_key,
        "message_id_header": make_msgid(idstring=tracking_id.replace("-", ""), domain=domain),
        "size_bytes": size, "queued_at": now, "send_at": when, "expires_at": expiry, "next_attempt_at": when,
        "attempts": 0, "crashes": 0, "updated_at": now,
        # Recorded before the publish: a worker may claim the row before this function returns. Left NULL in
        # the caller's transaction: if its commit or the publish after it goes wrong, the sweeper's grace covers it.
        "published_at": now if publish_now and caller is None else None,
    }
    recipients = [
        {"message_id": tracking_id, "address": addr.address, "display_name": addr.name, "kind": kind,
         "status": RecipientStatus.QUEUED, "open_count": 0, "click_count": 0}
        for kind, addrs in ((RecipientKind.TO, to_list), (RecipientKind.CC, cc_list), (RecipientKind.BCC, bcc_list))
        for addr in addrs
    ]
    attachment_rows = [
        {"message_id": tracking_id, "filename": filename, "mimetype": mimetype, "size_bytes": len(content),
         "content": content}
        for filename, content, mimetype in files
    ]
    if caller is not None:
        conn, session = caller
        try:
            _insert_rows(conn, message, recipients, attachment_rows)
        except IntegrityError:
            existing = _find_by_idempotency_key(idempotency_key, conn) if idempotency_key else None
            if existing:
                return existing
            raise
        if publish_now:
            _publish_after_commit(conn, session, tracking_id, when)
        log.info("email queued in the caller's transaction tracking_id=%s recipients=%d send_at=%s", tracking_id,
                 len(recipients), when.isoformat() if when else "now")
        return tracking_id
    try:
        with get_engine().begin() as conn:
            _insert_rows(conn, message, recipients, attachment_rows)
    except IntegrityError:
        if idempotency_key:
            existing = _find_by_idempotency_key(idempotency_key)
            if existing:
                return existing
        raise

    if publish_now and not publish_send(tracking_id, eta=when):
        # Broker down: no publish on record, so the sweeper's next pass after its grace publishes the row.
        try:
            with get_engine().begin() as conn:
                conn.execute(update(M).where(M.c.id == tracking_id).values(published_at=None))
        except SQLAlchemyError as err:
            # The email is stored: raising now would make the caller send it twice. The sweeper still
            # publishes it, only after SWEEP_REPUBLISH_AFTER instead of its grace.
            log.warning("could not clear published_at tracking_id=%s: %s", tracking_id, type(err).__name__)
    log.info("email queued tracking_id=%s recipients=%d send_at=%s", tracking_id,
             len(recipients), when.isoformat() if when else "now")
    return tracking_id


def _base64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _opt(address: Address | None) -> tuple[Address, ...]:
    return (address,) if address is not None else ()


def _encoded_size(**parts: int) -> int:
    """The message's size as stored and sent: every part, encoded (UTF-8 text, base64 attachments, JSON
    ``template_data``). Over SMTP2Go's limit, the error names the largest part, the likeliest culprit."""
    size = sum(parts.values())
    if size >= MAX_TOTAL_BYTES:
        largest = max(parts, key=lambda name: parts[name])
        raise InvalidEmail(largest, f"the message is {size} bytes encoded ({largest}: {parts[largest]} of them); "
                                    f"the limit is {MAX_TOTAL_BYTES} bytes")
    return size


def _insert_rows(conn: Connection, message: dict[str, Any], recipients: list[dict[str, Any]],
                 attachments: list[dict[str, Any]]) -> None:
    conn.execute(insert(M), message)
    conn.execute(insert(R), recipients)
    if attachments:
        conn.execute(insert(A), attachments)


def _find_by_idempotency_key(key: str, conn: Connection | None = None) -> str | None:
    if conn is not None:  # the caller's transaction: its own uncommitted rows count too
        return conn.scalar(select(M.c.id).where(M.c.idempotency_key == key))
    with session_scope() as session:
        return session.scalar(select(Message.id).where(Message.idempotency_key == key))


# ------------------------------------------------------------------------------- the caller's transaction


def _caller_connection(connection: Any) -> tuple[Connection, Session | None]:
    """The caller's ``Connection`` (and ``Session``, when one was given), checked to be on our database."""
    if isinstance(connection, scoped_session):  # Flask-SQLAlchemy's ``db.session``
        connection = connection()
    session: Session | None = None
    if isinstance(connection, Session):
        session, conn = connection, connection.connection()
    elif isinstance(connection, Connection):
        conn = connection
    else:
        raise InvalidEmail("connection", f"expected a SQLAlchemy Connection or Session, got "
                                         f"{type(connection).__name__}")
    if not _same_database(conn.engine.url, get_engine().url):
        raise InvalidEmail("connection", "is not on DATABASE_URL's database (the worker would never see the rows)")
    return conn, session


def _same_database(theirs: URL, ours: URL) -> bool:
    if theirs.get_backend_name() != ours.get_backend_name():
        return False
    if ours.get_backend_name() == "sqlite":
        return os.path.realpath(theirs.database or "") == os.path.realpath(ours.database or "")
    return (theirs.host or "localhost", theirs.port or 3306, theirs.database) == (
        ours.host or "localhost", ours.port or 3306, ours.database)


#: Tracking ids written in a caller's transaction and not yet published, per Session / Connection. One pair of
#: listeners per transaction owner (registered once), however many emails it enqueues.
_PENDING_KEY = "mailworker_pending_publishes"
_pending_conns: weakref.WeakKeyDictionary[Connection, list[tuple[str, datetime | None]]] = \
    weakref.WeakKeyDictionary()

#: A Connection's ``commit`` event fires just before the database commits: the publish waits this long, so the
#: worker finds the row committed (a slower commit only means the sweeper publishes it after its grace).
CONNECTION_COMMIT_DELAY = 1.0


def _publish_after_commit(conn: Connection, session: Session | None, tracking_id: str,
                          when: datetime | None) -> None:
    """Publish ``send_email(tracking_id)`` once the caller's transaction commits; never if it rolls back.

    A Session: its ``after_commit`` event (after the database committed). A Connection: its ``commit`` event
    (just before the database commits; the publish carries a short countdown). The row's ``published_at`` stays
    NULL, so a publish lost anywhere on this path is made by the sweeper after its grace.
    """
    if session is not None:
        pending = session.info.get(_PENDING_KEY)
        if pending is None:
            pending = session.info[_PENDING_KEY] = []
            event.listen(session, "after_commit", _session_committed)
            event.listen(session, "after_rollback", _session_rolled_back)
        pending.append((tracking_id, when))
        return
    pending_c = _pending_conns.get(conn)
    if pending_c is None:
        pending_c = _pending_conns[conn] = []
        event.listen(conn, "commit", _connection_committed)
        event.listen(conn, "rollback", _connection_rolled_back)
    pending_c.append((tracking_id, when))


def _publish_all(pending: list[tuple[str, datetime | None]], *, delay: float = 0.0) -> None:
    items, pending[:] = list(pending), []
    for tracking_id, when in items:
        if delay and when is None:
            publish_send(tracking_id, countdown=delay)
        else:
            publish_send(tracking_id, eta=when)


def _session_committed(session: Session) -> None:
    _publish_all(session.info.get(_PENDING_KEY, []))


def _session_rolled_back(session: Session) -> None:
    pending = session.info.get(_PENDING_KEY)
    if pending:
        log.info("caller's transaction rolled back: %d email(s) not published", len(pending))
        pending.clear()


def _connection_committed(conn: Connection) -> None:
    _publish_all(_pending_conns.get(conn, []), delay=CONNECTION_COMMIT_DELAY)


def _connection_rolled_back(conn: Connection) -> None:
    pending = _pending_conns.get(conn)
    if pending:
        log.info("caller's transaction rolled back: %d email(s) not published", len(pending))
        pending.clear()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def get_email_status(tracking_id: str) -> dict[str, Any] | None:
    """Everything known about one email, or ``None`` for an unknown id."""
    if not isinstance(tracking_id, str):
        return None
    with session_scope() as session:
        # One snapshot for the message, its recipients and its events (three SELECTs): under MariaDB's READ
        # COMMITTED each would see the commits made before it, so an event applied in between showed up in the
        # event list with its recipient still unchanged. SQLite's transactions are one snapshot already.
        if session.get_bind().dialect.name in ("mysql", "mariadb"):
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        message = session.scalar(
            select(Message)
            .where(Message.id == tracking_id)
            .options(selectinload(Message.recipients), selectinload(Message.events),
                     selectinload(Message.send_attempts))
        )
        if message is None:
            return None
        return {
            "id": message.id,
            "status": message.status.value,
            "transport": message.transport,
            "smtp2go_message_id": message.smtp2go_message_id,
            "message_id_header": message.message_id_header,
            "provider": message.provider,
            "provider_message_id": next((a.provider_message_id for a in reversed(message.send_attempts)
                                         if a.outcome == AttemptOutcome.ACCEPTED), message.smtp2go_message_id),
            "attempts": [{"provider": a.provider, "outcome": a.outcome.value, "at": _iso(a.started_at),
                          "finished_at": _iso(a.finished_at), "error": a.error,
                          "provider_message_id": a.provider_message_id, "latency_ms": a.latency_ms}
                         for a in message.send_attempts],
            "attempt_count": message.attempts,
            "last_error": message.last_error,
            "fallback_reason": message.fallback_reason,
            "ambiguous": message.status == MessageStatus.PARKED,
            "held": message.status == MessageStatus.HELD,
            "reference": message.reference,
            "sender": message.sender,
            "subject": message.subject,
            "queued_at": _iso(message.queued_at),
            "send_at": _iso(message.send_at),
            "expires_at": _iso(message.expires_at),
            "next_attempt_at": _iso(message.next_attempt_at),
            "sent_at": _iso(message.sent_at),
            "failed_at": _iso(message.failed_at),
            "delivered_at": _iso(message.email_delivered_at),
            "bounced_at": _iso(message.email_bounced_at),
            "opened_at": _iso(message.email_opened_at),
            "clicked_at": _iso(message.email_clicked_at),
            "complained_at": _iso(message.email_complained_at),
            "recipients": [
                {
                    "address": r.address,
                    "name": r.display_name,
                    "kind": r.kind.value,
                    "status": r.status.value,
                    "error": r.error,
                    "delivered_at": _iso(r.delivered_at),
                    "bounced_at": _iso(r.bounced_at),
                    "bounce_type": r.bounce_type,
                    "opened_at": _iso(r.opened_at),
                    "open_count": r.open_count,
                    "clicked_at": _iso(r.clicked_at),
                    "click_count": r.click_count,
                    "complained_at": _iso(r.complained_at),
                }
                for r in message.recipients
            ],
            "events": [
                {
                    "type": e.event_type.value,
                    "recipient": e.recipient,
                    "occurred_at": _iso(e.occurred_at),
                    "bounce_type": e.bounce_type,
                    "url": e.url,
                    "detail": e.detail,
                }
                for e in message.events
            ],
        }
