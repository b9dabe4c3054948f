"""The SMTP2Go provider: :mod:`.transport` (``/email/send``), :mod:`.webhooks` (authentication and event
normaliser), :mod:`.reconcile` (``/activity/search``) and :mod:`.settings` (account and regional endpoints).
Registered as ``smtp2go`` (variants ``smtp2go:eu``, ``smtp2go:us``, ``smtp2go:au``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from worker.errors import ConfigurationError
from worker.infrastructure.config import Settings, check_api_url
from worker.providers.base import Held, ProviderKind, Reconciler, Transport
from worker.providers.smtp2go import settings as smtp2go_settings
from worker.providers.smtp2go.transport import Smtp2GoTransport
from worker.providers.smtp2go.webhooks import WEBHOOKS


def _transport(name: str, variant: str, conn: Connection, settings: Settings) -> Transport | Held | None:
    try:
        config = smtp2go_settings.account(conn, settings)
        if not config.enabled:
            return None
        if not config.api_key:
            return Held("no SMTP2Go API key (SMTP2GO_API_KEY, or `mailworker module set smtp2go api_key=...`)")
        url = check_api_url(smtp2go_settings.api_url(config, variant, settings),
                            name=f"the API URL of {name} (SMTP2GO_API_URL, or the module's api_url)")
    except (ConfigurationError, ValueError) as err:
        return Held(str(err))
    return Smtp2GoTransport(api_key=config.api_key, api_url=url, timeout=settings.smtp2go_timeout,
                            connect_timeout=settings.smtp2go_connect_timeout,
                            verify=settings.smtp2go_ca_file or True, options=config.options)


def _reconciler(name: str, variant: str, conn: Connection, settings: Settings, **options: Any) -> Reconciler:
    from worker.providers.smtp2go.reconcile import reconciler

    problem = None
    key, url = None, ""
    try:
        config = smtp2go_settings.account(conn, settings)
        key, url = config.api_key, smtp2go_settings.api_url(config, variant, settings)
        if not config.api_key:
            problem = "no SMTP2Go API key (SMTP2GO_API_KEY, or `mailworker module set smtp2go api_key=...`)"
        elif not config.enabled:
            problem = "the SMTP2Go module is disabled (`mailworker module enable smtp2go`)"
    except (ConfigurationError, ValueError) as err:
        problem = str(err)
    return reconciler(key, url, problem, settings, **options)


PROVIDER = (ProviderKind(
    kind="smtp2go", transport=_transport, reconciler=_reconciler, webhooks=WEBHOOKS,
    worst_case_seconds=lambda s: s.smtp2go_connect_timeout + s.smtp2go_timeout))
