"""A minimal Django email backend that sends through the SMTP2Go HTTP API (``POST {url}/email/send``).

The shape of django-anymail's requests-based backends: a ``requests.Session`` opened in :meth:`open` and
closed in :meth:`close`, one JSON POST per message with the ``X-Smtp2go-Api-Key`` header, an error raised
for anything but an accepted send (post_office then marks the email failed or requeues it). post_office keeps
one backend instance per sending thread for a batch and closes them all at the end of the batch.

The JSON is what mailworker and the bare baseline post for the benchmark email, key for key: ``sender``,
``to``, ``custom_headers`` (the message's extra headers), ``subject``, ``text_body``, ``html_body``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from requests.adapters import HTTPAdapter


class SMTP2GoError(Exception):
    """SMTP2Go did not accept the message (HTTP error, or no ``email_id`` / any ``failures`` in the answer)."""


class SMTP2GoEmailBackend(BaseEmailBackend):
    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.api_url = str(settings.SMTP2GO_API_URL).rstrip("/")
        self.api_key = str(settings.SMTP2GO_API_KEY)
        self.session: requests.Session | None = None

    def open(self) -> bool:
        if self.session is not None:
            return False
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        return True

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not email_messages:
            return 0
        created = self.open()
        sent = 0
        try:
            for message in email_messages:
                try:
                    self._send(message)
                    sent += 1
                except (requests.RequestException, SMTP2GoError, ValueError):
                    if not self.fail_silently:
                        raise
        finally:
            if created:
                self.close()
        return sent

    def _send(self, message: EmailMessage) -> str:
        assert self.session is not None  # noqa: S101 - open() ran
        payload: dict[str, Any] = {"sender": message.from_email, "to": list(message.to)}
        if message.cc:
            payload["cc"] = list(message.cc)
        if message.bcc:
            payload["bcc"] = list(message.bcc)
        if message.extra_headers:
            payload["custom_headers"] = [{"header": k, "value": str(v)} for k, v in message.extra_headers.items()]
        payload["subject"] = message.subject
        html = next((content for content, mimetype in getattr(message, "alternatives", [])
                     if mimetype == "text/html"), None)
        if message.content_subtype == "html":
            payload["html_body"] = message.body
        else:
            payload["text_body"] = message.body
            if html is not None:
                payload["html_body"] = html
        response = self.session.post(f"{self.api_url}/email/send", json=payload,
                                     headers={"X-Smtp2go-Api-Key": self.api_key, "Accept": "application/json"},
                                     timeout=(5.0, 30.0))
        if response.status_code != 200:
            raise SMTP2GoError(f"SMTP2Go answered HTTP {response.status_code}: {response.text[:200]}")
        data = response.json().get("data") or {}
        if data.get("failures") or not data.get("email_id"):
            raise SMTP2GoError(f"SMTP2Go did not accept the message: {data}")
        return str(data["email_id"])
