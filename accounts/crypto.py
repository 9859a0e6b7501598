"""Encryption of Twitch tokens at rest (Fernet, with key rotation)."""

from __future__ import annotations

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class UndecryptableToken(Exception):
    """A stored token cannot be decrypted with any configured key."""


def encrypt(plaintext: str) -> str:
    return (
        _multifernet(tuple(settings.TOKEN_ENCRYPTION_KEYS))
        .encrypt(plaintext.encode())
        .decode()
    )


def decrypt(ciphertext: str) -> str:
    try:
        return (
            _multifernet(tuple(settings.TOKEN_ENCRYPTION_KEYS))
            .decrypt(ciphertext.encode())
            .decode()
        )
    except InvalidToken:
        # Neither the ciphertext nor a key belongs in the message.
        raise UndecryptableToken(
            "A stored Twitch token cannot be decrypted with TOKEN_ENCRYPTION_KEYS; "
            "was a key removed before `manage.py rotate_token_keys` ran?"
        ) from None


def key_errors(keys: list[str]) -> list[str]:
    """Return a description of each malformed key (by position, never by value)."""
    errors = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            errors.append(f"key #{position} is not a valid Fernet key")
    return errors


@cache
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(
            "TOKEN_ENCRYPTION_KEYS is empty: Twitch tokens cannot be stored."
        )
    return MultiFernet([Fernet(key) for key in keys])
