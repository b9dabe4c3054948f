"""SMTP2Go's settings: the account (module row or environment, :mod:`worker.infrastructure.modules`) and the
regional API endpoints a provider name's variant picks (``smtp2go:eu`` -> ``https://eu-api.smtp2go.com/v3``,
overridden by ``SMTP2GO_API_URL_EU``; likewise ``us`` and ``au``). Plain ``smtp2go`` uses ``SMTP2GO_API_URL``
(or the module's ``api_url``)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from worker.infrastructure.config import Settings
from worker.infrastructure.modules import Smtp2GoConfig, smtp2go_config
from worker.infrastructure.settings_spec import SETTINGS_READERS, Setting, declare, read

REGIONS = {"eu": "https://eu-api.smtp2go.com/v3", "us": "https://us-api.smtp2go.com/v3",
           "au": "https://au-api.smtp2go.com/v3"}

declare(*(Setting(f"SMTP2GO_API_URL_{region.upper()}", "smtp2go", (
    f"API base of provider `smtp2go:{region}` in `MAIL_PROVIDERS` (SMTP2Go's {region.upper()} endpoint); the same "
    "account, key and module as `smtp2go`."), default=url, read_by=SETTINGS_READERS, url=True)
    for region, url in REGIONS.items()))


def api_url(config: Smtp2GoConfig, variant: str, settings: Settings | Any) -> str:
    """The endpoint of provider ``smtp2go[:variant]``; ValueError names an unknown region."""
    if not variant:
        return config.api_url
    if variant not in REGIONS:
        raise ValueError(f"MAIL_PROVIDERS: unknown SMTP2Go region {variant!r} (known: {', '.join(REGIONS)})")
    return str(read(f"SMTP2GO_API_URL_{variant.upper()}")).rstrip("/")


#: (read at, for which settings, config): one slot, since a process has one settings object at a time.
_cache: tuple[float, Settings, Smtp2GoConfig] | None = None


def account(conn: Connection, settings: Settings) -> Smtp2GoConfig:
    """The SMTP2Go account in effect now, read from the database at most every ``MODULE_CACHE_SECONDS`` (a module
    switched on or off with the CLI takes effect within that time; 0 turns the cache off). Raises
    ConfigurationError when it cannot be read."""
    global _cache
    now = time.monotonic()
    hit = _cache
    if hit is not None and hit[1] is settings and now - hit[0] < settings.module_cache_seconds:
        return hit[2]
    with Session(bind=conn) as session:  # joins the caller's transaction
        config = smtp2go_config(session, settings)
    _cache = (now, settings, config)  # one atomic assignment: threads may race, never tear
    return config
