"""Module settings: encrypted at rest, rotation, and the rule that picks SMTP2Go or the relay."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from worker import providers
from worker.cli import main
from worker.errors import ConfigurationError
from worker.infrastructure.config import get_settings, reset_settings
from worker.infrastructure.crypto import generate_key
from worker.infrastructure.db import session_scope
from worker.infrastructure.models import IntegrationModule, Transport
from worker.infrastructure.modules import smtp2go_config, update_module_settings
from worker.providers.base import Held


@pytest.fixture
def keyed(db: str, base_env: pytest.MonkeyPatch) -> str:
    key = generate_key()
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", key)
    reset_settings()
    return key


def _policy(api_abandoned: bool = False) -> Transport:
    """The provider the chain picks first (``api_abandoned``: SMTP2Go gave up on the message)."""
    with session_scope() as session:
        for name in providers.chain(get_settings()):
            if api_abandoned and name == "smtp2go":
                continue
            transport = providers.get(name).transport(name, "", session.connection(), get_settings())
            if transport is not None and not isinstance(transport, Held):
                return Transport(name)
    raise ConfigurationError("no transport configured: set SMTP_HOST or SMTP2GO_API_KEY")


def test_environment_key_enables_smtp2go_without_a_row(db: str, base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("SMTP_HOST", "relay.example.com")
    reset_settings()
    assert _policy() == Transport.SMTP
    base_env.setenv("SMTP2GO_API_KEY", "api-env")
    reset_settings()
    assert _policy() == Transport.SMTP2GO
    assert _policy(api_abandoned=True) == Transport.SMTP


def test_no_transport_is_a_configuration_error(db: str) -> None:
    with pytest.raises(ConfigurationError, match="SMTP_HOST"):
        _policy()


def test_row_decides_and_settings_are_encrypted(keyed: str, base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("SMTP2GO_API_KEY", "api-env")
    base_env.setenv("SMTP_HOST", "relay.example.com")
    reset_settings()
    runner = CliRunner()
    assert runner.invoke(main, ["module", "set", "smtp2go", "api_key=api-secret-from-db-1234",
                                "webhook_secret=whsec-abcdefgh"]).exit_code == 0
    assert runner.invoke(main, ["module", "disable", "smtp2go"]).exit_code == 0
    assert _policy() == Transport.SMTP  # the row says disabled, whatever the environment says
    assert runner.invoke(main, ["module", "enable", "smtp2go"]).exit_code == 0
    assert _policy() == Transport.SMTP2GO
    with session_scope() as session:
        row = session.scalar(select(IntegrationModule))
        assert row is not None and row.settings_encrypted
        assert "api-secret-from-db" not in row.settings_encrypted
        cfg = smtp2go_config(session)
    assert cfg.api_key == "api-secret-from-db-1234" and cfg.webhook_secrets == ("whsec-abcdefgh",)
    shown = runner.invoke(main, ["module", "show", "--json"])
    assert shown.exit_code == 0
    assert "api-secret-from-db" not in shown.output and "****1234" in shown.output


def test_key_rotation(keyed: str, base_env: pytest.MonkeyPatch) -> None:
    with session_scope() as session:
        update_module_settings(session, "smtp2go", {"api_key": "api-rotate-me"})
    new = generate_key()
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", f"{new},{keyed}")
    reset_settings()
    result = CliRunner().invoke(main, ["module", "rotate"])
    assert result.exit_code == 0, result.output
    base_env.setenv("SETTINGS_ENCRYPTION_KEY", new)  # the old key retired
    reset_settings()
    with session_scope() as session:
        assert smtp2go_config(session).api_key == "api-rotate-me"


def test_missing_key_is_a_loud_error_naming_the_variable(db: str) -> None:
    result = CliRunner().invoke(main, ["module", "set", "smtp2go", "api_key=x"])
    assert result.exit_code == 1
    assert "SETTINGS_ENCRYPTION_KEY" in result.output
    assert "Traceback" not in result.output


def test_unknown_setting_rejected(keyed: str) -> None:
    result = CliRunner().invoke(main, ["module", "set", "smtp2go", "colour=blue"])
    assert result.exit_code == 2 and "colour" in result.output  # a usage error, refused before any prompt


def test_cli_send_and_status(db: str, redis_client: Any) -> None:
    runner = CliRunner()
    sent = runner.invoke(main, ["send", "--to", "a@example.com", "--subject", "hi", "--text", "hello", "--json"])
    assert sent.exit_code == 0, sent.output
    import json

    tid = json.loads(sent.output)["id"]
    shown = runner.invoke(main, ["status", tid])
    assert shown.exit_code == 0 and "queued" in shown.output and "a@example.com" in shown.output
    bad = runner.invoke(main, ["send", "--to", "nope", "--subject", "hi", "--text", "x"])
    assert bad.exit_code == 1 and "--to:" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(main, ["status", "no-such-id"])
    assert missing.exit_code == 1 and "no email" in missing.output


def test_module_row_is_cached_for_module_cache_seconds(db: str, fake_api: Any, smtp_sink: Any,
                                                       base_env: pytest.MonkeyPatch) -> None:
    """A worker re-reads the module row at most every MODULE_CACHE_SECONDS (0 = every send)."""
    from worker import enqueue_email
    from worker.infrastructure.modules import set_module_enabled
    from worker.sending.delivery import deliver

    base_env.setenv("MODULE_CACHE_SECONDS", "60")
    reset_settings()
    first = enqueue_email("a@example.com", "cached", text_body="x")
    assert deliver(first, owner="t").transport == Transport.SMTP2GO  # reads: no row, the env key enables it
    with session_scope() as session:
        set_module_enabled(session, "smtp2go", False)
    second = enqueue_email("b@example.com", "cached", text_body="x")
    assert deliver(second, owner="t").transport == Transport.SMTP2GO  # within 60 s: the cached config
    base_env.setenv("MODULE_CACHE_SECONDS", "0")
    reset_settings()
    third = enqueue_email("c@example.com", "fresh", text_body="x")
    assert deliver(third, owner="t").transport == Transport.SMTP  # read again: disabled, the relay sends


def test_module_set_refuses_an_unusable_api_url_and_keeps_what_was_stored(keyed: str) -> None:
    with session_scope() as session:
        update_module_settings(session, "smtp2go", {"api_key": "k-1", "api_url": "https://eu-api.smtp2go.com/v3"})
    with session_scope() as session, pytest.raises(ConfigurationError,
                                                   match=r"^api_url='ftp://x/v3' is not an http\(s\) URL"):
        update_module_settings(session, "smtp2go", {"api_url": "ftp://x/v3"})
    with session_scope() as session:
        assert smtp2go_config(session).api_url == "https://eu-api.smtp2go.com/v3"
