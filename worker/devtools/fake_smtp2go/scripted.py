"""Canned answers a test queues for the next ``/email/send`` calls.

Random failure injection proves the worker survives a failure mix; a test that must prove what happens on one
particular answer (a 400 in the ``data`` form, a 429 with a reset, a success that arrives after the client gave
up) needs that answer on a chosen call. Each helper copies the shape of the matching fixture file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.devtools.fake_smtp2go.wire import _api_error, _rate_limited, _rid, _success, _toplevel_error


@dataclass
class Scripted:
    """One canned answer for the next ``/email/send`` call; the helpers copy the fixture shapes exactly."""

    status: int = 200
    body: dict | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    accept: bool | None = None
    #: ``/email/batch`` only: accept just the first this many items (a failed answer that took some of them).
    accept_items: int | None = None

    @classmethod
    def error_400_data(cls) -> Scripted:
        return cls(400, _api_error("You do not have permission to access this API endpoint",
                                   "ENDPOINT_PERMISSION_DENIED"))

    @classmethod
    def error_400_toplevel(cls) -> Scripted:
        return cls(400, _toplevel_error("sender", "The field 'sender' was expecting a valid RFC-822 "
                                        "formatted email field but found 'noreply_example.com'."))

    @classmethod
    def failures_strings(cls, status: int = 200) -> Scripted:
        return cls(status, {"request_id": _rid(), "data": {
            "succeeded": 0, "failed": 1, "failures": ["The API Key passed was not in the correct format."]}})

    @classmethod
    def server_error(cls, status: int = 500) -> Scripted:
        return cls(status, _api_error("An internal error occurred, please try again later", "API_EXCEPTION"))

    @classmethod
    def rate_limited(cls, reset_seconds: int = 1) -> Scripted:
        _, body, headers = _rate_limited(reset_seconds)
        return cls(429, body, headers)

    @classmethod
    def fastaccept(cls) -> Scripted:
        return cls(200, _success(0, fast=True))

    @classmethod
    def slow(cls, seconds: float) -> Scripted:
        """A success that arrives late: the mail is accepted even though the client may have given up."""
        return cls(200, None, delay=seconds)
