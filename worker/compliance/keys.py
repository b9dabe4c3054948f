"""Keys derived from ``UNSUBSCRIBE_SECRET``: one for the unsubscribe tokens (AES-GCM), one for the keyed hashes
of erased addresses (HMAC-SHA256). Derived with HKDF under distinct labels, so neither key reveals the other."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.errors import ConfigurationError
from worker.infrastructure import settings_spec as spec

#: Prefix of a suppression's address once the address itself was erased.
HASH_PREFIX = "hmac:"


def secret() -> str | None:
    value = spec.read("UNSUBSCRIBE_SECRET")
    return str(value) if value else None


def require_secret() -> str:
    value = secret()
    if not value:
        raise ConfigurationError("UNSUBSCRIBE_SECRET is not set: it keys unsubscribe tokens and erased-address "
                                 "hashes (any long random text; the worker and the receiver need the same value)")
    return value


def derive(label: str, master: str | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"mailworker/{label}".encode()).derive((master or require_secret()).encode())


def address_hash(address: str, master: str | None = None) -> str:
    """``hmac:<hex>`` of the lower-cased address: the same address always gives the same value, and the
    value cannot be turned back into the address without the secret."""
    digest = hmac.new(derive("erasure", master), address.strip().lower().encode(), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest
