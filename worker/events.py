"""SMTP2Go event processing (placeholder interface; implemented in the webhook issue)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from worker.models import Message


def link_pending_events(session: Session, message: Message) -> int:
    """Apply stored events that arrived before ``message`` had its provider id; returns how many."""
    return 0


def link_orphan_events() -> int:
    return 0


def process_event(event: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError("event processing arrives with the webhook issue")
