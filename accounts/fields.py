from __future__ import annotations

import logging
from typing import Any

from django.db import models

from accounts import crypto

logger = logging.getLogger(__name__)


class UndecryptableSecret(str):
    """A stored secret that no configured key decrypts (a key was removed too soon).

    It reads as an empty string, so the site treats the token as absent instead of
    failing every page that loads the row, and saving the row writes the original
    ciphertext back untouched, so restoring the key brings the token back.
    """

    ciphertext: str

    def __new__(cls, ciphertext: str) -> UndecryptableSecret:
        secret = super().__new__(cls, "")
        secret.ciphertext = ciphertext
        return secret


class EncryptedTextField(models.TextField):
    """Text that Python code sees in clear and the database only ever sees encrypted.

    An empty string stays empty, so a wiped secret is visibly absent in the table.
    """

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if not value:
            return value
        try:
            return crypto.decrypt(value)
        except crypto.UndecryptableToken as error:
            logger.error("%s (column %s)", error, self.name)
            return UndecryptableSecret(value)

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, UndecryptableSecret):
            return value.ciphertext
        value = super().get_prep_value(value)
        if not value:
            return value
        return crypto.encrypt(value)
