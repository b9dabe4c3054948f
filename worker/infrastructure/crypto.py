"""Encryption of module settings at rest.

``SETTINGS_ENCRYPTION_KEY`` holds one Fernet key or a comma-separated list: the first encrypts, all decrypt
(MultiFernet), so an operator rotates by prepending a new key and running ``mailworker module rotate``.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.errors import ConfigurationError


def generate_key() -> str:
    return Fernet.generate_key().decode()


def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError) as err:
        raise ConfigurationError(
            "SETTINGS_ENCRYPTION_KEY is not a valid Fernet key (32 url-safe base64 bytes)"
        ) from err


def encrypt_settings(data: dict[str, Any], keys: tuple[str, ...]) -> str:
    return _fernet(keys).encrypt(json.dumps(data, sort_keys=True).encode()).decode()


def decrypt_settings(token: str, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        raw = _fernet(keys).decrypt(token.encode())
    except InvalidToken as err:
        raise ConfigurationError(
            "module settings cannot be decrypted with SETTINGS_ENCRYPTION_KEY (wrong or rotated-out key)"
        ) from err
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ConfigurationError("module settings are not a JSON object")
    return value


def rotate_token(token: str, keys: tuple[str, ...]) -> str:
    """Re-encrypt a token under the first (newest) key."""
    return _fernet(keys).rotate(token.encode()).decode()
