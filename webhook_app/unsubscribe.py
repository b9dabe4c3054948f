"""One-click unsubscribe (RFC 8058) on the public receiver: ``<UNSUBSCRIBE_BASE_URL>/u/<token>``.

- ``POST`` with the form body ``List-Unsubscribe=One-Click`` (what Gmail and Yahoo send, and what the page's
  button sends): the token is verified, ``mailworker.unsubscribe(token)`` is published on the events queue (the
  token travels, never the address: the receiver holds no database) and the answer is 200 at once.
- ``GET`` only shows a page with that button: mail scanners follow links, so a GET never unsubscribes.

Bad input changes nothing and gets a clear 4xx: a malformed, forged or altered token 404, an expired one 410, a
POST without the one-click body 400, a body over :data:`MAX_BODY` 413. A broker that cannot take the task: 503
(the mailbox provider or the user tries again).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request

from worker.compliance.tokens import MAX_TOKEN_CHARS, ONE_CLICK_BODY, BadToken, verify

log = logging.getLogger(__name__)
bp = Blueprint("unsubscribe", __name__)
EXTENSION = "mailworker_unsubscribe"
#: ``List-Unsubscribe=One-Click`` is 26 bytes; a browser's form adds nothing else.
MAX_BODY = 1024
UNSUBSCRIBE_TASK = "mailworker.unsubscribe"

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">
</head><body style="font-family: sans-serif; max-width: 32em; margin: 4em auto"><h1>{title}</h1>{body}</body></html>
"""


def default_publisher(broker_url: str | None = None) -> Callable[[str], None]:
    def publish(token: str) -> None:
        from worker.sending.publish import _send

        _send(UNSUBSCRIBE_TASK, broker_url, short_timeouts=True, args=[token], argsrepr="('<token>',)")

    return publish


def _page(status: int, title: str, body: str) -> Response:
    return Response(_PAGE.format(title=html.escape(title), body=body), status=status,
                    mimetype="text/html", headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


def _refuse(status: int, why: str) -> Response:
    log.info("unsubscribe refused %d: %s", status, why)
    return _page(status, "Unsubscribe link not accepted", f"<p>{html.escape(why)}</p>")


def _check(token: str) -> Response | None:
    try:
        verify(token)
    except BadToken as err:
        if err.expired:
            return _refuse(410, "This unsubscribe link has expired.")
        return _refuse(404, "This unsubscribe link is not valid.")
    return None


@bp.get("/u/<token>")
def show(token: str) -> Response:
    refused = _check(token)
    if refused is not None:
        return refused
    body = ('<p>Stop receiving this mailing list?</p><form method="post" action="">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>')
    return _page(200, "Unsubscribe", body)


@bp.post("/u/<token>")
def one_click(token: str) -> Response:
    if request.content_length is None or request.content_length > MAX_BODY:
        return _refuse(413 if request.content_length else 400,
                       f"the body must be {ONE_CLICK_BODY} (form-encoded, at most {MAX_BODY} bytes)")
    if len(token) > MAX_TOKEN_CHARS:
        return _refuse(404, "This unsubscribe link is not valid.")
    if request.mimetype != "application/x-www-form-urlencoded":
        return _refuse(400, f"the body must be form-encoded {ONE_CLICK_BODY}")
    raw = request.get_data(cache=False, as_text=False)
    if raw.strip() != ONE_CLICK_BODY.encode():
        return _refuse(400, f"the body must be exactly {ONE_CLICK_BODY}")
    refused = _check(token)
    if refused is not None:
        return refused
    publisher: Any = current_app.extensions[EXTENSION]
    try:
        publisher(token)
    except Exception as err:  # noqa: BLE001 - any broker failure is "try again", never a traceback
        log.warning("unsubscribe not queued, broker unavailable: %s", type(err).__name__)
        return _page(503, "Please try again", "<p>Your request could not be taken just now.</p>")
    return _page(200, "Unsubscribed", "<p>You will not receive this mailing list any more.</p>")
