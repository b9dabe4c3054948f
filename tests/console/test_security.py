"""The console's defences: a random signing key never derived from the password, CSRF tokens bound to a session
cookie, ``Origin: null`` refused, flashed (not echoed) outcomes, a per-address login throttle, a trusted-proxy
setting for TLS terminated in front of the console, and redaction of suppression details and audit reasons."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select

from tests.console.conftest import AUTH, BAD_AUTH, PASSWORD, USER, Console, make_message
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import AuditEntry, Message, MessageStatus, Suppression, utcnow

PROJECT = Path(__file__).resolve().parents[2]
Factory = Callable[..., Console]


def _status(tid: str) -> MessageStatus:
    with session_scope() as session:
        m = session.get(Message, tid)
        assert m is not None
        return m.status


def _audit_count() -> int:
    with session_scope() as session:
        return len(list(session.scalars(select(AuditEntry.id))))


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ------------------------------------------------------------------------------------------- signing key


def test_the_signing_key_is_random_kept_in_a_private_file_and_never_derived_from_the_password(
        console_factory: Factory, console_secret_file: Path) -> None:
    console = console_factory()
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    token = console.token(f"/messages/{tid}/retry")
    derived = hashlib.sha256(b"mailworker-console-csrf\0" + f"{USER}:{PASSWORD}".encode()).digest()
    with pytest.raises(BadSignature):  # whoever sees a token cannot test password guesses against it offline
        URLSafeTimedSerializer(derived, salt="mailworker-console-csrf").loads(token)
    key = console.app.extensions["mailworker_console"].secret_key
    assert key != derived and len(key) >= 32
    assert stat.S_IMODE(console_secret_file.stat().st_mode) == 0o600
    assert console_secret_file.read_text().strip().encode() == key
    again = console_factory(basic_auth=f"{USER}:another password")  # another process, another password
    assert again.app.extensions["mailworker_console"].secret_key == key


def test_console_secret_key_when_set_is_used_and_no_file_is_written(
        console_factory: Factory, console_secret_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_SECRET_KEY", "an explicit key shared by every console host")
    console = console_factory()
    assert console.app.extensions["mailworker_console"].secret_key == b"an explicit key shared by every console host"
    assert not console_secret_file.exists()


def test_console_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "var" / "console-secret-key"
    code = ("import sys; from pathlib import Path; from console_app.settings import stored_secret; "
            "print(stored_secret(Path(sys.argv[1])).decode())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=PROJECT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    keys = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        keys.add(out.strip())
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert [p.name for p in path.parent.iterdir()] == ["console-secret-key"]  # no temporary file left behind


def test_an_unsafe_or_unusable_key_file_stops_the_console_in_one_line(
        console_secret_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from console_app import ConsoleConfigError, create_app

    console_secret_file.write_text("k" * 64)
    console_secret_file.chmod(0o644)
    with pytest.raises(ConsoleConfigError, match=r"CONSOLE_SECRET_FILE=.*\(mode 0644\): chmod 600 it"):
        create_app({"basic_auth": f"{USER}:{PASSWORD}"})
    console_secret_file.chmod(0o600)
    console_secret_file.write_text("short")
    with pytest.raises(ConsoleConfigError, match="CONSOLE_SECRET_FILE=.* fewer than 32 characters"):
        create_app({"basic_auth": f"{USER}:{PASSWORD}"})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CONSOLE_SECRET_FILE", str(blocker / "key"))
    with pytest.raises(ConsoleConfigError, match="cannot be read or created.*CONSOLE_SECRET_KEY") as err:
        create_app({"basic_auth": f"{USER}:{PASSWORD}"})
    assert "\n" not in str(err.value)


def test_settings_repr_shows_no_secret(console_factory: Factory) -> None:
    settings = console_factory().app.extensions["mailworker_console"]
    shown = repr(settings)
    assert PASSWORD not in shown and repr(settings.secret_key) not in shown and USER in shown


# ---------------------------------------------------------------------------------------- session + CSRF


def test_a_token_only_works_with_the_session_cookie_it_was_issued_for(console_factory: Factory) -> None:
    console = console_factory()
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    path = f"/messages/{tid}/retry"
    token = console.token(path)
    stranger = console.app.test_client()  # right credentials, but another browser: another session
    answer = stranger.post(path, data={"reason": "r", "csrf_token": token}, headers=AUTH)
    assert answer.status_code == 400 and "CSRF" in answer.text
    no_cookie = console.app.test_client(use_cookies=False)
    assert no_cookie.post(path, data={"reason": "r", "csrf_token": token}, headers=AUTH).status_code == 400
    assert _status(tid) == MessageStatus.FAILED and _audit_count() == 0 and console.published == []
    assert console.post(path, {"reason": "r", "csrf_token": token}).status_code == 303  # its own session


def test_the_session_cookie_is_signed_httponly_and_strict(console_factory: Factory) -> None:
    console = console_factory()
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    page = console.get(f"/messages/{tid}/retry")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("mailworker_console_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain http here
    name, _, value = cookie.partition(";")[0].partition("=")
    forged = console.app.test_client()
    forged.set_cookie(name, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    token = console.token(f"/messages/{tid}/retry")
    assert forged.post(f"/messages/{tid}/retry", data={"reason": "r", "csrf_token": token},
                       headers=AUTH).status_code == 400


@pytest.mark.parametrize("origin", ["null", "https://evil.example", "http://localhost.evil.example", "garbage",
                                    "http://localhost:81"])
def test_posts_from_another_or_a_null_origin_are_refused(console: Console, origin: str) -> None:
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    path = f"/messages/{tid}/retry"
    answer = console.post(path, {"reason": "r", "csrf_token": console.token(path)}, headers={"Origin": origin})
    assert answer.status_code == 403 and "cross-site request refused" in answer.text
    assert _status(tid) == MessageStatus.FAILED and _audit_count() == 0


def test_the_consoles_own_origin_passes(console: Console) -> None:
    for origin in ("http://localhost", "HTTP://LOCALHOST:80"):
        tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
        path = f"/messages/{tid}/retry"
        answer = console.post(path, {"reason": "r", "csrf_token": console.token(path)}, headers={"Origin": origin})
        assert answer.status_code == 303, origin


# ------------------------------------------------------------------------------------- flashed outcomes


def test_query_string_text_is_never_echoed_as_an_outcome(console: Console) -> None:
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    lure = "retry: requeued. Call +1-555-0100 to confirm your password"
    for path in (f"/messages/{tid}", "/suppressions"):
        page = console.get(path, query_string={"done": lure}).text
        assert "555-0100" not in page and "Done:" not in page, path


def test_an_outcome_is_shown_once_after_the_action(console: Console) -> None:
    token = console.token("/suppressions")
    done = console.post("/suppressions", {"address": "eve@example.com", "kind": "manual", "reason": "asked",
                                          "csrf_token": token})
    assert done.status_code == 303 and "done=" not in done.headers["Location"]
    first = console.get(done.headers["Location"]).text
    assert '<p class="notice ok">Done: add eve@example.com: suppressed</p>' in first
    assert "Done:" not in console.get("/suppressions").text


# ------------------------------------------------------------------------------------------ login throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_are_throttled_per_address_without_locking_the_operator_out(console_factory: Factory) -> None:
    clock = Clock()
    console = console_factory(clock=clock)
    attacker = {"REMOTE_ADDR": "203.0.113.9"}
    operator = {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(10):
        assert console.client.get("/", headers=BAD_AUTH, environ_base=attacker).status_code == 401
    refused = console.client.get("/", headers=BAD_AUTH, environ_base=attacker)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    assert "too many failed logins" in refused.text
    right_password = console.client.get("/", headers=AUTH, environ_base=attacker)
    assert right_password.status_code == 429  # else the throttle would still confirm a right guess
    assert console.client.get("/", headers=AUTH, environ_base=operator).status_code == 200
    clock.now += 45
    assert console.client.get("/", headers=AUTH, environ_base=attacker).headers["Retry-After"] == "15"
    clock.now += 15.5
    assert console.client.get("/", headers=AUTH, environ_base=attacker).status_code == 200


def test_the_window_slides_and_a_success_clears_the_count(console_factory: Factory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_LOGIN_MAX_FAILURES", "3")
    monkeypatch.setenv("CONSOLE_LOGIN_FAILURE_WINDOW", "10")
    clock = Clock()
    console = console_factory(clock=clock)
    for _ in range(2):
        assert console.client.get("/", headers=BAD_AUTH).status_code == 401
    assert console.client.get("/", headers=AUTH).status_code == 200  # the count starts over
    for step in range(3):
        assert console.client.get("/", headers=BAD_AUTH).status_code == 401
        clock.now += 4 if step < 2 else 0
    assert console.client.get("/", headers=BAD_AUTH).status_code == 429  # 3 failures within 8 s
    clock.now += 2.5  # the first failure (10.5 s ago) has left the window: one more guess, no more
    assert console.client.get("/", headers=BAD_AUTH).status_code == 401
    assert console.client.get("/", headers=BAD_AUTH).status_code == 429
    for _ in range(20):  # a browser's first request carries no credentials: not a failed login
        assert console.client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 401


def test_without_a_trusted_proxy_x_forwarded_for_does_not_evade_the_throttle(console_factory: Factory) -> None:
    console = console_factory(clock=Clock())
    for i in range(10):
        console.client.get("/", headers={**BAD_AUTH, "X-Forwarded-For": f"10.0.0.{i}"})
    assert console.client.get("/", headers={**BAD_AUTH, "X-Forwarded-For": "10.0.1.1"}).status_code == 429


def test_behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client(
        console_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_TRUSTED_PROXIES", "1")
    console = console_factory(clock=Clock())
    for _ in range(10):
        console.client.get("/", headers={**BAD_AUTH, "X-Forwarded-For": "203.0.113.9"})
    assert console.client.get("/", headers={**AUTH, "X-Forwarded-For": "203.0.113.9"}).status_code == 429
    assert console.client.get("/", headers={**AUTH, "X-Forwarded-For": "198.51.100.7"}).status_code == 200


def test_the_throttle_keeps_bounded_memory() -> None:
    from console_app.security import LoginThrottle

    clock = Clock()
    throttle = LoginThrottle(3, 60, clock, max_addresses=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) <= 100
    for _ in range(3):
        throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 60 and throttle.retry_after("192.0.2.2") is None


# ----------------------------------------------------------------------------------- behind a TLS proxy


HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}


def _post_retry(console: Console, headers: dict[str, str]) -> Any:
    tid = make_message(MessageStatus.FAILED, failed_at=utcnow())
    path = f"/messages/{tid}/retry"
    page = console.get(path, headers=HTTPS)
    token = console.token(path)
    answer = console.post(path, {"reason": "r", "csrf_token": token}, headers=headers)
    return page, answer


def test_behind_a_tls_proxy_a_post_passes_with_the_proxy_setting(console_factory: Factory,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_TRUSTED_PROXIES", "1")
    page, answer = _post_retry(console_factory(), {**HTTPS, "Origin": "https://localhost"})
    assert answer.status_code == 303
    assert "Secure" in page.headers["Set-Cookie"]  # the cookie never travels over plain http
    assert answer.headers["Location"].startswith("/messages/")


def test_behind_a_tls_proxy_a_post_is_refused_without_the_proxy_setting(console_factory: Factory) -> None:
    _page, answer = _post_retry(console_factory(), {**HTTPS, "Origin": "https://localhost"})
    assert answer.status_code == 403 and "CONSOLE_TRUSTED_PROXIES" in answer.text


def test_an_origin_listed_in_console_trusted_origins_passes(console_factory: Factory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_TRUSTED_ORIGINS", "https://console.example.org, https://ops.example.org:8443/")
    console = console_factory()
    for origin in ("https://console.example.org", "https://OPS.example.org:8443"):
        assert _post_retry(console, {"Origin": origin})[1].status_code == 303, origin
    for origin in ("https://evil.example", "http://console.example.org", "https://ops.example.org"):
        assert _post_retry(console, {"Origin": origin})[1].status_code == 403, origin


@pytest.mark.parametrize("name, value, message", [
    ("CONSOLE_TRUSTED_ORIGINS", "console.example.org", "is not an origin"),
    ("CONSOLE_TRUSTED_ORIGINS", "https://console.example.org/path", "is not an origin"),
    ("CONSOLE_TRUSTED_ORIGINS", "ftp://console.example.org", "is not an origin"),
    ("CONSOLE_TRUSTED_PROXIES", "yes", "whole number"),
    ("CONSOLE_TRUSTED_PROXIES", "-1", "whole number"),
    ("CONSOLE_LOGIN_MAX_FAILURES", "0", "whole number \\(1 or more\\)"),
    ("CONSOLE_LOGIN_FAILURE_WINDOW", "-5", "must be positive"),
    ("CONSOLE_SECRET_KEY", "hunter2", "shorter than 16 characters"),
])
def test_bad_security_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                 message: str) -> None:
    from console_app import ConsoleConfigError, create_app

    monkeypatch.setenv(name, value)
    with pytest.raises(ConsoleConfigError, match=f"^{name}.*{message}") as err:
        create_app({"basic_auth": f"{USER}:{PASSWORD}"})
    assert name != "CONSOLE_SECRET_KEY" or value not in str(err.value)  # a secret is never echoed


# -------------------------------------------------------------------------------------------- redaction


def test_suppression_details_and_audit_reasons_are_redacted(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.infrastructure.config import reset_settings

    monkeypatch.setenv("SMTP2GO_API_KEY", "api-CONSOLESECRET00000000")
    reset_settings()
    tid = make_message(MessageStatus.BOUNCED, to="frank@example.com")
    with session_scope() as session:
        session.add(Suppression(address="frank@example.com", reason="hard_bounce", source_message_id=tid,
                                detail="550 rejected: password=hunter2hunter2 key api-CONSOLESECRET00000000",
                                created_at=utcnow()))
    release = f"/suppressions/release?address=frank@example.com&message={tid}"
    done = console.post("/suppressions/release", {
        "address": "frank@example.com", "message": tid, "csrf_token": console.token(release),
        "reason": "customer fixed it; old SMTP password=Tr0ub4dor&3 rotated"})
    assert done.status_code == 303
    with session_scope() as session:
        session.add(Suppression(address="frank@example.com", reason="hard_bounce", source_message_id=tid,
                                detail="550 rejected: password=hunter2hunter2 key api-CONSOLESECRET00000000",
                                created_at=utcnow()))
    pages = {path: console.get(path).text for path in ("/suppressions", "/audit", f"/messages/{tid}", release)}
    for path, page in pages.items():
        for secret in ("hunter2hunter2", "CONSOLESECRET", "Tr0ub4dor"):
            assert secret not in page, (path, secret)
    assert "[REDACTED]" in pages["/suppressions"] and "550 rejected" in pages["/suppressions"]
    assert "customer fixed it" in pages["/audit"] and "[REDACTED]" in pages["/audit"]
    assert "customer fixed it" in pages[f"/messages/{tid}"]
    assert "550 rejected" in pages[release]
    assert os.environ["SMTP2GO_API_KEY"]  # the key was configured, so its exact value was known to redaction
