"""The console blueprint: pages, action forms, metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers.response import Response as BaseResponse

from console_app import actions, charts, data, health, query
from console_app.security import BODY_CSP
from console_app.settings import ConsoleSettings
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import utcnow
from worker.infrastructure.redaction import redact
from worker.tracking import suppressions as suppression_store
from worker.tracking.complaints import complaint_rate

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


def _settings() -> ConsoleSettings:
    settings: ConsoleSettings = current_app.extensions["mailworker_console"]
    return settings


def _hook(name: str) -> Any:
    return current_app.extensions["mailworker_console_hooks"].get(name)


# ------------------------------------------------------------------------------------------------ filters


def _when(value: datetime | None) -> str:
    return charts.fmt_time(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _pct(value: float) -> str:
    return f"{value * 100:.2f} %" if value < 0.1 else f"{value * 100:.1f} %"


def _srcdoc(html: str | None) -> str:
    """The HTML body as an iframe ``srcdoc``: its own CSP first (the attribute is escaped by Jinja)."""
    meta = f'<meta http-equiv="Content-Security-Policy" content="{BODY_CSP}">'
    return meta + '<base target="_blank">' + (html or "")


def register_filters(app: Flask) -> None:
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["age"] = _age
    app.jinja_env.filters["pct"] = _pct
    app.jinja_env.filters["shown_status"] = data.shown_status
    app.jinja_env.filters["per_transport"] = data.per_transport
    app.jinja_env.filters["tname"] = lambda v: data._text(v) or ""
    app.jinja_env.filters["srcdoc"] = _srcdoc
    app.jinja_env.filters["redact"] = lambda v: redact(str(v)) if v is not None else ""
    app.jinja_env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)

    @app.errorhandler(HTTPException)
    def _error(err: HTTPException) -> tuple[str, int]:
        return render_template("error.html", code=err.code, name=err.name, description=err.description), \
            err.code or 500


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"console_user": g.get("console_user"), "now": utcnow()}


# ------------------------------------------------------------------------------------------------- pages


@bp.get("/")
def overview() -> str:
    settings = _settings()
    now = utcnow()
    day = data.window("Last 24 hours", "24h", now - timedelta(hours=24), settings)
    week = data.window("Last 7 days", "7d", now - timedelta(days=7), settings)
    with session_scope() as session:
        chart = data.hourly_chart(session, now)
        oldest = data.oldest_waiting(session, now)
        trend = charts.trend_data(session, now)
        latency = charts.latency_data(session, now)
    complaints = complaint_rate(now=now)
    protection = data.protection_state(_hook("protection_state"))
    return render_template("overview.html", windows=[day, week], chart=chart, oldest=oldest, protection=protection,
                           settings=settings, health=_health(), trend=trend, trend_svg=charts.trend(trend),
                           latency=latency, latency_svg=charts.latency(latency), complaints=complaints)


def _health() -> health.Health:
    hook = _hook("health")
    if hook is not None:
        result: health.Health = hook()
        return result
    cache = current_app.extensions.setdefault("mailworker_console_health_cache", health.new_cache())
    return health.snapshot(cache=cache)


@bp.get("/messages")
def messages() -> tuple[str, int]:
    settings = _settings()
    text = request.args.get("q", "")
    cursor = request.args.get("cursor") or None
    direction = request.args.get("dir", "older")
    error = None
    page = None
    total: tuple[int, bool] | None = None
    try:
        parsed = query.parse(text)
        with session_scope() as session:
            page = query.search(session, parsed, page_size=settings.page_size, cursor=cursor, direction=direction)
            if cursor is None and not query.scans(parsed):
                total = query.count_estimate(session, parsed)
    except query.QueryError as err:
        error = str(err)

    def link(cursor_value: str | None, dir_value: str) -> str | None:
        if cursor_value is None:
            return None
        return url_for("console.messages") + "?" + urlencode({"q": text, "cursor": cursor_value, "dir": dir_value})

    return render_template("messages.html", q=text, page=page, error=error, total=total,
                           older=link(page.older if page else None, "older"),
                           newer=link(page.newer if page else None, "newer"), keys=query.KEYS), \
        400 if error else 200


@bp.get("/messages/<tracking_id>")
def message(tracking_id: str) -> str:
    with session_scope() as session:
        m = data.load_message(session, tracking_id)
        if m is None:
            abort(404, f"no email with tracking id {tracking_id}")
        audit = data.audit_for(session, tracking_id)
        supp = data.suppressions_for(session, m)
        ended = data.ended_at(session, m)
        provider, provider_id = data.provider_of(m)
        return render_template("message.html", m=m, shown=data.shown_status(m),
                               timeline=data.timeline(m, audit, ended), audit=audit, suppressions=supp,
                               headers=data.headers_for(m), retry=actions.retry_preview(m),
                               cancel=actions.cancel_preview(m), attempts=data.attempts_for(session, m.id),
                               ended=ended, provider=provider, provider_id=provider_id,
                               batch=data.batch_progress(session, m))


# ------------------------------------------------------------------------------------------------ actions


def _done(text: str) -> None:
    """What an action did, shown once on the page it redirects to (a flashed message in the signed session
    cookie: never text from the query string, which any link could set)."""
    flash(f"Done: {text[:500]}", "ok")


#: The confirm page's two buttons per action: (do it, go back without doing it).
BUTTONS = {"retry": ("Retry this email", "Back"), "cancel": ("Cancel this email", "Keep it"),
           "release": ("Release this address", "Keep it suppressed")}


def _message_action(tracking_id: str, name: str, run: Callable[[str], str],
                    preview_of: Callable[[Any], actions.Preview]) -> tuple[str, int] | BaseResponse:
    """One action on one message: GET previews what it will change; POST (with a reason) runs it through the
    lifecycle and returns to the message page, whose audit log shows it."""
    error = None
    if request.method == "POST":
        try:
            outcome = run(request.form.get("reason", ""))
            _done(f"{name}: {outcome}")
            return redirect(url_for("console.message", tracking_id=tracking_id), 303)
        except actions.ActionRefused as err:
            error = str(err)
    with session_scope() as session:
        m = data.load_message(session, tracking_id)
        if m is None:
            abort(404, f"no email with tracking id {tracking_id}")
        return render_template("confirm.html", title=f"{name.capitalize()} {m.id}", preview=preview_of(m),
                               error=error, action=url_for(f"console.{name}", tracking_id=m.id),
                               back=url_for("console.message", tracking_id=m.id), hidden={}, buttons=BUTTONS[name],
                               subject=f"{m.subject or '(no subject)'}: {data.shown_status(m)}"), \
            400 if error else 200


@bp.route("/messages/<tracking_id>/retry", methods=["GET", "POST"])
def retry(tracking_id: str) -> tuple[str, int] | BaseResponse:
    return _message_action(tracking_id, "retry", lambda reason: actions.retry(
        tracking_id, actor=g.console_user, reason=reason, publisher=_hook("publisher")), actions.retry_preview)


@bp.route("/messages/<tracking_id>/cancel", methods=["GET", "POST"])
def cancel(tracking_id: str) -> tuple[str, int] | BaseResponse:
    return _message_action(tracking_id, "cancel", lambda reason: actions.cancel(
        tracking_id, actor=g.console_user, reason=reason), actions.cancel_preview)


@bp.route("/suppressions/release", methods=["GET", "POST"])
def release() -> tuple[str, int] | BaseResponse:
    address = request.values.get("address", "")
    message_id = request.values.get("message") or None
    error = None
    if request.method == "POST":
        try:
            outcome = actions.release_suppression(address, actor=g.console_user,
                                                  reason=request.form.get("reason", ""), message_id=message_id)
            _done(f"release {address}: {outcome}")
            if message_id:
                return redirect(url_for("console.message", tracking_id=message_id), 303)
            return redirect(url_for("console.suppressions_page"), 303)
        except actions.ActionRefused as err:
            error = str(err)
    with session_scope() as session:
        entry, preview, waiting = actions.release_preview(session, address)
        if waiting:
            preview.changes.append(f"{len(waiting)} waiting message(s) will include it at their next attempt")
        hidden = {"address": address, **({"message": message_id} if message_id else {})}
        back = (url_for("console.message", tracking_id=message_id) if message_id
                else url_for("console.suppressions_page"))
        return render_template("confirm.html", title=f"Release suppression of {address}", preview=preview,
                               error=error, action=url_for("console.release"), back=back, hidden=hidden,
                               buttons=BUTTONS["release"],
                               subject=f"{entry.reason}: {redact(entry.detail or '')}" if entry else None), \
            400 if error else 200


#: The largest ``offset`` the suppression list accepts (far past any real list; the database's OFFSET has a limit).
MAX_OFFSET = 1_000_000_000


def _offset(raw: str | None) -> int:
    """``?offset=`` as a whole number 0..MAX_OFFSET; anything else is a 400 naming it."""
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or int(raw) > MAX_OFFSET:
        abort(400, f"offset: must be a whole number from 0 to {MAX_OFFSET}")
    return int(raw)


@bp.route("/suppressions", methods=["GET", "POST"])
def suppressions_page() -> tuple[str, int] | BaseResponse:
    error = None
    form: dict[str, str] = {}
    if request.method == "POST":
        form = {k: request.form.get(k, "") for k in ("address", "kind", "reason")}
        try:
            outcome = actions.add_suppression(form["address"], kind=form["kind"].strip() or "manual",
                                              actor=g.console_user, reason=form["reason"])
            _done(f"add {form['address']}: {outcome}")
            return redirect(url_for("console.suppressions_page"), 303)
        except actions.ActionRefused as err:
            error = str(err)
    search = request.args.get("q", "").strip()
    offset = _offset(request.args.get("offset"))
    limit = 100
    with session_scope() as session:
        rows = suppression_store.list_suppressions(session, limit=limit + 1, offset=offset, search=search or None)
        total = suppression_store.count_suppressions(session)
        audit = [a for a in actions.recent_audit(session, 20)
                 if a.action.endswith("suppression") or a.action == "erase"]
    more = len(rows) > limit
    from worker.compliance.sync import last_status

    return render_template("suppressions.html", rows=rows[:limit], q=search, offset=offset, limit=limit,
                           more=more, total=total, error=error, form=form, audit=audit,
                           sync=last_status()), 400 if error else 200


@bp.route("/suppressions/erase", methods=["POST"])
def erase() -> tuple[str, int] | BaseResponse:
    """Erase an address on request (audited); the form is on the suppressions page."""
    address = request.form.get("address", "")
    try:
        outcome = actions.erase_address(address, actor=g.console_user, reason=request.form.get("reason", ""))
    except actions.ActionRefused as err:
        flash(f"Erase refused: {err}", "bad")
        return redirect(url_for("console.suppressions_page"), 303)
    _done(outcome)
    return redirect(url_for("console.suppressions_page"), 303)


@bp.get("/audit")
def audit_page() -> str:
    with session_scope() as session:
        return render_template("audit.html", rows=actions.recent_audit(session, 200))


@bp.get("/metrics")
def metrics() -> Response:
    from console_app.metrics import render

    body, content_type = render(_hook("protection_state"))
    return Response(body, 200, {"Content-Type": content_type})

