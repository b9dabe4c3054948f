"""Our suppression list and SMTP2Go's, kept in step (``mailworker.sync_suppressions``, hourly by beat;
``mailworker suppressions sync`` runs it now).

- **pull**: every entry of SMTP2Go's list (paged) becomes a global suppression here (origin ``smtp2go``), so an
  address SMTP2Go blocks is not tried again through the relay fallback;
- **push**: every global entry of ours not yet pushed (hard bounces, complaints, manual; never a list-scoped
  unsubscribe, and never an erased address's hash) is added there;
- **release** (:func:`release_remote`): an operator's release lifts the address there too.

A key without the suppression permission (400 ``ENDPOINT_PERMISSION_DENIED``) is logged as one WARNING when it
is first seen and noted in ``<send queue>:suppression-sync`` (the console shows the note); mail goes on as before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from worker.compliance.keys import HASH_PREFIX
from worker.errors import ConfigurationError
from worker.infrastructure.config import Settings, get_settings
from worker.infrastructure.db import get_engine, session_scope
from worker.infrastructure.models import Suppression, utcnow
from worker.providers.smtp2go import settings as smtp2go_settings
from worker.providers.smtp2go.suppressions import SuppressionApiError, SuppressionClient
from worker.tracking.suppressions import add_suppression

log = logging.getLogger(__name__)
_REASON = {"bounce": "hard_bounce", "spam": "spam_complaint", "unsubscribe": "unsubscribe"}
PUSH_BATCH = 500


@dataclass
class SyncReport:
    state: str = "ok"  # ok | not_configured | permission_denied | failed
    note: str = ""
    pulled: list[str] = field(default_factory=list)  # new here
    pushed: list[str] = field(default_factory=list)  # new there

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "note": self.note, "pulled": self.pulled, "pushed": self.pushed}


def client(settings: Settings | None = None) -> SuppressionClient | None:
    """A client for the configured SMTP2Go account; None when the module is off or has no key."""
    settings = settings or get_settings()
    with get_engine().connect() as conn:
        config = smtp2go_settings.account(conn, settings)
    if not config.enabled or not config.api_key:
        return None
    return SuppressionClient(api_key=config.api_key, api_url=smtp2go_settings.api_url(config, "", settings),
                             timeout=settings.smtp2go_timeout, connect_timeout=settings.smtp2go_connect_timeout,
                             verify=settings.smtp2go_ca_file or True)


def status_key() -> str:
    from worker.sending.publish import send_queue

    return f"{send_queue()}:suppression-sync"


def last_status() -> dict[str, Any] | None:
    """The last sync's state and note (for the console); None when never run or Redis is unreachable."""
    try:
        from worker.sending.publish import broker_redis

        redis = broker_redis()
        raw = redis.get(status_key()) if redis is not None else None
    except Exception:  # noqa: BLE001 - the console shows "unknown" rather than failing the page
        return None
    return json.loads(raw) if raw else None


def _remember(report: SyncReport) -> None:
    """Store the outcome; log the permission problem once (when the previous run did not have it)."""
    try:
        from worker.sending.publish import broker_redis

        previous = last_status()
        redis = broker_redis()
        if redis is not None:
            redis.set(status_key(), json.dumps({"state": report.state, "note": report.note,
                                                "at": utcnow().isoformat()}))
    except Exception as err:  # noqa: BLE001 - a note is not worth failing the sync
        log.warning("suppression sync status not stored: %s", type(err).__name__)
        previous = None
    if report.state == "permission_denied" and (previous or {}).get("state") != "permission_denied":
        log.warning("suppression sync: %s; mail is unaffected", report.note)


def sync(settings: Settings | None = None) -> SyncReport:
    report = SyncReport()
    try:
        api = client(settings)
    except (ConfigurationError, ValueError) as err:
        report.state, report.note = "not_configured", str(err)
        return report
    if api is None:
        report.state, report.note = "not_configured", "the SMTP2Go module is off or has no API key"
        return report
    try:
        _pull(api, report)
        _push(api, report)
    except SuppressionApiError as err:
        report.state = "permission_denied" if err.kind == "permission_denied" else "failed"
        report.note = str(err)
        if report.state == "failed":
            log.warning("suppression sync failed: %s", err)
    _remember(report)
    log.info("suppression sync %s pulled=%d pushed=%d", report.state, len(report.pulled), len(report.pushed))
    return report


def _pull(api: SuppressionClient, report: SyncReport) -> None:
    batch: list[Any] = []

    def flush() -> None:
        with session_scope() as session:
            for item in batch:
                try:
                    reason = _REASON.get(item.reason, f"smtp2go_{item.reason}"[:32])
                    added = add_suppression(session, item.address, reason,
                                            detail=f"on SMTP2Go's list: {item.description}"[:4000],
                                            origin="smtp2go", pushed=True)
                except ValueError:
                    continue  # a domain, or an address our validator refuses: nothing we could send to
                if added:
                    report.pulled.append(item.address.lower())
        batch.clear()

    for item in api.view():
        batch.append(item)
        if len(batch) >= PUSH_BATCH:
            flush()
    flush()


def _push(api: SuppressionClient, report: SyncReport) -> None:
    with session_scope() as session:
        rows = session.execute(select(Suppression.id, Suppression.address, Suppression.reason).where(
            Suppression.scope == "", Suppression.pushed_at.is_(None),
            ~Suppression.address.like(f"{HASH_PREFIX}%")).order_by(Suppression.id)).all()
    for row in rows:
        api.add(row.address, f"mailworker: {row.reason}")
        with session_scope() as session:
            session.execute(update(Suppression).where(Suppression.id == row.id).values(pushed_at=utcnow()))
        report.pushed.append(row.address)


def release_remote(address: str, settings: Settings | None = None) -> str:
    """Lift ``address`` from SMTP2Go's list too; a one-line outcome (never raises for the provider's answer)."""
    try:
        api = client(settings)
    except (ConfigurationError, ValueError) as err:
        return f"SMTP2Go not asked: {err}"
    if api is None:
        return "SMTP2Go not asked: the module is off or has no API key"
    try:
        api.remove(address)
    except SuppressionApiError as err:
        if err.kind == "permission_denied":
            report = SyncReport(state="permission_denied", note=str(err))
            _remember(report)
        return f"SMTP2Go not released: {err}"
    return "released on SMTP2Go too"
