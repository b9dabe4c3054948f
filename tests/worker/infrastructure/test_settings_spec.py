"""The settings definition: every variable the product reads is declared once, docs/configuration.md is generated
from the declarations, the settings objects are built from them, and a bad value is one line naming the variable
(no service needed: the unit layer)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from console_app.settings import ConsoleSettings
from worker.errors import ConfigurationError
from worker.infrastructure import settings_doc
from worker.infrastructure import settings_spec as spec
from worker.infrastructure.config import (
    ReceiverSettings,
    Settings,
    load_receiver_settings,
    load_settings,
    reset_settings,
)

PROJECT = Path(__file__).resolve().parents[3]
#: Where the product reads its environment: every Python file of these, and the Procfile's command lines.
PRODUCT = ("worker", "webhook_app", "console_app", "celeryconfig.py")
NAME = r"""["']([A-Z][A-Z0-9_]*)["']"""
#: os.environ.get("X") / os.environ["X"] / env.get("X") / environ.pop("X") / getenv("X") / click's envvar="X" /
#: the definition's own read("X"), raw("X") and setting("X").
READS = [re.compile(p) for p in (
    rf"\b(?:environ|env)\s*(?:\.get\(|\.pop\(|\.setdefault\(|\[)\s*{NAME}",
    rf"\bgetenv\(\s*{NAME}",
    rf"\benvvar\s*=\s*{NAME}",
    rf"\b(?:read|raw|setting)\(\s*{NAME}",
)]


def names_read_by_the_product() -> dict[str, str]:
    """Variable name -> one place that reads it."""
    found: dict[str, str] = {}
    files = [p for entry in PRODUCT for p in ((PROJECT / entry).rglob("*.py") if (PROJECT / entry).is_dir()
                                              else [PROJECT / entry])]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern in READS:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.setdefault(match[1], f"{path.relative_to(PROJECT)}:{line}")
    for match in re.finditer(r"\$\{([A-Z][A-Z0-9_]*)", (PROJECT / "Procfile").read_text()):
        found.setdefault(match[1], "Procfile")
    return found


def test_configuration_md_is_what_the_generator_writes() -> None:
    """Edit the declarations in worker/infrastructure/settings_spec.py, then run
    `python -m worker.infrastructure.settings_doc`."""
    on_disk = (PROJECT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert on_disk == settings_doc.render(), "stale: run python -m worker.infrastructure.settings_doc"
    assert settings_doc.main(["--check"]) == 0


def test_the_generated_page_has_every_variable_once_under_its_section() -> None:
    page = settings_doc.render()
    for item in spec.declared(discover=True):
        rows = re.findall(rf"^\| `{item.name}` \|", page, re.M)
        assert len(rows) == 1, item.name
        title = next(s.title for s in spec.sections() if s.key == item.section)
        assert page.index(f"\n## {title}\n") < page.index(f"| `{item.name}` |"), item.name


def test_every_variable_the_product_reads_is_declared() -> None:
    read = names_read_by_the_product()
    # The scan itself sees the reads it is meant to see (one per kind of reader).
    assert {"DATABASE_URL", "WEB_CONCURRENCY", "SWEEP_INTERVAL", "CONSOLE_PORT", "REQUESTS_CA_BUNDLE",
            "FAKE_SMTP2GO_VERBOSE", "WORKER_CONCURRENCY", "CALLBACK_RETRY_SCHEDULE"} <= set(read)
    declared = {s.name for s in spec.declared(discover=True)}
    undeclared = {name: where for name, where in read.items() if name not in declared}
    assert undeclared == {}, "declare these in worker/infrastructure/settings_spec.py"


def test_every_settings_field_is_filled_by_one_declaration() -> None:
    derived = {"username", "password", "secret_key"}  # ConsoleSettings: from CONSOLE_BASIC_AUTH and the key file
    wanted = {f.name for cls in (Settings, ReceiverSettings, ConsoleSettings) for f in fields(cls)} - derived
    by_field = {s.field: s.name for s in spec.declared() if s.field}
    assert wanted - set(by_field) == set()
    assert set(by_field) - wanted == set()  # a declared field no settings object has is a typo


def test_an_undeclared_name_is_refused() -> None:
    with pytest.raises(LookupError, match="NOT_A_SETTING is not a declared setting"):
        spec.read("NOT_A_SETTING")


@pytest.mark.parametrize("name, value, message", [
    ("SMTP_TIMEOUT", "soon", "SMTP_TIMEOUT must be a number, got 'soon'"),
    ("SEND_MAX_RETRIES", "2.5", "SEND_MAX_RETRIES must be a whole number, got '2.5'"),
    ("MAILWORKER_ALLOW_UNAUTHENTICATED_WEBHOOKS", "maybe", "must be true or false, got 'maybe'"),
    ("SMTP_SECURITY", "tls", "SMTP_SECURITY must be starttls, ssl or none, got 'tls'"),
    ("CALLBACK_TIMEOUT", "0", "CALLBACK_TIMEOUT must be positive (a number above 0), got '0'"),
    ("CALLBACK_HOOK_TIMEOUT", "inf", "CALLBACK_HOOK_TIMEOUT must be positive"),
    ("CALLBACK_ALLOWED_NETWORKS", "10.0.0.0/8,lan", "CALLBACK_ALLOWED_NETWORKS: 'lan' is not a network"),
    ("CALLBACK_RETRY_SCHEDULE", "5,soon", "CALLBACK_RETRY_SCHEDULE: 'soon' is not a number of seconds"),
    ("CONSOLE_WARN_BOUNCE_ABOVE", "-3", "must be between 0 and 1 (or a percentage)"),
    ("CONSOLE_TRUSTED_PROXIES", "-1", "CONSOLE_TRUSTED_PROXIES must be a whole number (0 or more), got '-1'"),
    ("WEB_TIMEOUT", "30s", "WEB_TIMEOUT must be a whole number, got '30s'"),
    ("CELERY_VISIBILITY_TIMEOUT", "1h", "CELERY_VISIBILITY_TIMEOUT must be a whole number (1 or more)"),
])
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        spec.read(name, {name: value})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unset_and_blank_give_the_default_and_bounds_are_applied() -> None:
    assert spec.read("SMTP_TIMEOUT", {}) == 30.0 and spec.read("SMTP_TIMEOUT", {"SMTP_TIMEOUT": "  "}) == 30.0
    assert spec.read("WEB_KEEPALIVE", {"WEB_KEEPALIVE": "0"}) == 1  # keep-alive 0 would disable the read timeout
    assert spec.read("CONSOLE_WARN_SPAM_ABOVE", {"CONSOLE_WARN_SPAM_ABOVE": "5"}) == 0.05  # a percentage
    assert spec.read("SMTP2GO_WEBHOOK_SECRET", {"SMTP2GO_WEBHOOK_SECRET": " a, ,b "}) == ("a", "b")


def test_secrets_are_masked_in_every_settings_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = {s.name: f"secret-{i}-value-long-enough" for i, s in enumerate(spec.declared()) if s.secret}
    assert {"SMTP2GO_API_KEY", "SMTP_PASSWORD", "SETTINGS_ENCRYPTION_KEY", "CONSOLE_SECRET_KEY"} <= set(secrets)
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", "sqlite:////tmp/mailworker-spec-test.db")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:broker-pass-7@redis:6379/0")
    monkeypatch.setenv("CONSOLE_BASIC_AUTH", "ops:console-pass-8")
    monkeypatch.setenv("MAILWORKER_DEV_ENV_FILE", str(tmp_path / "none.env"))
    reset_settings()
    from console_app.settings import load_console_settings

    shown = " ".join(repr(obj) for obj in (load_settings(), load_receiver_settings(), load_console_settings()))
    reset_settings()
    leaked = [v for v in (*secrets.values(), "broker-pass-7", "console-pass-8") if v in shown]
    assert leaked == []
    assert "smtp2go_api_key='***'" in shown and "broker_url='redis://:***@redis:6379/0'" in shown


def test_a_provider_package_declares_its_own_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The extension hook: ``<package>.<name>.settings`` declares at import; the generator finds it."""
    monkeypatch.setattr(spec, "_SETTINGS", dict(spec._SETTINGS))  # the declarations below stay in this test
    monkeypatch.setattr(spec, "_SECTIONS", dict(spec._SECTIONS))
    package = tmp_path / "mwtestproviders"
    (package / "acme").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "acme" / "__init__.py").write_text("")
    (package / "acme" / "settings.py").write_text(
        "from worker.infrastructure.settings_spec import Section, Setting, declare, declare_section, integer\n"
        "declare_section(Section('provider-acme', 'Acme provider'))\n"
        "declare(Setting('ACME_API_KEY', 'provider-acme', 'Acme API key.', secret=True, read_by=('worker',)),\n"
        "        Setting('ACME_BATCH', 'provider-acme', 'Emails per request.', integer(minimum=1), 50))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(spec, "EXTENSION_PACKAGES", ("mwtestproviders", "mwtest_no_such_package"))
    page = settings_doc.render()
    assert "\n## Acme provider\n" in page
    assert "| `ACME_BATCH` | `50` | Emails per request. | - |" in page
    assert spec.read("ACME_BATCH", {"ACME_BATCH": "7"}) == 7
    with pytest.raises(ValueError, match="ACME_BATCH is declared twice"):
        spec.declare(spec.Setting("ACME_BATCH", "provider-acme", "Something else."))


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_celeryconfig_reads_through_the_definition() -> None:
    proc = _run("import celeryconfig as c, json; print(json.dumps([c.worker_send_task_events, "
                "c.beat_schedule['sweep']['schedule'], c.broker_transport_options['visibility_timeout']]))",
                MAILWORKER_TASK_EVENTS="on", SWEEP_INTERVAL="7", CELERY_VISIBILITY_TIMEOUT="7200")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [True, 7.0, 7200]
    proc = _run("import celeryconfig", RECONCILE_INTERVAL="hourly")
    assert proc.returncode != 0
    assert "ConfigurationError: RECONCILE_INTERVAL must be a number, got 'hourly'" in proc.stderr


def test_gunicorn_conf_reads_through_the_definition() -> None:
    proc = _run("import webhook_app.gunicorn_conf as g; print(g.bind, g.workers, g.keepalive)",
                PORT="8123", WEB_CONCURRENCY="3", WEB_KEEPALIVE="0", WEB_BIND="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['0.0.0.0:8123']", "3", "1"]
    proc = _run("import webhook_app.gunicorn_conf", WEB_WORKER_CONNECTIONS="lots")
    assert "WEB_WORKER_CONNECTIONS must be a whole number, got 'lots'" in proc.stderr
