"""The one error ``mailworker dev`` raises for a stack that cannot start.

Its own module because every part raises it (a live ``dev.env``, a busy port, no broker, a failed migration)
and ``mailworker dev`` turns it into one clear line instead of a traceback.
"""

from __future__ import annotations

from worker.errors import MailworkerError


class DevError(MailworkerError):
    """The dev stack could not start; the message says what to change."""
