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
import re
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
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
from worker.celery_app import app
from worker.errors import InvalidEmail
from worker.infrastructure.config import get_settings
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import (
    AttemptOutcome,
    Lane,
    Message,
    MessageStatus,
    RecipientKind,
    RecipientStatus,
    utcnow,
)
from worker.sending.jobs import A, M, R
from worker.sending.publish import _send, publish_send

log = logging.getLogger(__name__)

#: ``send_at`` closer than this is published with a broker ETA; later ones wait for the sweeper, so no
#: broker message ever carries a long countdown (Redis redelivers those after the visibility timeout).
SHORT_ETA = timedelta(seconds=60)
#: The bulk lane's task: ``send_batch(tracking_ids)`` on the bulk queue.
BATCH_TASK = "mailworker.send_batch"


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
    lane: str = "transactional",
    list_id: str | None = None,
    connection: Connection | Session | scoped_session[Any] | None = None,
) -> str:
    """Validate and store an email, then hand it to the worker. Returns the tracking id (UUID string).

    ``expires_at`` (aware): not handed to a transport by then, the email is ``expired`` instead of sent.
    ``lane``: ``transactional`` (a ``send_email`` task of its own) or ``bulk`` (a ``send_batch`` task on the bulk
    queue). ``list_id``: the mailing list it belongs to (a short token; unsubscribes are scoped to it).
    ``connection`` (a SQLAlchemy ``Connection`` or ``Session`` on DATABASE_URL's database): the rows are written
    in the caller's transaction and the task is published only once that transaction commits -- nothing is sent
    if it rolls back (see :func:`_publish_after_commit`).
    """
    item = prepare(
        to, subject, html_body=html_body, text_body=text_body, sender=sender, cc=cc, bcc=bcc, reply_to=reply_to,
        headers=headers, attachments=attachments, template_id=template_id, template_data=template_data,
        reference=reference, idempotency_key=idempotency_key, send_at=send_at, expires_at=expires_at, lane=lane,
        list_id=list_id)
    caller = _caller_connection(connection) if connection is not None else None
    return store_and_publish([item], caller, batch_size=1)[0]


#: ``list_id``: a short token (RFC 2919 list-label characters plus a few separators), one line by construction.
_LIST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@/=-]{0,63}")


def check_lane(raw: Any) -> Lane:
    if isinstance(raw, str):
        try:
            return Lane(raw)
        except ValueError:
            pass
    raise InvalidEmail("lane", f"{raw!r} is not a lane; use 'transactional' or 'bulk'")


def check_list_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidEmail("list_id", f"expected a string, got {type(raw).__name__}")
    if not _LIST_ID.fullmatch(raw):
        raise InvalidEmail("list_id", f"{raw[:80]!r} is not a list id: 1 to 64 letters, digits or . _ : + @ / = -, "
                                      "starting with a letter or digit")
    return raw


@dataclass
class Prepared:
    """One validated email, as the rows ``store_and_publish`` writes (``published_at`` and ``batch_id`` are filled
    in there)."""

    tracking_id: str
    message: dict[str, Any]
    recipients: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    when: datetime | None
    idempotency_key: str | None
    lane: Lane


def prepare(
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
    lane: str = "transactional",
    list_id: str | None = None,
) -> Prepared:
    """Validate one email (raises :class:`InvalidEmail` naming the field) and build its rows; stores nothing."""
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
    the_lane = check_lane(lane)
    list_id = check_list_id(list_id)
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

    tracking_id = str(uuid.uuid4())
    now = utcnow()
    domain = from_addr.address.rsplit("@", 1)[1]
    message = {
        "id": tracking_id, "status": MessageStatus.QUEUED, "sender": from_addr.formatted,
        "reply_to": reply.formatted if reply else None, "subject": subject, "text_body": text_body,
        "html_body": html_body, "headers": extra_headers or None, "template_id": template_id,
        "template_data": template_data, "reference": reference, "idempotency_key": idempotency_key,
        "message_id_header": make_msgid(idstring=tracking_id.replace("-", ""), domain=domain),
        "size_bytes": size, "queued_at": now, "send_at": when, "expires_at": expiry, "next_attempt_at": when,
        "attempts": 0, "crashes": 0, "updated_at": now, "lane": the_lane, "list_id": list_id, "batch_id": None,
        "published_at": None,
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
    return Prepared(tracking_id, message, recipients, attachment_rows, when, idempotency_key, the_lane)


def _publish_now(item: Prepared, now: datetime) -> bool:
    """Published at enqueue: a transactional email due within :data:`SHORT_ETA` (with a broker ETA), a bulk email
    due now. A later one is published by the sweeper shortly before it is due (``published_at`` stays NULL)."""
    if item.when is None:
        return True
    if item.lane == Lane.BULK:
        return item.when <= now
    return item.when - now <= SHORT_ETA


def store_and_publish(items: list[Prepared], caller: tuple[Connection, Session | None] | None, *,
                      batch_size: int) -> list[str]:
    """Write validated emails and publish them; the tracking ids in the order of ``items``.

    An item whose idempotency key is on record already (or repeated earlier in ``items``) is not written: its
    existing id comes back. The rest go in with one multi-row INSERT per table per ``batch_size`` items, all in
    one transaction (the caller's, when given). After the commit, transactional emails are published one
    ``send_email`` each; bulk emails due now one ``send_batch`` per ``batch_size`` of them, whose ``batch_id``
    (also the task id) their rows carry.
    """
    conn = caller[0] if caller else None
    for _ in range(2):  # a second pass when a concurrent call stored one of our keys first
        ids, new = _resolve_keys(items, conn)
        now = utcnow()
        batches = _assign(new, now, batch_size, mark_published=caller is None)
        try:
            if conn is not None:
                _insert_chunks(conn, new, batch_size)
            elif new:
                with get_engine().begin() as own:
                    _insert_chunks(own, new, batch_size)
        except IntegrityError:
            if not any(i.idempotency_key for i in new):
                raise
            continue
        break
    else:
        raise RuntimeError("idempotency keys kept colliding with concurrent calls")  # pragma: no cover
    singles = [i for i in new if i.lane == Lane.TRANSACTIONAL and _publish_now(i, now)]
    if caller is not None:
        for item in singles:
            _publish_after_commit(*caller, _single_publisher(item.tracking_id, item.when))
        for batch_id, batch_ids in batches:
            _publish_after_commit(*caller, _batch_publisher(batch_id, batch_ids))
    else:
        unpublished = [i.tracking_id for i in singles if not publish_send(i.tracking_id, eta=i.when)]
        for batch_id, batch_ids in batches:
            if not publish_batch(batch_id, batch_ids):
                unpublished.extend(batch_ids)
        if unpublished:
            _clear_published(unpublished)
    if new:
        log.info("%d email(s) queued%s lane=%s recipients=%d batches=%d%s", len(new),
                 " in the caller's transaction" if caller else "", ",".join(sorted({i.lane.value for i in new})),
                 sum(len(i.recipients) for i in new), len(batches),
                 f" tracking_id={new[0].tracking_id}" if len(new) == 1 else "")
    return [ids[n] for n in range(len(items))]


def _resolve_keys(items: list[Prepared], conn: Connection | None) -> tuple[dict[int, str], list[Prepared]]:
    """``{position: tracking id}`` for every item, and the items to write (keys not on record, first of each)."""
    keys = sorted({i.idempotency_key for i in items if i.idempotency_key})
    known = _find_by_idempotency_keys(keys, conn) if keys else {}
    ids: dict[int, str] = {}
    new: list[Prepared] = []
    for n, item in enumerate(items):
        key = item.idempotency_key
        if key and key in known:
            ids[n] = known[key]
            continue
        if key:
            known[key] = item.tracking_id
        ids[n] = item.tracking_id
        new.append(item)
    return ids, new


def _assign(new: list[Prepared], now: datetime, batch_size: int, *,
            mark_published: bool) -> list[tuple[str, list[str]]]:
    """Fill in ``published_at`` and ``batch_id``; the ``send_batch`` chunks to publish as ``(batch_id, ids)``."""
    batches: list[tuple[str, list[str]]] = []
    for item in new:
        due = _publish_now(item, now)
        # Recorded before the publish: a worker may claim the row before this function returns. Left NULL in
        # the caller's transaction: if its commit or the publish after it goes wrong, the sweeper's grace covers it.
        item.message["published_at"] = now if due and mark_published else None
        item.message["batch_id"] = None
        if item.lane == Lane.BULK and due:
            if not batches or len(batches[-1][1]) >= batch_size:
                batches.append((str(uuid.uuid4()), []))
            batches[-1][1].append(item.tracking_id)
            item.message["batch_id"] = batches[-1][0]
    return batches


def _insert_chunks(conn: Connection, items: list[Prepared], batch_size: int) -> None:
    """One multi-row INSERT per table per ``batch_size`` items (executemany: MariaDB's driver sends multi-row
    ``VALUES`` statements, SQLite steps one prepared statement)."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        conn.execute(insert(M), [i.message for i in chunk])
        conn.execute(insert(R), [r for i in chunk for r in i.recipients])
        files = [a for i in chunk for a in i.attachments]
        if files:
            conn.execute(insert(A), files)


def _clear_published(tracking_ids: list[str]) -> None:
    """Broker down: no publish on record, so the sweeper's next pass after its grace publishes the rows."""
    try:
        with get_engine().begin() as conn:
            conn.execute(update(M).where(M.c.id.in_(tracking_ids)).values(published_at=None))
    except SQLAlchemyError as err:
        # The emails are stored: raising now would make the caller send them twice. The sweeper still
        # publishes them, only after SWEEP_REPUBLISH_AFTER instead of its grace.
        log.warning("could not clear published_at of %d email(s): %s", len(tracking_ids), type(err).__name__)


def publish_batch(batch_id: str, tracking_ids: list[str], *, countdown: float | None = None) -> bool:
    """Publish ``send_batch(tracking_ids)`` on the bulk queue with ``batch_id`` as task id; False when the broker
    is unreachable (the sweeper publishes the emails later)."""
    try:
        _send(BATCH_TASK, args=[tracking_ids], task_id=batch_id, queue=app.conf.bulk_queue,
              countdown=countdown or None)
    except Exception as err:  # noqa: BLE001 - any broker failure is repaired by the sweeper
        log.warning("publish failed batch_id=%s size=%d (the sweeper will publish it): %s", batch_id,
                    len(tracking_ids), type(err).__name__)
        return False
    return True


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


def _find_by_idempotency_keys(keys: list[str], conn: Connection | None = None) -> dict[str, str]:
    """``{key: tracking id}`` of the keys on record (in the caller's transaction, its own uncommitted rows count)."""
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):
        stmt = select(M.c.idempotency_key, M.c.id).where(M.c.idempotency_key.in_(keys[start:start + 500]))
        if conn is not None:
            rows = conn.execute(stmt).all()
        else:
            with get_engine().connect() as own:
                rows = own.execute(stmt).all()
        found.update({key: tid for key, tid in rows})
    return found


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


#: Publishes waiting for a caller's transaction to commit, per Session / Connection: each is called with the
#: countdown to give the task. One pair of listeners per transaction owner (registered once), however many emails.
Publisher = Callable[[float], None]
_PENDING_KEY = "mailworker_pending_publishes"
_pending_conns: weakref.WeakKeyDictionary[Connection, list[Publisher]] = weakref.WeakKeyDictionary()

#: A Connection's ``commit`` event fires just before the database commits: the publish waits this long, so the
#: worker finds the row committed (a slower commit only means the sweeper publishes it after its grace).
CONNECTION_COMMIT_DELAY = 1.0


def _single_publisher(tracking_id: str, when: datetime | None) -> Publisher:
    def publish(delay: float) -> None:
        if delay and when is None:
            publish_send(tracking_id, countdown=delay)
        else:
            publish_send(tracking_id, eta=when)
    return publish


def _batch_publisher(batch_id: str, tracking_ids: list[str]) -> Publisher:
    def publish(delay: float) -> None:
        publish_batch(batch_id, tracking_ids, countdown=delay or None)
    return publish


def _publish_after_commit(conn: Connection, session: Session | None, publisher: Publisher) -> None:
    """Run ``publisher`` once the caller's transaction commits; never if it rolls back.

    A Session: its ``after_commit`` event (after the database committed). A Connection: its ``commit`` event
    (just before the database commits; the publish carries a short countdown). The rows' ``published_at`` stays
    NULL, so a publish lost anywhere on this path is made by the sweeper after its grace.
    """
    if session is not None:
        pending = session.info.get(_PENDING_KEY)
        if pending is None:
            pending = session.info[_PENDING_KEY] = []
            event.listen(session, "after_commit", _session_committed)
            event.listen(session, "after_rollback", _session_rolled_back)
        pending.append(publisher)
        return
    pending_c = _pending_conns.get(conn)
    if pending_c is None:
        pending_c = _pending_conns[conn] = []
        event.listen(conn, "commit", _connection_committed)
        event.listen(conn, "rollback", _connection_rolled_back)
    pending_c.append(publisher)


def _publish_all(pending: list[Publisher], *, delay: float = 0.0) -> None:
    items, pending[:] = list(pending), []
    for publish in items:
        publish(delay)


def _session_committed(session: Session) -> None:
    _publish_all(session.info.get(_PENDING_KEY, []))


def _session_rolled_back(session: Session) -> None:
    pending = session.info.get(_PENDING_KEY)
    if pending:
        log.info("caller's transaction rolled back: %d publish(es) dropped", len(pending))
        pending.clear()


def _connection_committed(conn: Connection) -> None:
    _publish_all(_pending_conns.get(conn, []), delay=CONNECTION_COMMIT_DELAY)


def _connection_rolled_back(conn: Connection) -> None:
    pending = _pending_conns.get(conn)
    if pending:
        log.info("caller's transaction rolled back: %d publish(es) dropped", len(pending))
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
            "lane": message.lane.value,
            "list_id": message.list_id,
            "batch_id": message.batch_id,
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
