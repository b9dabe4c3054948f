"""Mail providers as units, and the registry that names them.

A provider kind (``smtp2go``, ``smtp``, or one an application registers) is one object, :class:`ProviderKind`,
holding what the core asks of it: a transport for this attempt (:meth:`ProviderKind.transport`), a reconciler for
sends whose outcome is unknown (:meth:`ProviderKind.reconciler`) and, where the provider sends webhooks, their
authentication and normaliser (:attr:`ProviderKind.webhooks`). The core never imports a provider's package;
it asks this registry.

``MAIL_PROVIDERS`` orders the fallback chain: a comma-separated list of provider names, each a registered kind
optionally followed by ``:variant`` (``smtp2go:eu,smtp2go:us,smtp``); the variant means what its kind says
(SMTP2Go: a regional endpoint). Every name in the chain has its own breaker, retry budget and backoff.
"""

from __future__ import annotations

import importlib
from typing import Any

from worker.infrastructure.settings_spec import SETTINGS_READERS, Section, Setting, declare, declare_section, read
from worker.providers.base import ProviderKind, WebhookHandler

__all__ = ["ProviderKind", "chain", "get", "kind_of", "register", "unregister", "variant_of", "webhook_handler"]

DEFAULT_CHAIN = "smtp2go,smtp"

declare_section(Section("providers", "Providers"))
declare(Setting("MAIL_PROVIDERS", "providers", (
    "The fallback chain, in order: provider names separated by commas, each a registered provider optionally "
    "with a variant (`smtp2go:eu,smtp2go:us,smtp`: SMTP2Go's EU endpoint, then its US one, then the relay). Each "
    "name has its own breaker, retry budget and backoff; a provider that is not configured is skipped."),
    default=DEFAULT_CHAIN, read_by=SETTINGS_READERS))


_registry: dict[str, ProviderKind] = {}


def register(provider: ProviderKind) -> ProviderKind:
    """Make ``provider`` available under its kind (a second registration of one kind replaces the first)."""
    _registry[provider.kind] = provider
    return provider


def unregister(kind: str) -> None:
    _registry.pop(kind, None)


#: The providers that come with mailworker: each package's ``PROVIDER``, imported on first use.
BUILTIN = ("smtp2go", "smtp")


def _load_builtin() -> None:
    for kind in BUILTIN:
        if kind not in _registry:
            register(importlib.import_module(f"worker.providers.{kind}").PROVIDER)


def get(name: str) -> ProviderKind:
    """The kind of a provider name (``smtp2go:eu`` -> the SMTP2Go kind); KeyError names unknown kinds."""
    _load_builtin()
    kind = name.partition(":")[0]
    try:
        return _registry[kind]
    except KeyError:
        raise KeyError(f"MAIL_PROVIDERS: unknown provider {kind!r} (known: {', '.join(sorted(_registry))})") from None


def chain(settings: Any = None) -> list[str]:
    """The provider names of ``MAIL_PROVIDERS``, in order, each checked against the registry (``settings`` may
    carry ``mail_providers`` to override the environment)."""
    raw = getattr(settings, "mail_providers", None) or read("MAIL_PROVIDERS")
    names = [n.strip() for n in str(raw).split(",") if n.strip()]
    if not names:
        raise ValueError("MAIL_PROVIDERS: at least one provider is needed")
    for name in names:
        get(name)
    return names


def kind_of(name: str) -> str:
    """``smtp2go:eu`` -> ``smtp2go``."""
    return name.partition(":")[0]


def variant_of(name: str) -> str:
    """``smtp2go:eu`` -> ``eu``; ``smtp`` -> ``""``."""
    return name.partition(":")[2]


def webhook_handler(kind: str) -> WebhookHandler | None:
    """The webhook authentication and normaliser of a provider kind, or None when it has none (or is unknown)."""
    try:
        return get(kind).webhooks
    except KeyError:
        return None
