"""``enqueue_many``: many emails validated together, stored with multi-row inserts, published in batches.

Every item is validated before anything is stored: one bad item stores nothing and raises :class:`InvalidEmail`
whose message starts with ``emails[<index>].<field>``. The rows go in with one INSERT per table per
``BULK_BATCH_SIZE`` items, in one transaction; after the commit each chunk of bulk emails is one
``mailworker.send_batch(tracking_ids)`` task on the bulk queue (its ``batch_id``, on every row of the chunk, is the
task id). Each email is still its own row, status, events and callbacks. Idempotency keys work per item: a re-run
after a crash returns the same ids and stores and publishes only what the first run did not store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session, scoped_session

from worker.api.enqueue import Prepared, _caller_connection, check_lane, prepare, store_and_publish
from worker.errors import InvalidEmail
from worker.infrastructure.settings_spec import read

#: What an item may hold: ``enqueue_email``'s keyword arguments (``to`` included); ``lane`` is the call's.
ITEM_FIELDS = frozenset({
    "to", "subject", "html_body", "text_body", "sender", "cc", "bcc", "reply_to", "headers", "attachments",
    "template_id", "template_data", "reference", "idempotency_key", "send_at", "expires_at", "list_id"})


def validate_many(emails: Iterable[Mapping[str, Any]], *, lane: str = "bulk") -> list[Prepared]:
    """Every item validated (nothing stored); the first bad one raises ``InvalidEmail("emails[<i>].<field>")``."""
    if isinstance(emails, str | bytes | Mapping) or not isinstance(emails, Iterable):
        raise InvalidEmail("emails", f"expected a list of dicts, got {type(emails).__name__}")
    the_lane = check_lane(lane).value
    prepared: list[Prepared] = []
    for index, item in enumerate(emails):
        if not isinstance(item, Mapping):
            raise InvalidEmail(f"emails[{index}]", f"expected a dict of enqueue_email's arguments, got "
                                                   f"{type(item).__name__}")
        unknown = sorted(str(k) for k in item if k not in ITEM_FIELDS)
        if unknown:
            hint = " (the lane is enqueue_many's own argument)" if "lane" in unknown else ""
            raise InvalidEmail(f"emails[{index}].{unknown[0]}", f"is not an argument of enqueue_email{hint}")
        if "to" not in item:
            raise InvalidEmail(f"emails[{index}].to", "at least one recipient is required")
        try:
            prepared.append(prepare(**item, lane=the_lane))
        except InvalidEmail as err:
            raise InvalidEmail(f"emails[{index}].{err.field}", err.problem) from None
    return prepared


def enqueue_many(emails: Iterable[Mapping[str, Any]], *, lane: str = "bulk",
                 connection: Connection | Session | scoped_session[Any] | None = None) -> list[str]:
    """Validate, store and publish many emails; one tracking id per item, in order.

    ``emails``: dicts of ``enqueue_email``'s keyword arguments (``to`` included). ``lane``: ``bulk`` (one
    ``send_batch`` task per ``BULK_BATCH_SIZE`` emails on the bulk queue) or ``transactional`` (one ``send_email``
    each). ``connection``: as for ``enqueue_email`` -- the rows are written in the caller's transaction and the
    tasks published only once it commits.
    """
    prepared = validate_many(emails, lane=lane)
    caller = _caller_connection(connection) if connection is not None else None
    if not prepared:
        return []
    return store_and_publish(prepared, caller, batch_size=int(read("BULK_BATCH_SIZE")))
