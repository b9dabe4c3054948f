"""SMTP2Go's own suppression list: ``/suppression/view`` (paged by ``continue_token``), ``/suppression/add`` and
``/suppression/remove``. Shapes in tests/fixtures/smtp2go (``suppression_*.json``) and its README.

A key without the suppression permission gets 400 ``ENDPOINT_PERMISSION_DENIED``: raised as
:class:`SuppressionApiError` with ``kind="permission_denied"`` so the sync can report it once and go on (mail is
unaffected: SMTP2Go still refuses what is on its list, and we still skip what is on ours)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.errors import CredentialsRejected, DeliveryError, MailworkerError
from worker.providers.smtp2go.transport import _api_error, _check_status, _post

#: Every reason SMTP2Go documents: a release lifts them all.
ALL_REASONS = ("manual", "spam", "unsubscribe", "bounce", "compliance")
#: How far back the first view reaches (SMTP2Go's default window is the last 30 days).
VIEW_FROM = "2000-01-01 00:00:00"
MAX_PAGES = 1000


class SuppressionApiError(MailworkerError):
    """A suppression request gave no usable answer. ``kind``: ``permission_denied`` (the key may not use the
    suppression endpoints), ``unauthorized`` (401/403), ``failed`` (anything else)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class RemoteSuppression:
    address: str
    reason: str
    description: str


@dataclass(frozen=True)
class SuppressionClient:
    api_key: str = ""
    api_url: str = ""
    timeout: float = 30.0
    connect_timeout: float = 5.0
    verify: bool | str = True

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        what = f"SMTP2Go {path}"
        try:
            answer = _post(path, body, api_key=self.api_key, api_url=self.api_url, timeout=self.timeout,
                           connect_timeout=self.connect_timeout, verify=self.verify)
            _check_status(answer.status, answer.retry_after)
        except CredentialsRejected as err:
            raise SuppressionApiError(f"{what}: the API key was refused ({err.status_code})",
                                      kind="unauthorized") from err
        except DeliveryError as err:
            raise SuppressionApiError(f"{what} failed: {err}", kind="failed") from err
        error = _api_error(answer.status, answer.body)
        if error is not None and (error.error_code or "").endswith("ENDPOINT_PERMISSION_DENIED"):
            raise SuppressionApiError(f"{what}: this API key has no suppression permission "
                                      "(ENDPOINT_PERMISSION_DENIED)", kind="permission_denied")
        if error is not None or answer.status >= 300:
            raise SuppressionApiError(f"{what} refused the request ({answer.status})"
                                      + (f": {error}" if error is not None else ""), kind="failed")
        data = answer.body.get("data") if isinstance(answer.body, dict) else None
        if not isinstance(data, dict):
            raise SuppressionApiError(f"{what} answered {answer.status} without data", kind="failed")
        return data

    def view(self) -> Iterator[RemoteSuppression]:
        """Every entry, page after page."""
        token: str | None = None
        for _ in range(MAX_PAGES):
            body: dict[str, Any] = {"start_date": VIEW_FROM}
            if token:
                body["continue_token"] = token
            data = self._call("/suppression/view", body)
            for item in data.get("results") or []:
                if isinstance(item, dict) and isinstance(item.get("email_address"), str):
                    yield RemoteSuppression(item["email_address"], str(item.get("reason") or "manual"),
                                            str(item.get("block_description") or item.get("complaint") or ""))
            token = data.get("continue_token") or None
            if not token:
                return

    def add(self, address: str, description: str) -> bool:
        data = self._call("/suppression/add", {"email_address": address, "block_description": description[:255]})
        return bool(data.get("added", True))

    def remove(self, address: str) -> None:
        self._call("/suppression/remove", {"email_address": address, "reasons": list(ALL_REASONS)})
