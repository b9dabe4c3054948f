"""Settings: one typed object, validated when loaded, secrets masked; every mistake is one line naming the
variable (no service needed: the unit layer)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from worker.errors import ConfigurationError
from worker.infrastructure.config import (
    DEFAULT_BROKER_URL,
    embedded_database_url,
    load_settings,
    mask_url,
    reset_settings,
)

SQLITE = "sqlite:////tmp/mailworker-config-test.db"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A valid minimal environment (explicit SQLite, default broker) each test then breaks one way."""
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "SMTP2GO_API_KEY", "SMTP_PASSWORD", "SMTP2GO_WEBHOOK_SECRET",
                 "SETTINGS_ENCRYPTION_KEY", "SMTP2GO_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", SQLITE)
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", "/nonexistent/dev.env")
    # As on a fresh install: no MySQLdb (mysqlclient), whatever this process imported or aliased before.
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    reset_settings()
    yield monkeypatch
    reset_settings()


def _error(env: pytest.MonkeyPatch, **values: str) -> str:
    for name, value in values.items():
        env.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ DATABASE_URL


def test_no_database_url_refuses_and_says_how_to_get_the_embedded_file(env: pytest.MonkeyPatch) -> None:
    env.delenv("DATABASE_URL")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("DATABASE_URL is not set:")
    assert f"DATABASE_URL={embedded_database_url()}" in message and "mailworker dev" in message
    assert "\n" not in message


def test_the_embedded_file_works_when_named(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", embedded_database_url())
    assert load_settings().database_url == embedded_database_url()


def test_a_running_dev_stack_supplies_database_url(env: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os
    from pathlib import Path

    path = Path(str(tmp_path)) / "dev.env"
    path.write_text(f"#pid={os.getpid()}\nDATABASE_URL={SQLITE}\n")
    env.delenv("DATABASE_URL")
    env.setenv("MAILWORKER_DEV_ENV_FILE", str(path))
    assert load_settings().database_url == SQLITE


@pytest.mark.parametrize(("url", "expected"), [
    ("garbage", "DATABASE_URL='garbage' is not a database URL: expected mysql+pymysql://"),
    ("postgresql://mw:pw-9x@db/mail", "DATABASE_URL='postgresql://mw:***@db/mail': postgresql is not supported"),
    ("mysql://mw:pw-9x@db/mail", "the default MySQLdb (mysqlclient) driver is not installed; use PyMySQL"),
    ("mysql+mysqlconnector://mw:pw-9x@db/mail", "the mysqlconnector driver is not installed"),
    ("mysql+pymysql://mw:pw-9x@db", "names no database"),
    ("sqlite://", "in-memory database"),
    ("sqlite+nosuch:////tmp/x.db", "unknown SQLite driver"),
])
def test_bad_database_urls_are_one_line_naming_the_variable(env: pytest.MonkeyPatch, url: str,
                                                            expected: str) -> None:
    message = _error(env, DATABASE_URL=url)
    assert message.startswith("DATABASE_URL=") and expected in message
    assert "pw-9x" not in message


def test_mysql_without_a_driver_suggests_the_pymysql_url(env: pytest.MonkeyPatch) -> None:
    message = _error(env, DATABASE_URL="mysql://mw:pw-9x@db:3306/mail")
    assert "mysql+pymysql://mw:***@db:3306/mail?charset=utf8mb4" in message


@pytest.mark.parametrize("url", ["mysql+pymysql://mw:pw@db/mail?charset=utf8mb4", "mariadb+pymysql://mw@db/mail",
                                 SQLITE])
def test_good_database_urls_load(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("DATABASE_URL", url)
    assert load_settings().database_url == url


def test_send_with_a_garbage_database_url_blames_database_url(env: pytest.MonkeyPatch) -> None:
    """The error names the variable that is missing, not MAIL_DEFAULT_SENDER."""
    from worker.cli import main

    env.setenv("DATABASE_URL", "garbage")
    env.delenv("MAIL_DEFAULT_SENDER", raising=False)
    for args in (["send", "--to", "a@example.com", "--subject", "s", "--text", "t"], ["status", "x"], ["stats"],
                 ["db", "upgrade"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "DATABASE_URL='garbage' is not a database URL" in lines[0], (args, lines)
        assert "MAIL_DEFAULT_SENDER" not in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ broker URL


@pytest.mark.parametrize(("url", "expected"), [
    ("garbage", "CELERY_BROKER_URL='garbage' is not a broker URL"),
    ("nosuch://host", "unknown broker transport 'nosuch'"),
    ("redis://:pw-9x@host:63x9/0", "the port is not a number"),
    ("redis://:pw-9x@host:6379/zero", "the Redis database 'zero' is not a number"),
])
def test_bad_broker_urls_are_one_line_naming_the_variable(env: pytest.MonkeyPatch, url: str, expected: str) -> None:
    message = _error(env, CELERY_BROKER_URL=url)
    assert message.startswith("CELERY_BROKER_URL=") and expected in message and "pw-9x" not in message


def test_a_bad_redis_url_fallback_is_named_as_redis_url(env: pytest.MonkeyPatch) -> None:
    assert _error(env, REDIS_URL="localhost:6379").startswith("REDIS_URL='localhost:6379' is not a broker URL")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/3", "rediss://:pw@h:6380/0", "amqp://guest@h//",
                                 "sentinel://h:26379;sentinel://h2:26379", "memory://"])
def test_good_broker_urls_load(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("CELERY_BROKER_URL", url)
    assert load_settings().broker_url == url


# ----------------------------------------------------------------------------------------- SMTP2Go API URL


@pytest.mark.parametrize(("url", "expected"), [
    ("api.smtp2go.com/v3", "is not an http(s) URL"),
    ("ftp://api.smtp2go.com/v3", "is not an http(s) URL"),
    ("https:///v3", "names no usable host"),
    ("https://api.smtp2go.com:44x3/v3", "is not a usable URL"),
    ("https://user:pw-9x@api.smtp2go .com/v3", "names no usable host"),
    ("https://" + "a" * 64 + ".example/v3", "names no usable host"),
])
def test_bad_api_urls_are_one_line_naming_the_variable(env: pytest.MonkeyPatch, url: str, expected: str) -> None:
    message = _error(env, SMTP2GO_API_URL=url)
    assert message.startswith("SMTP2GO_API_URL=") and expected in message and "pw-9x" not in message


@pytest.mark.parametrize("url", ["https://api.smtp2go.com/v3/", "http://127.0.0.1:8025/v3", "https://[::1]:9/v3"])
def test_good_api_urls_load(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("SMTP2GO_API_URL", url)
    assert load_settings().smtp2go_api_url == url.rstrip("/")


def test_a_stored_module_url_that_is_unusable_is_an_operator_problem(env: pytest.MonkeyPatch) -> None:
    """A module URL stored before ``module set`` checked it: the transport refuses to be built (the send path
    holds the mail), with one line that names where the URL comes from."""
    from worker.infrastructure.modules import Smtp2GoConfig
    from worker.providers.smtp2go.transport import Smtp2GoTransport

    config = Smtp2GoConfig(enabled=True, api_key="k", api_url="ftp://api.smtp2go.com/v3", webhook_secrets=(),
                           options={}, source="database")
    with pytest.raises(ConfigurationError, match=r"^the SMTP2Go API URL \(SMTP2GO_API_URL, or the module's "
                                                 r"api_url\)='ftp://api.smtp2go.com/v3' is not an http\(s\) URL"):
        Smtp2GoTransport.from_config(config, load_settings())


def test_broker_defaults_to_local_redis(env: pytest.MonkeyPatch) -> None:
    assert load_settings().broker_url == DEFAULT_BROKER_URL


# ------------------------------------------------------------------------------------------ masking


def test_repr_masks_url_passwords_and_every_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "mysql+pymysql://mw:db-pass-1@db/mail?charset=utf8mb4")
    env.setenv("CELERY_BROKER_URL", "redis://:broker-pass-2@redis:6379/0")
    env.setenv("SMTP2GO_API_KEY", "api-KEY0123456789ABCDEF")
    env.setenv("SMTP_PASSWORD", "relay-pass-3")
    env.setenv("SMTP2GO_WEBHOOK_SECRET", "hook-secret-4,hook-secret-5")
    env.setenv("SETTINGS_ENCRYPTION_KEY", "enc-key-6")
    settings = load_settings()
    for text in (repr(settings), str(settings), f"{settings}"):
        for secret in ("db-pass-1", "broker-pass-2", "api-KEY0123456789ABCDEF", "relay-pass-3", "hook-secret-4",
                       "hook-secret-5", "enc-key-6"):
            assert secret not in text
        assert "database_url='mysql+pymysql://mw:***@db/mail?charset=utf8mb4'" in text
        assert "broker_url='redis://:***@redis:6379/0'" in text
        assert "smtp2go_api_key='***'" in text and "smtp_password='***'" in text
    # the values themselves are intact
    assert settings.smtp2go_webhook_secrets == ("hook-secret-4", "hook-secret-5")
    assert settings.database_url.endswith("mw:db-pass-1@db/mail?charset=utf8mb4")


def test_repr_shows_unset_secrets_as_none_and_urls_without_password_as_they_are(env: pytest.MonkeyPatch) -> None:
    text = repr(load_settings())
    assert "smtp2go_api_key=None" in text and f"database_url='{SQLITE}'" in text
    assert f"broker_url='{DEFAULT_BROKER_URL}'" in text and "***" not in text


@pytest.mark.parametrize(("url", "masked"), [
    ("mysql+pymysql://user:pw@host/db", "mysql+pymysql://user:***@host/db"),
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("mysql://u@h/db", "mysql://u@h/db"),
    ("mysql://u:pa/ss?x@h/db", "mysql://u:***@h/db"),
    ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
    ("garbage", "garbage"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
