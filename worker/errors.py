"""The error hierarchy.

Providers raise these; the send task classifies by type and never by parsing messages:

- :class:`RetryableDeliveryError`: try the same transport again later (timeouts before the request left,
  connection refused, 429, 5xx, SMTP 4xx).
- :class:`PermanentDeliveryError`: this transport will never take this message (4xx from the API, an error
  code in a 200, SMTP 5xx); fall back or fail.
- :class:`AmbiguousDeliveryError`: the request left and we do not know whether it was accepted (read timeout);
  never resend before reconciling.
- :class:`ConfigurationError`: an operator must fix something; kept apart from delivery errors.
"""

from __future__ import annotations


class MailworkerError(Exception):
    """Base class for every error mailworker raises on purpose."""


class ConfigurationError(MailworkerError):
    """Missing or invalid configuration (a secret, a URL, a key).

    Never a message outcome: the send path *holds* the message (``retrying`` with ``last_error`` naming the
    problem) until an operator fixes it, and then sends it.
    """


class CredentialsRejected(ConfigurationError):
    """A provider refused our credentials (SMTP2Go 401/403, relay 535): the key was revoked or rotated."""

    def __init__(self, message: str, *, provider: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code


class InvalidEmail(ValueError, MailworkerError):  # noqa: N818 - the contract's name
    """Raised by ``enqueue_email`` for bad input; the message names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class DeliveryError(MailworkerError):
    """A transport did not accept a message."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        error_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.error_code = error_code
        self.retry_after = retry_after

    def describe(self) -> str:
        """One line for ``last_error``: provider, status and the message (never a secret)."""
        parts = [self.provider]
        if self.status_code is not None:
            parts.append(str(self.status_code))
        if self.error_code:
            parts.append(self.error_code)
        return f"{' '.join(parts)}: {self}"


class RetryableDeliveryError(DeliveryError):
    """Temporary failure: the same transport may accept the message later."""


class PermanentDeliveryError(DeliveryError):
    """This transport will not accept this message; fall back or give up."""


class AmbiguousDeliveryError(DeliveryError):
    """The request was sent but no answer came back: it may or may not have been accepted."""


class RecipientsRefused(DeliveryError):
    """The relay accepted no recipient: ``refused`` (5xx, final) and ``deferred`` (4xx, retry those) map each
    address to the relay's reply. Nothing was sent."""

    def __init__(self, message: str, *, provider: str, refused: dict[str, str],
                 deferred: dict[str, str] | None = None) -> None:
        super().__init__(message, provider=provider)
        self.refused = refused
        self.deferred = deferred or {}
