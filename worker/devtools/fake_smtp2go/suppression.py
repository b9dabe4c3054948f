"""The suppression endpoints, as tests/fixtures/smtp2go (``suppression_*.json``) and its README show them:
``/suppression/add`` (``email_address``, ``block_description``) answers ``{"data": {"added", "block_description",
"email_address"}}``; ``/suppression/view`` pages ``data.results`` (``email_address``, ``reason``,
``block_description``, ``complaint``, ``subject``, ``timestamp``) by ``continue_token`` with ``total_results``;
``/suppression/remove`` takes ``email_address`` and the ``reasons`` to lift. ``suppression_denied`` makes every
one of them answer 400 ``ENDPOINT_PERMISSION_DENIED``, like a key without the suppression permission."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from worker.devtools.fake_smtp2go.state import _FakeState
from worker.devtools.fake_smtp2go.wire import Reply, _api_error, _rid

REASONS = ("manual", "spam", "unsubscribe", "bounce", "compliance")


class _SuppressionAPI(_FakeState):
    """SMTP2Go's suppression list: ``suppressions`` (address -> entry), every request in ``suppression_requests``."""

    suppressions: dict[str, dict[str, Any]]
    suppression_requests: list[tuple[str, dict[str, Any]]]
    suppression_denied: bool
    suppression_page_size: int

    def suppress(self, address: str, reason: str = "manual", description: str = "") -> None:
        """Put an address on the fake's list, as SMTP2Go does by itself after a bounce or a complaint."""
        with self._lock:
            self.suppressions[address.lower()] = {
                "email_address": address.lower(), "reason": reason, "block_description": description,
                "complaint": "", "subject": None,
                "timestamp": datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M:%S")}

    def _suppression_body(self, headers: Any, body: bytes, path: str) -> tuple[dict[str, Any] | None, Reply | None]:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return None, (400, _api_error("An error occurred processing the json data", "INVALID_JSON"), {})
        if not isinstance(payload, dict):
            return None, (400, _api_error("The body must be a JSON object", "INVALID_JSON"), {})
        if not self._key_ok(headers, payload):
            return None, (401, _api_error("Invalid API key", "API_KEY_INVALID"), {})
        with self._lock:
            self.suppression_requests.append((path, payload))
        if self.suppression_denied:
            return None, (400, _api_error("You do not have permission to access this endpoint",
                                          "ENDPOINT_PERMISSION_DENIED"), {})
        return payload, None

    def _handle_suppression_add(self, headers: Any, body: bytes) -> Reply:
        payload, error = self._suppression_body(headers, body, "/suppression/add")
        if error or payload is None:
            return error or (500, _api_error("no body", "API_EXCEPTION"), {})
        address = payload.get("email_address")
        if not isinstance(address, str) or not address.strip():
            return 400, _api_error("email_address is required", "FIELD_VALIDATION"), {}
        description = str(payload.get("block_description") or "")
        with self._lock:
            added = address.lower() not in self.suppressions
        if added:
            self.suppress(address, "manual", description)
        return 200, {"request_id": _rid(), "data": {"added": added, "block_description": description,
                                                    "email_address": address.lower()}}, {}

    def _handle_suppression_view(self, headers: Any, body: bytes) -> Reply:
        payload, error = self._suppression_body(headers, body, "/suppression/view")
        if error or payload is None:
            return error or (500, _api_error("no body", "API_EXCEPTION"), {})
        with self._lock:
            rows = sorted(self.suppressions.values(), key=lambda r: r["email_address"])
        wanted = payload.get("email_address")
        if isinstance(wanted, str) and wanted:
            rows = [r for r in rows if r["email_address"] == wanted.lower()]
        start = int(payload.get("continue_token") or 0)
        page = rows[start:start + self.suppression_page_size]
        more = start + self.suppression_page_size < len(rows)
        return 200, {"request_id": _rid(), "data": {
            "continue_token": str(start + self.suppression_page_size) if more else None,
            "total_results": len(rows), "results": [dict(r) for r in page]}}, {}

    def _handle_suppression_remove(self, headers: Any, body: bytes) -> Reply:
        payload, error = self._suppression_body(headers, body, "/suppression/remove")
        if error or payload is None:
            return error or (500, _api_error("no body", "API_EXCEPTION"), {})
        address = payload.get("email_address")
        reasons = payload.get("reasons") or list(REASONS)
        if not isinstance(address, str) or not address.strip() or not isinstance(reasons, list):
            return 400, _api_error("email_address and reasons are required", "FIELD_VALIDATION"), {}
        with self._lock:
            entry = self.suppressions.get(address.lower())
            removed = entry is not None and entry["reason"] in reasons
            if removed:
                del self.suppressions[address.lower()]
        return 200, {"request_id": _rid(), "data": {"removed": removed, "email_address": address.lower()}}, {}
