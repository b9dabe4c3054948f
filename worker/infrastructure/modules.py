"""Integration modules: the SMTP2Go switch and its settings, stored encrypted in ``integration_modules``.

The rule (DESIGN.md): a module row, when present, decides whether SMTP2Go is enabled; with no row,
``SMTP2GO_API_KEY`` in the environment enables it. Settings in the row (API key, API URL, webhook secret,
tracking options) override the environment. The check runs on every send, so it is one indexed lookup and
the decrypted settings are cached by ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.errors import ConfigurationError
from worker.infrastructure.config import Settings, check_api_url, get_settings
from worker.infrastructure.crypto import decrypt_settings, encrypt_settings
from worker.infrastructure.models import IntegrationModule

SMTP2GO = "smtp2go"
#: Keys accepted by ``mailworker module set smtp2go KEY=VALUE``; the secret ones are masked on show.
SMTP2GO_KEYS = {"api_key", "api_url", "webhook_secret", "track_opens", "track_clicks", "fastaccept"}
SECRET_KEYS = {"api_key", "webhook_secret"}


@dataclass(frozen=True)
class Smtp2GoConfig:
    enabled: bool
    api_key: str | None = field(repr=False)
    api_url: str
    webhook_secrets: tuple[str, ...] = field(repr=False)
    options: dict[str, Any]
    source: str  # "database" or "environment"

    @property
    def usable(self) -> bool:
        return self.enabled and bool(self.api_key)


@lru_cache(maxsize=64)
def _decrypt_cached(token: str, keys: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(decrypt_settings(token, keys).items()))


def read_module_settings(row: IntegrationModule, settings: Settings) -> dict[str, Any]:
    if not row.settings_encrypted:
        return {}
    return dict(_decrypt_cached(row.settings_encrypted, settings.require_encryption_keys()))


def smtp2go_config(session: Session, settings: Settings | None = None) -> Smtp2GoConfig:
    """The effective SMTP2Go configuration right now."""
    settings = settings or get_settings()
    row = session.scalar(select(IntegrationModule).where(IntegrationModule.name == SMTP2GO))
    if row is None:
        return Smtp2GoConfig(
            enabled=bool(settings.smtp2go_api_key),
            api_key=settings.smtp2go_api_key,
            api_url=settings.smtp2go_api_url,
            webhook_secrets=settings.smtp2go_webhook_secrets,
            options={},
            source="environment",
        )
    stored = read_module_settings(row, settings)
    secrets = stored.get("webhook_secret")
    return Smtp2GoConfig(
        enabled=row.enabled,
        api_key=stored.get("api_key") or settings.smtp2go_api_key,
        api_url=str(stored.get("api_url") or settings.smtp2go_api_url).rstrip("/"),
        webhook_secrets=(
            tuple(s.strip() for s in str(secrets).split(",") if s.strip())
            if secrets
            else settings.smtp2go_webhook_secrets
        ),
        options={k: v for k, v in stored.items() if k not in SECRET_KEYS | {"api_url"}},
        source="database",
    )


def _get_or_create(session: Session, name: str) -> IntegrationModule:
    row = session.scalar(select(IntegrationModule).where(IntegrationModule.name == name))
    if row is None:
        row = IntegrationModule(name=name, enabled=False)
        session.add(row)
    return row


def set_module_enabled(session: Session, name: str, enabled: bool) -> IntegrationModule:
    row = _get_or_create(session, name)
    row.enabled = enabled
    return row


def update_module_settings(
    session: Session, name: str, values: dict[str, Any], settings: Settings | None = None
) -> IntegrationModule:
    """Merge ``values`` into the module's encrypted settings (a value of ``None`` removes the key)."""
    if name != SMTP2GO:
        raise ConfigurationError(f"unknown module {name!r} (known: {SMTP2GO})")
    unknown = set(values) - SMTP2GO_KEYS
    if unknown:
        raise ConfigurationError(f"unknown setting(s) {', '.join(sorted(unknown))} for module {name}")
    if values.get("api_url") is not None:
        check_api_url(str(values["api_url"]), name="api_url")
    settings = settings or get_settings()
    keys = settings.require_encryption_keys()
    row = _get_or_create(session, name)
    current = read_module_settings(row, settings) if row.settings_encrypted else {}
    for key, value in values.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    row.settings_encrypted = encrypt_settings(current, keys)
    return row


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """Settings fit for display: secrets reduced to their last four characters."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECRET_KEYS and value:
            text = str(value)
            out[key] = "****" + text[-4:] if len(text) > 8 else "****"
        else:
            out[key] = value
    return out
